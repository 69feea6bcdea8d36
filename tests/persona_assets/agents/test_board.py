import json

import pytest

from persona_platform.partitions import AGENTS
from persona_platform.persona_assets.agents.corpora import (
    SpeakerTurn,
    as_messages,
    completions,
    conversation_windows,
    monologues,
    split_meetings,
)
from persona_platform.resources.inputs.transcripts import (
    TranscriptError,
    alias_table,
    read_meeting,
    read_meetings,
    speaker_agent,
)
from persona_platform.resources.llm.chat import chat_tokens
from persona_platform.resources.settings import SAMPLE_BOARD_DIR


def test_sample_board_resolves_every_member():
    aliases = alias_table(AGENTS)
    meetings = read_meetings(SAMPLE_BOARD_DIR / "transcripts")
    assert len(meetings) >= 6
    speakers = {t.speaker for m in meetings for t in m.turns}
    resolved = {s: speaker_agent(s, aliases) for s in speakers}
    assert {a for a in resolved.values() if a} == {a.key for a in AGENTS}
    assert resolved["Superintendent Okafor"] is None


@pytest.mark.parametrize(
    "name, agent",
    [
        ("Ms. Vega", "marisolvega"),
        ("chair  vega", "marisolvega"),
        ("Dr. Brandt", "annikabrandt"),
        ("Ted Quist", "theodorequist"),
        ("Mr. Nobody", None),
    ],
)
def test_aliases_with_honorifics(name, agent):
    assert speaker_agent(name, alias_table(AGENTS)) == agent


@pytest.mark.parametrize(
    "turns, row, field, words",
    [
        ([{"speaker": "Ms. Vega", "text": "Hello."}, {"text": "No speaker here."}], 2, "speaker", "missing"),
        ([{"speaker": "Ms. Vega", "text": "   "}], 1, "text", "missing or empty"),
        ([["Ms. Vega", "Hello"]], 1, None, "must be an object"),
        ([], None, None, "non-empty list"),
    ],
)
def test_bad_transcripts_name_file_row_and_field(tmp_path, turns, row, field, words):
    path = tmp_path / "meeting.json"
    path.write_text(json.dumps(turns))
    with pytest.raises(TranscriptError) as info:
        read_meeting(path)
    message = str(info.value)
    assert str(path) in message and words in message
    assert (f"row {row}" in message) == (row is not None)
    assert (f"field '{field}'" in message) == (field is not None)


def test_malformed_transcript_json(tmp_path):
    path = tmp_path / "meeting.json"
    path.write_text('[{"speaker": "Ms. Vega", ')
    with pytest.raises(TranscriptError, match="malformed JSON"):
        read_meeting(path)


def test_meeting_split_is_disjoint_seeded_and_whole():
    ids = [f"m{i}" for i in range(8)]
    split = split_meetings(ids, 0.25, seed=7)
    assert sorted(split) == ids and sorted(split.values()).count("test") == 2
    assert split == split_meetings(list(reversed(ids)), 0.25, seed=7)
    assert split != split_meetings(ids, 0.25, seed=8)
    assert set(split_meetings(["a", "b"], 0.01, 1).values()) == {"train", "test"}


def turns(*spec):
    return [SpeakerTurn("m", i, speaker, agent, text) for i, (speaker, agent, text) in enumerate(spec)]


def test_messages_merge_other_speakers_and_keep_the_agent_as_assistant():
    sample = turns(
        ("Public", None, "One."),
        ("Okafor", None, "Two."),
        ("Ms. Vega", "marisolvega", "Mine."),
        ("Mr. Quist", "theodorequist", "His."),
    )
    assert as_messages(sample, "marisolvega") == [
        ("user", "Public: One.\nOkafor: Two."),
        ("assistant", "Mine."),
        ("user", "Mr. Quist: His."),
    ]


def test_windows_completions_and_monologues():
    long_text = " ".join(["word"] * 160)
    sample = turns(
        ("Public", None, "a b c"),
        ("Ms. Vega", "marisolvega", "d e f g h i j k l m n o p"),
        ("Public", None, "q r s"),
        ("Ms. Vega", "marisolvega", long_text),
        ("Public", None, "t u v"),
    )
    windows = conversation_windows(sample, "marisolvega", max_words=20)
    assert all(any(t.agent == "marisolvega" for t in w) for w in windows)
    assert sum(len(w) for w in windows) <= len(sample)
    found = completions(sample, "marisolvega", context_turns=2, min_words=12)
    assert [c.target.index for c in found] == [1, 3]
    assert [t.index for t in found[1].context] == [1, 2]
    assert [t.index for t in monologues(sample, "marisolvega", 150)] == [3]


def test_chat_tokens_count_only_the_assistant_content(tiny_engine):
    messages = [
        ("user", "Public: Is the budget ready?"),
        ("assistant", "Let's keep us on track."),
        ("user", "Mr. Quist: Bottom line?"),
        ("assistant", "For the record, yes."),
    ]
    ids, mask = chat_tokens(tiny_engine.tokenizer, messages)
    assert ids == tiny_engine.tokenizer.apply_chat_template(
        [{"role": r, "content": c} for r, c in messages], tokenize=True, return_dict=False
    )
    counted = tiny_engine.tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
    assert counted == "Let's keep us on track.<|eot_id|>For the record, yes.<|eot_id|>"


def test_qlora_is_refused_clearly_without_a_gpu(tiny_engine, tmp_path):
    import torch

    from persona_platform.resources.training import LoraTraining, TrainingError

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    settings = LoraTraining(rank=4, alpha=8, dropout=0.0, target_modules=("q_proj",), quantization="4bit")
    with pytest.raises(TrainingError, match="needs a CUDA GPU"):
        tiny_engine.train_adapter(
            "marisolvega",
            [([1, 2, 3], [False, True, True])],
            settings,
            tmp_path / "checkpoint.pt",
            tmp_path / "adapter",
        )
