"""An adapter at inference sees the token ids it was trained on; the loss mask becomes the labels; the merge
check fails when it compared nothing. All on the embedded model's tokenizer and weights."""

import json

import polars as pl
import pytest
import torch

from persona_platform.persona_assets.agents.corpora import adapter_prompt
from persona_platform.persona_assets.agents.tables import (
    MERGE_TOLERANCE,
    TURN_SCHEMA,
    completion_rows,
    conversation_rows,
    heldout_requests,
    merge_difference,
    training_chat,
)
from persona_platform.persona_assets.alignment.similarity import opinion_prompt
from persona_platform.persona_assets.responses.tables import item_rows, response_plan
from persona_platform.persona_assets.responses.tasks import (
    AGENT,
    BASELINE,
    COMPLETION,
    MONOLOGUE,
    TRAIT,
    SamplingSetting,
)
from persona_platform.persona_assets.votes.prediction import vote_prompt
from persona_platform.resources.llm.chat import chat_tokens
from persona_platform.resources.training import IGNORED, TrainingError, _collate, loss_labels

NAME = "marisolvega"
MEETING = [  # (speaker, agent, text): the agent speaks twice, the second time last
    ("Superintendent Okafor", None, "The facilities report is ready for the board."),
    ("Ms. Vega", NAME, "Thank you. Let's take the roof repairs first, then the buses."),
    ("Mr. Quist", "theodorequist", "Bottom line: what does the roof cost us this year?"),
    ("Public", None, "And who pays for the buses?"),
    ("Ms. Vega", NAME, "For the record, the roof is funded; the buses wait for the spring budget."),
]


@pytest.fixture(scope="module")
def engine(tiny_llm):
    """The embedded model in an engine of its own, serving an adapter for the agent with non-zero weights (a
    fresh LoRA adapter is the identity, which would make the merge check pass whatever it compared)."""
    from peft import LoraConfig

    from persona_platform.resources.llm.transformers_backend import load_transformers_engine

    engine = load_transformers_engine("tiny", tiny_llm.model_path(), device="cpu", dtype="float32")
    internal = engine.new_trainable_adapter(
        NAME,
        LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        ),
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in engine.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    engine.register_adapter(NAME, internal, "test-weights")
    return engine


def board_turns(split: str) -> pl.DataFrame:
    rows = [
        {
            "meeting_id": "m1",
            "turn": i,
            "speaker": s,
            "agent": a,
            "text": t,
            "words": len(t.split()),
            "split": split,
            "source_file": "m1.json",
            "source_sha256": "0" * 64,
        }
        for i, (s, a, t) in enumerate(MEETING)
    ]
    return pl.DataFrame(rows, schema=TURN_SCHEMA)


def trained_on(engine) -> tuple[list[int], int, int]:
    """The meeting as lora_training lays it out (through the engine): ids, and where the agent's last turn
    starts and ends (its content and end-of-turn marker are the last counted run of the loss mask)."""
    (row,) = conversation_rows(board_turns("train"), [NAME], max_words=1000)
    ((ids, mask),) = engine.training_examples([training_chat(row["messages"])])
    start = max(i for i in range(1, len(mask)) if mask[i] and not mask[i - 1])
    assert all(mask[start:]) and ids[-1] == engine.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    return ids, start, len(ids) - 1


def heldout_example() -> pl.DataFrame:
    """The agent's last turn as a held-out completion example (the same meeting, in a test split)."""
    rows = completion_rows(board_turns("test"), [NAME], context_turns=10, min_words=1)
    return pl.DataFrame([r for r in rows if r["turn"] == len(MEETING) - 1])


def planned_chats(completions: pl.DataFrame) -> dict:
    """Both systems' requests for the completion item, planned by the responses code."""
    empty_probes = pl.DataFrame(
        schema={
            "row_id": pl.String,
            "agent": pl.String,
            "trait": pl.String,
            "chunk_id": pl.String,
            "question": pl.String,
            "summary": pl.String,
        }
    )
    empty_prompts = pl.DataFrame(
        schema={
            "row_id": pl.String,
            "agent": pl.String,
            "monologue_id": pl.String,
            "question": pl.String,
            "monologue": pl.String,
        }
    )
    items = item_rows(NAME, empty_probes, completions, empty_prompts, 5, 5, 5)
    plan = response_plan(
        items,
        {NAME: "Marisol Vega"},
        {NAME: "Chairs firmly; budget first."},
        [SamplingSetting(1.0, 0.95, 50, 1.1)],
        1,
        {TRAIT: 8, COMPLETION: 8, MONOLOGUE: 8},
        0,
    )
    return {p.system: p.request for p in plan}


def test_the_adapter_gets_the_training_ids_up_to_the_generation_point(engine):
    ids, start, _ = trained_on(engine)
    requests = planned_chats(heldout_example())
    assert requests[AGENT].adapter == NAME
    # What generate and score feed the model for this prompt.
    assert engine._encode_prompt(requests[AGENT].prompt) == ids[:start]


def test_the_baseline_differs_only_by_its_system_turn(engine):
    requests = planned_chats(heldout_example())
    agent, baseline = requests[AGENT].prompt.messages, requests[BASELINE].prompt.messages
    assert baseline[0][0] == "system" and "Chairs firmly; budget first." in baseline[0][1]
    assert baseline[1:] == agent  # the same user content for both systems
    assert requests[BASELINE].adapter is None


def test_perplexity_scores_the_training_ids_of_the_held_out_turn(engine):
    ids, start, end = trained_on(engine)
    (result,) = engine.loglikelihood(heldout_requests(heldout_example(), adapter=NAME))
    # The whole sequence the adapter read is the training sequence without the final end-of-turn marker,
    # and exactly the held-out turn's content counts.
    assert list(result.token_ids) == ids[:end]
    assert [i for i, counted in enumerate(result.counted) if counted] == list(range(start, end))


