"""The persona-evaluation chain on the sample board with the embedded model: traits, reviewed questions,
responses of both systems, judgments and pairwise comparisons, and their summary."""

import os
import subprocess

import duckdb
import polars as pl
import pytest

from persona_platform.persona_assets.judging.checks import judgments_failure_rate, pairwise_failure_rate
from persona_platform.persona_assets.lineage import lineage_graph
from tests.conftest import PERSONA, persona


def frame(home, sql):
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql).pl()


@pytest.mark.slow
def test_the_chain_runs_in_the_main_run_and_every_judgment_is_schema_valid(sample_run):
    assert sample_run.returncode == 0, sample_run.stderr[-3000:]
    home = sample_run.home
    judgments = frame(home, "select * from primary__judging.judgments")
    assert (
        judgments.height > 0 and judgments["failure"].null_count() == judgments.height
    )  # constrained: none failed
    assert judgments["score"].is_between(1, 5).all()
    comparisons = frame(home, "select * from primary__judging.pairwise_comparisons")
    assert comparisons.height > 0
    assert (
        comparisons["reply_agent_first"].null_count() == 0
        and comparisons["reply_baseline_first"].null_count() == 0
    )
    assert set(comparisons["outcome"]) <= {"agent", "baseline", "tie", "inconsistent"}
    # the same samples for both systems: every (item, setting, sample) answered once by each
    responses = frame(home, "select * from primary__responses.task_responses")
    per_system = responses.group_by("item_id", "setting", "sample").agg(
        pl.col("system").sort().alias("systems")
    )
    assert per_system["systems"].to_list() == [["agent", "baseline"]] * per_system.height
    assert comparisons.height == per_system.height
    items = frame(home, "select * from primary__responses.evaluation_items")
    assert set(items["task"]) == {"trait", "completion", "monologue"}
    assert (
        items["reference"].str.strip_chars().str.len_chars() > 0
    ).all()  # every judged item has its reference
    screenings = frame(
        home,
        "select agent, trait, count(*) filter (where kept) as kept from "
        "primary__traits.trait_screenings group by all",
    )
    assert screenings["kept"].max() <= 3  # the embedded profile's cap
    summary = frame(home, "select * from primary__judging.judging_summary where scope = 'task'")
    assert set(summary["task"]) == {"trait", "completion", "monologue"}
    assert (summary["judged"] == summary["pairs"]).all()


@pytest.mark.slow
def test_a_judgment_row_reaches_the_transcript_rows(sample_run):
    (row_id,) = frame(
        sample_run.home, "select row_id from primary__judging.judgments where task = 'monologue' limit 1"
    ).row(0)
    with duckdb.connect(str(sample_run.home / "warehouse.duckdb"), read_only=True) as con:
        nodes = lineage_graph(con, "primary__judging.judgments", row_id)
    tables = {ref.split(":")[0] for ref in nodes}
    assert {
        "primary__responses.task_responses",
        "primary__responses.evaluation_items",
        "primary__traits.monologue_prompts",
        "agents.monologues",
        "agents.board_turns",
        "primary__agents.lora_adapters",
    } <= tables
    assert any(ref.startswith("file:") for node in nodes.values() for ref in node.inputs)


def test_the_judge_failure_rate_check_holds_the_threshold(monkeypatch):
    rows = pl.DataFrame({"failure": [None, None, None, "not JSON"]})
    monkeypatch.setenv("PERSONA_JUDGE_MAX_FAILURE_RATE", "0.2")
    assert not judgments_failure_rate(rows).passed
    monkeypatch.setenv("PERSONA_JUDGE_MAX_FAILURE_RATE", "0.25")
    result = judgments_failure_rate(rows)
    assert result.passed and result.metadata["judge_failures"].value == 1
    pairs = pl.DataFrame(
        {"failure_agent_first": [None, None], "failure_baseline_first": [None, "schema: winner"]}
    )
    assert not pairwise_failure_rate(pairs).passed  # 1 of 2 pairs: a pair fails when either order failed


@pytest.mark.slow
def test_reviewed_probe_questions_change_the_evaluation_items_and_show_in_lineage(tmp_path):
    items = '+key:"primary/responses/evaluation_items"'
    first = persona(tmp_path, "run", "--select", items)
    assert first.returncode == 0, first.stderr[-3000:]
    before = frame(tmp_path, "select row_id, question from primary__traits.probe_questions order by row_id")
    typed = "e\nWhat did the facilities vote teach you?\nd\nq\n"
    result = subprocess.run(
        [PERSONA, "review-questions", "--kind", "traits"],
        input=typed,
        text=True,
        capture_output=True,
        env={**os.environ, "PERSONA_HOME": str(tmp_path)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"[1/{before.height}]" in result.stdout and "2 reviewed in this session" in result.stdout
    again = persona(
        tmp_path,
        "run",
        "--select",
        'key:"primary/traits/probe_questions" or key:"primary/responses/evaluation_items"',
    )
    assert again.returncode == 0, again.stderr[-3000:]
    after = frame(
        tmp_path, "select row_id, question, review from primary__traits.probe_questions order by row_id"
    )
    edited, dropped = before["row_id"][0], before["row_id"][1]
    assert after.filter(pl.col("row_id") == edited).row(0)[1:] == (
        "What did the facilities vote teach you?",
        "edit",
    )
    assert dropped not in after["row_id"].to_list() and after.height == before.height - 1
    item = frame(
        tmp_path,
        f"select row_id, messages from primary__responses.evaluation_items where row_id = 'trait/{edited}'",
    )
    assert "What did the facilities vote teach you?" in item["messages"][0]
    assert (
        frame(
            tmp_path,
            f"select count(*) as n from primary__responses.evaluation_items where row_id = 'trait/{dropped}'",
        )["n"][0]
        == 0
    )
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        nodes = lineage_graph(con, "primary__responses.evaluation_items", f"trait/{edited}")
    assert any(ref.startswith("traits.question_reviews:") for ref in nodes)
