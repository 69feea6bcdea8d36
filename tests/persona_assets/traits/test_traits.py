"""Trait extraction logic: chunks, screening rounds, a cap that holds, profile packing."""

from persona_platform.persona_assets.structured_output import Parsed
from persona_platform.persona_assets.traits.extraction import (
    kept,
    longest_first,
    monologue_chunks,
    pack_remarks,
    screen_until_cap,
    word_chunks,
)
from persona_platform.persona_assets.traits.prompts import TRAITS


def test_word_chunks_keep_every_word_in_order():
    text = " ".join(f"w{i}" for i in range(450))
    chunks = word_chunks(text, 200)
    assert [len(c.split()) for c in chunks] == [200, 200, 50]
    assert " ".join(chunks) == text
    ids = [c.chunk_id for c in monologue_chunks([("a/m1/3", text), ("a/m2/7", "short one")], 200)]
    assert ids == ["a/m1/3#0", "a/m1/3#1", "a/m1/3#2", "a/m2/7#0"]


def screener(relevant, calls):
    def screen(batch):
        calls.append(list(batch))
        out = []
        for trait, chunk in batch:
            verdict = relevant(trait, chunk)
            if verdict is None:
                out.append(("garbage", Parsed(None, "not JSON")))
            else:
                out.append(
                    ("{}", Parsed({"relevant": verdict, "summary": f"{trait} {chunk.chunk_id}"}, None))
                )
        return out

    return screen


def test_the_cap_holds_and_screening_stops_once_it_is_reached():
    chunks = monologue_chunks([(f"a/m/{i}", f"text {i}") for i in range(40)], 200)
    calls = []
    made = screen_until_cap(chunks, TRAITS, 5, screener(lambda t, c: True, calls))
    assert len(calls) == 1  # one batch of 5 chunks per trait was enough
    for trait in TRAITS:
        assert len(made[trait]) == 5 and len(kept(made[trait], 5)) == 5


def test_rounds_continue_until_enough_relevant_items_or_no_chunks():
    chunks = monologue_chunks([(f"a/m/{i}", f"text {i}") for i in range(30)], 200)
    # belief: every third chunk relevant; memory: none; personality: every chunk, but some replies fail
    rule = {
        "belief": lambda i: i % 3 == 0,
        "memory": lambda i: False,
        "personality": lambda i: None if i % 4 == 0 else True,
    }
    calls = []
    made = screen_until_cap(
        chunks, TRAITS, 4, screener(lambda t, c: rule[t](int(c.monologue_id.split("/")[-1])), calls)
    )
    belief = kept(made["belief"], 4)
    assert [s.chunk.monologue_id for s in belief] == ["a/m/0", "a/m/3", "a/m/6", "a/m/9"]
    assert len(made["memory"]) == 30 and kept(made["memory"], 4) == []  # screened everything, found nothing
    personality = kept(made["personality"], 4)
    assert len(personality) == 4 and all(s.parsed.ok for s in personality)  # failures never count as relevant
    assert sum(not s.parsed.ok for s in made["personality"]) >= 1


def test_kept_is_capped_even_when_a_round_finds_more():
    chunks = monologue_chunks([(f"a/m/{i}", "t") for i in range(10)], 200)
    made = screen_until_cap(chunks, ("belief",), 3, screener(lambda t, c: True, []))
    assert len(kept(made["belief"], 3)) == 3


def test_profile_blocks_take_the_longest_remarks_within_the_limit():
    texts = ["a" * 10, "b" * 400, "c" * 300, "d" * 50, "e" * 2000]
    chosen = [text for _, text in longest_first(list(enumerate(texts)), 4)]
    blocks = pack_remarks(chosen, max_chars=1000)
    assert blocks[0] == "e" * 1000  # cut to the limit
    assert "b" * 400 in blocks[1] and "c" * 300 in blocks[1] and "d" * 50 in blocks[1]
    assert all(len(b) <= 1000 for b in blocks) and not any("a" in b for b in blocks)
