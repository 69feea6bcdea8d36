from pathlib import Path

import duckdb
import polars as pl
import pytest

from persona_platform.partitions import AGENTS, COUNTRIES
from persona_platform.persona_assets.alignment.assets import opinion_alignment
from persona_platform.persona_assets.alignment.similarity import (
    js_distance,
    normalize_logprobs,
    opinion_messages,
    similarity,
)
from tests.conftest import materialize_report, primary_experiment


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
        pairs = con.execute("select persona, country from primary__alignment.opinion_alignment").fetchall()
        partitions = con.execute(
            "select count(distinct partition_key) from primary__alignment.agent_opinions"
        ).fetchone()[0]
    expected = {(p, c) for p in ["base", *(a.key for a in AGENTS)] for c in COUNTRIES}
    assert sorted(pairs) == sorted(expected)
    assert partitions == len(AGENTS) * len(COUNTRIES)


def test_the_alignment_report_shows_the_matrix_as_a_table_and_plot(tmp_path):
    """opinion_alignment on prepared answers (no upstream run): a table per (persona, country) with
    descriptions, and the heatmap's file."""
    answers = [
        {"agent": agent, "country": country, "similarity": similarity, "row_id": f"{agent}/{country}/q{q}"}
        for agent, country, similarity in (("base", "A", 0.9), ("base", "B", 0.5), ("ann", "A", 0.7))
        for q in range(3)
    ]
    base = pl.DataFrame([a for a in answers if a["agent"] == "base"])
    agents = pl.DataFrame([a for a in answers if a["agent"] != "base"])
    table, metadata = materialize_report(
        opinion_alignment(primary_experiment()),
        {("primary", "alignment", "agent_opinions"): agents, ("primary", "alignment", "base_opinions"): base},
        tmp_path,
    )
    assert table.height == 3
    shown = metadata["similarity"]
    assert [c.name for c in shown.schema.columns] == ["persona", "country", "questions", "similarity"]
    assert all(c.description for c in shown.schema.columns)
    assert {(r.data["persona"], r.data["country"]): r.data["questions"] for r in shown.records} == {
        ("base", "A"): 3,
        ("base", "B"): 3,
        ("ann", "A"): 3,
    }
    assert Path(metadata["plot/heatmap"]).is_file()
