import duckdb
import pytest

from persona_platform.partitions import AGENTS, COUNTRIES
from persona_platform.persona_assets.alignment.similarity import (
    js_distance,
    normalize_logprobs,
    opinion_messages,
    similarity,
)


def test_identical_distributions_have_similarity_one():
    assert similarity([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == pytest.approx(1.0)


def test_disjoint_distributions_have_similarity_zero():
    assert similarity([1.0, 0.0, 0.0], [0.0, 0.5, 0.5]) == pytest.approx(0.0)


def test_js_distance_is_symmetric_and_bounded():
    p, q = [0.7, 0.2, 0.1], [0.1, 0.3, 0.6]
    assert js_distance(p, q) == pytest.approx(js_distance(q, p))
    assert 0 < js_distance(p, q) < 1


def test_option_letter_distribution_sums_to_one(tiny_engine):
    from persona_platform.resources.llm import ChatPrompt, ScoreRequest

    messages = opinion_messages(
        "How important is religion in your life?", ["Very", "Somewhat", "Not too", "Not at all"]
    )
    (logprobs,) = tiny_engine.score([ScoreRequest(ChatPrompt(messages), ("A", "B", "C", "D"))])
    distribution = normalize_logprobs(logprobs)
    assert sum(distribution) == pytest.approx(1.0) and all(p > 0 for p in distribution)


@pytest.mark.slow
def test_one_row_per_persona_and_country(sample_run):
    with duckdb.connect(str(sample_run.home / "warehouse.duckdb"), read_only=True) as con:
        pairs = con.execute("select persona, country from alignment.opinion_alignment").fetchall()
        partitions = con.execute(
            "select count(distinct partition_key) from alignment.agent_opinions"
        ).fetchone()[0]
    expected = {(p, c) for p in ["base", *(a.key for a in AGENTS)] for c in COUNTRIES}
    assert sorted(pairs) == sorted(expected)
    assert partitions == len(AGENTS) * len(COUNTRIES)
