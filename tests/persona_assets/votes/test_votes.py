import duckdb
import polars as pl
import pytest

from persona_platform.partitions import AGENTS
from persona_platform.persona_assets.provenance import Provenance, result_frame, row_ref
from persona_platform.persona_assets.statistics import interval_method
from persona_platform.persona_assets.votes.assets import vote_metrics_summary
from persona_platform.persona_assets.votes.prediction import (
    METRIC_SCHEMA,
    UNKNOWN,
    formal_question,
    metric_rows,
    parse_final_vote,
    vote_metrics,
)
from persona_platform.resources.inputs.transcripts import alias_table
from persona_platform.resources.inputs.votes import VoteRecordError, read_votes, resolve_votes, split_names
from persona_platform.resources.settings import SAMPLE_BOARD_DIR
from tests.conftest import materialize_report, primary_experiment


@pytest.mark.parametrize(
    "reply, vote",
    [
        ("I strongly support the teachers and yes, I approve in spirit. Final Vote: Naye", "Naye"),
        ("Final Vote: Aye\nOn reflection, no.\nFinal Vote: Naye", "Naye"),
        ("Final Vote: Naye ... Final vote: AYE", "Aye"),
        ("**Final Vote:** Aye", "Aye"),  # markdown bold around the label is still explicit
        ("Final Vote: **Aye**", "Aye"),
        ("Yes, I support this motion wholeheartedly.", UNKNOWN),
        ("Final Vote: Abstain", UNKNOWN),
        ("", UNKNOWN),
    ],
)
def test_the_last_explicit_final_vote_wins(reply, vote):
    assert parse_final_vote(reply) == vote


@pytest.mark.parametrize(
    "text, names",
    [
        ("Ms. Vega, Dr. Brandt and Mr. Quist", ["Ms. Vega", "Dr. Brandt", "Mr. Quist"]),
        ("Ms. Vega; Dr. Brandt", ["Ms. Vega", "Dr. Brandt"]),
        ("Dr. Brandt, Ms. Vega, and Mr. Quist", ["Dr. Brandt", "Ms. Vega", "Mr. Quist"]),
        ("Mr. Quist & Ms. Vega", ["Mr. Quist", "Ms. Vega"]),
        ("", []),
    ],
)
def test_names_split_on_commas_semicolons_and(text, names):
    assert split_names(text) == names


def test_sample_vote_records_resolve_every_name():
    votes = read_votes(SAMPLE_BOARD_DIR / "votes.csv")
    resolved, unknown = resolve_votes(votes.motions, alias_table(AGENTS))
    assert unknown == []
    assert {v.agent for v in resolved} == {a.key for a in AGENTS}
    assert {v.vote for v in resolved} == {"Aye", "Naye"}


def test_an_unknown_name_is_reported_not_dropped(tmp_path):
    path = tmp_path / "votes.csv"
    path.write_text('Context,Ayes,Nayes\nAdopt the plan,"Ms. Vega and Mrs. Ortiz",Dr. Brandt\n')
    resolved, unknown = resolve_votes(read_votes(path).motions, alias_table(AGENTS))
    assert [(v.agent, v.vote) for v in resolved] == [("marisolvega", "Aye"), ("annikabrandt", "Naye")]
    assert [name for _, name in unknown] == ["Mrs. Ortiz"]


@pytest.mark.parametrize(
    "text, row, field",
    [
        ("Context,Ayes\nAdopt,Ms. Vega\n", 1, "header"),
        ("Context,Ayes,Nayes\n,Ms. Vega,\n", 2, "Context"),
        ('Context,Ayes,Nayes\nAdopt the plan,Ms. Vega,\nRaise fees,"Mr. Quist, 42",\n', 3, "Ayes"),
        ("Context,Ayes,Nayes\nAdopt the plan,,\n", 2, "Ayes"),
    ],
)
def test_bad_vote_records_name_file_row_and_field(tmp_path, text, row, field):
    path = tmp_path / "votes.csv"
    path.write_text(text)
    with pytest.raises(VoteRecordError) as info:
        read_votes(path)
    message = str(info.value)
    assert str(path) in message and f"row {row}" in message and f"field '{field}'" in message