@pytest.mark.parametrize(
    "prompt",
    [
        vote_prompt("Marisol Vega", "Should the board fund the roof repairs this year?"),
        opinion_prompt("How important is religion in your life?", ["Very", "Somewhat", "Not at all"]),
    ],
    ids=["vote", "survey"],
)
def test_votes_and_survey_answers_are_laid_out_as_a_training_chat(engine, prompt):
    assert {role for role, _ in prompt.messages} <= {"user", "assistant"}  # the roles of the training chats
    reply = "Final Vote: Aye"
    ((ids, mask),) = engine.training_examples(
        [training_chat(json.dumps([*prompt.messages, ("assistant", reply)]))]
    )
    start = mask.index(True)
    assert engine.tokenizer.decode(ids[start:]) == reply + "<|eot_id|>"
    assert engine._encode_prompt(prompt) == ids[:start]


def test_an_adapter_prompt_refuses_a_system_turn():
    with pytest.raises(ValueError, match="'system' turn"):
        adapter_prompt([("system", "You are Marisol Vega."), ("user", "Public: Hello?")])


# -- the loss mask as training labels ------------------------------------------------------------------------


def test_labels_keep_counted_ids_and_ignore_the_rest():
    assert loss_labels([5, 6, 7, 8, 9], [False, True, True, False, True]) == [IGNORED, 6, 7, IGNORED, 9]
    assert IGNORED == -100  # what transformers' causal LM loss ignores
    with pytest.raises(ValueError):
        loss_labels([5, 6], [True])


def test_labels_of_a_chat_with_several_agent_turns(tiny_engine):
    tokenizer = tiny_engine.tokenizer
    turns = ["Let's keep us on track.", "For the record, yes.", "Noted."]
    messages = [
        ("user", "Public: Is the budget ready?"),
        ("assistant", turns[0]),
        ("user", "Mr. Quist: Bottom line?"),
        ("assistant", turns[1]),
        ("user", "Public: Anything else?\nMr. Quist: Quickly."),
        ("assistant", turns[2]),
    ]
    ids, mask = chat_tokens(tokenizer, messages)
    labels = loss_labels(ids, mask)
    assert len(labels) == len(ids)
    kept = [label for label in labels if label != IGNORED]
    # The agent's content and the end-of-turn marker after it (so the model learns to stop), turn by turn.
    expected = [
        t for turn in turns for t in tokenizer(turn + "<|eot_id|>", add_special_tokens=False)["input_ids"]
    ]
    assert kept == expected
    assert all(label in (IGNORED, token) for label, token in zip(labels, ids, strict=True))
    # Nothing of the other speakers, the role headers or the begin-of-text is learned.
    ignored_text = tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label == IGNORED])
    assert "Bottom line?" in ignored_text and "assistant" in ignored_text
    assert not any(turn in ignored_text for turn in turns)


def test_labels_of_a_chat_without_the_agent_are_all_ignored(tiny_engine):
    ids, mask = chat_tokens(
        tiny_engine.tokenizer, [("user", "Public: Is the budget ready?\nMr. Quist: Not yet.")]
    )
    assert ids and set(loss_labels(ids, mask)) == {IGNORED}


def test_a_batch_pads_and_truncates_with_ignored_labels():
    input_ids, attention, labels = _collate(
        [([1, 2, 3, 4], [False, True, True, True]), ([5, 6], [False, True])], pad_id=0, max_length=3
    )
    assert input_ids.tolist() == [[1, 2, 3], [5, 6, 0]]
    assert attention.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert labels.tolist() == [[IGNORED, 2, 3], [IGNORED, 6, IGNORED]]


# -- the merge check ---------------------------------------------------------------------------------------


def test_a_merge_check_that_compared_nothing_fails():
    with pytest.raises(RuntimeError, match="marisolvega: the merge check compared no sample"):
        merge_difference(NAME, [])


def test_a_merge_check_fails_past_the_tolerance_or_on_nan():
    assert merge_difference(NAME, [1e-6, 3e-5]) == 3e-5
    with pytest.raises(RuntimeError, match="marisolvega: merged model differs"):
        merge_difference(NAME, [1e-6, 10 * MERGE_TOLERANCE])
    with pytest.raises(RuntimeError, match="marisolvega: merged model differs .* by nan"):
        merge_difference(NAME, [1e-6, float("nan")])


def test_merging_without_samples_is_refused_before_anything_is_written(engine, tmp_path):
    with pytest.raises(TrainingError, match="marisolvega: no sample to check the merged model"):
        engine.merge_adapter(NAME, tmp_path / "merged", [])
    assert not (tmp_path / "merged").exists()


def test_the_merged_model_matches_base_plus_adapter_on_every_sample(engine, tmp_path):
    samples = [text for _, _, text in MEETING[:3]]
    _, differences = engine.merge_adapter(NAME, tmp_path / "merged", samples)
    assert len(differences) == len(samples)
    assert merge_difference(NAME, differences) <= MERGE_TOLERANCE
    # The adapter does change the logits, so the agreement above is a real comparison.
    tensor = torch.tensor([engine.tokenizer(samples[0])["input_ids"]])
    with torch.inference_mode():
        with engine.using_adapter(NAME):
            adapted = engine.model(input_ids=tensor).logits
        with engine.using_adapter(None):
            base = engine.model(input_ids=tensor).logits
    assert float((adapted - base).abs().max()) > 100 * MERGE_TOLERANCE