def test_formal_question():
    assert (
        formal_question("Approve the revised bus routes.")
        == "Should the board approve the revised bus routes?"
    )


def test_metrics_against_the_majority_baseline():
    truth = ["Aye"] * 7 + ["Naye"] * 3
    motions = [f"m{i}" for i in range(10)]
    always_aye = vote_metrics(truth, ["Aye"] * 10, motions)
    assert always_aye.accuracy == pytest.approx(0.7) and always_aye.majority_baseline == pytest.approx(0.7)
    assert always_aye.balanced_accuracy == pytest.approx(0.5)
    assert always_aye.macro_f1 == pytest.approx((2 * 0.7 / 1.7 + 0) / 2)
    # the majority predictor is the baseline: the same number with the same interval, side by side
    assert (always_aye.accuracy_low, always_aye.accuracy_high) == (
        always_aye.majority_baseline_low,
        always_aye.majority_baseline_high,
    )
    assert always_aye.accuracy_low < 0.7 < always_aye.accuracy_high
    assert always_aye.balanced_accuracy_low is None  # 0.5 whichever motion is left out: BCa is undefined
    with_unknowns = vote_metrics(truth, ["Aye"] * 5 + [UNKNOWN] * 2 + ["Naye"] * 3, motions)
    assert with_unknowns.unknown_rate == pytest.approx(0.2) and with_unknowns.accuracy == pytest.approx(0.8)
    assert with_unknowns.balanced_accuracy == pytest.approx((5 / 7 + 1) / 2)
    assert with_unknowns.macro_f1 == pytest.approx((2 * 5 / 12 + 2 * 3 / 6) / 2)
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "majority_baseline"):
        low, value, high = (getattr(with_unknowns, f"{name}{s}") for s in ("_low", "", "_high"))
        assert low <= value <= high, name
    assert (with_unknowns.n, with_unknowns.motions, with_unknowns.majority_class) == (10, 10, "Aye")


def test_votes_on_one_motion_are_resampled_together():
    """Three members who vote alike on every motion, predicted alike: one motion's evidence, not three
    votes'."""
    truth = [
        v
        for v in ["Aye", "Naye", "Aye", "Aye", "Naye", "Aye", "Naye", "Aye", "Aye", "Naye"]
        for _ in range(3)
    ]
    predicted = [
        v
        for v in ["Aye", "Aye", "Aye", "Naye", "Naye", "Aye", "Aye", "Aye", "Naye", "Naye"]
        for _ in range(3)
    ]
    by_motion = vote_metrics(truth, predicted, [f"m{i // 3}" for i in range(30)])
    by_vote = vote_metrics(truth, predicted, [f"m{i}" for i in range(30)])
    assert by_motion.accuracy == by_vote.accuracy == pytest.approx(0.6) and (
        by_motion.motions,
        by_vote.motions,
    ) == (10, 30)
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "majority_baseline"):
        widths = [getattr(m, f"{name}_high") - getattr(m, f"{name}_low") for m in (by_motion, by_vote)]
        assert widths[0] > 1.3 * widths[1], name


def test_degenerate_vote_metrics_have_null_intervals():
    empty = vote_metrics([], [], [])
    assert (empty.n, empty.accuracy, empty.accuracy_low, empty.unknown_rate, empty.majority_class) == (
        0,
        None,
        None,
        None,
        "",
    )
    one_motion = vote_metrics(["Aye", "Aye", "Naye"], ["Aye", "Naye", "Naye"], ["m", "m", "m"])
    assert (
        one_motion.accuracy == pytest.approx(2 / 3)
        and one_motion.motions == 1
        and one_motion.accuracy_high is None
    )
    all_right = vote_metrics(["Aye", "Naye", "Aye"], ["Aye", "Naye", "Aye"], ["m1", "m2", "m3"])
    assert all_right.accuracy == 1.0 and all_right.accuracy_low is None


def predictions():
    """Two agents on 8 motions; scoring always says Aye, generation is right on odd motions and Unknown on
    even ones."""
    rows = []
    for motion in range(8):
        truth = "Aye" if motion % 3 else "Naye"
        for agent in ("annikabrandt", "marisolvega"):
            for method, predicted in (("score", "Aye"), ("generate", truth if motion % 2 else UNKNOWN)):
                rows.append(
                    {
                        "row_id": f"{method}/m{motion}/{agent}",
                        "agent": agent,
                        "motion_id": f"m{motion}",
                        "method": method,
                        "truth": truth,
                        "predicted": predicted,
                    }
                )
    return rows


def test_the_summary_has_a_row_per_method_and_scope_with_intervals_and_n():
    rows = predictions()
    summary = metric_rows(pl.DataFrame(rows))
    frame = result_frame(
        summary, METRIC_SCHEMA, Provenance("run", "v")
    )  # every column in the schema, of its type
    assert set(METRIC_SCHEMA) <= set(summary[0])
    assert frame.select("method", "scope", "n", "motions").rows() == [
        (method, scope, n, 8)
        for method in ("generate", "score")
        for scope, n in (("annikabrandt", 8), ("marisolvega", 8), ("overall", 16))
    ]
    overall = frame.filter((pl.col("method") == "generate") & (pl.col("scope") == "overall")).row(
        0, named=True
    )
    assert overall["accuracy"] == pytest.approx(0.5) and overall["unknown_rate"] == pytest.approx(0.5)
    assert overall["accuracy_low"] < 0.5 < overall["accuracy_high"]
    assert overall["majority_class"] == "Aye" and overall["majority_baseline"] == pytest.approx(5 / 8)
    assert overall["majority_baseline_low"] < 5 / 8 < overall["majority_baseline_high"]
    assert overall["interval_method"] == interval_method("motions")
    assert sorted(overall["input_ids"]) == sorted(
        row_ref("votes.vote_predictions", r["row_id"]) for r in rows if r["method"] == "generate"
    )


def test_the_summary_asset_shows_each_metric_beside_the_majority_baseline(tmp_path):
    table, metadata = materialize_report(
        vote_metrics_summary(primary_experiment()),
        {("primary", "votes", "vote_predictions"): pl.DataFrame(predictions())},
        tmp_path,
    )
    assert table.height == 6 and set(METRIC_SCHEMA) <= set(table.columns)
    assert metadata["interval_method"] == interval_method("motions")
    table = metadata["metrics"]
    names = [c.name for c in table.schema.columns]
    assert names[4:9] == ["accuracy", "balanced", "macro-F1", "majority", "majority class"]
    score = next(
        r.data for r in table.records if r.data["method"] == "score" and r.data["scope"] == "overall"
    )
    assert (score["n"], score["motions"], score["majority class"]) == (
        16,
        8,
        "Aye",
    )  # always Aye: the baseline
    assert score["accuracy"].startswith("0.62 [")
    assert metadata["verdict"].startswith("highest: ") and {
        "plot/confusion_generate",
        "plot/confusion_score",
    } <= set(metadata)


@pytest.mark.slow
def test_the_main_job_predicts_votes_for_every_agent(sample_run):
    with duckdb.connect(str(sample_run.home / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute(
            "select method, count(*), count(distinct agent) from primary__votes.vote_predictions "
            "group by method order by method"
        ).fetchall()
        assert rows == [("generate", 30, 3), ("score", 30, 3)]
        scopes = con.execute(
            "select distinct scope from primary__votes.vote_metrics_summary order by scope"
        ).fetchall()
        assert [s for (s,) in scopes] == sorted([a.key for a in AGENTS] + ["overall"])
