"""The comparison of experiments: paired on the questions both scored, the right sign and size, intervals with
their n, every row cited in its experiment's own schema, missing parts left out, plots drawn."""

import io

import matplotlib.pyplot as plt
import polars as pl
import pytest
from matplotlib.container import ErrorbarContainer

from persona_platform.persona_assets.plots import Bar, Effect, difference_forest, experiment_accuracy_bars
from persona_platform.persona_assets.provenance import Provenance, result_frame
from persona_platform.persona_assets.reports.comparison import (
    ACCURACY,
    COMPARISON_SCHEMA,
    DIFFERENCE,
    JUDGE_WIN_RATE,
    PERPLEXITY,
    ExperimentInputs,
    accuracy_plot_series,
    comparison_rows,
    comparison_verdict,
    difference_plot_series,
    difference_table,
    side_by_side_table,
)
from persona_platform.persona_assets.reports.tables import AGGREGATE, method_scores, summary_rows

COUNTRIES = ("Aldoria", "Borvania")
QUESTIONS = [f"q{i}" for i in range(20)]


def predictions(
    right, extra: int = 0, few_k=(4, 8), countries=COUNTRIES
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Binary predictions for every country and question (both claims of a question right or wrong together,
    ``right(i)`` for question i), from zero-shot base, zero-shot chat and ICM (every k, two repeats);
    ``extra``: that many more questions, right everywhere."""
    questions = [(q, right(i)) for i, q in enumerate(QUESTIONS)] + [(f"x{i}", True) for i in range(extra)]
    claims = [(c, f"{q}/{c}/{o}", ok) for c in countries for q, ok in questions for o in (0, 1)]
    base = pl.DataFrame(
        [
            {"country": c, "variant": "binary", "claim_id": i, "correct": ok, "row_id": f"binary/{i}"}
            for c, i, ok in claims
        ]
    )
    chat = pl.DataFrame(
        [
            {
                "country": c,
                "variant": "binary",
                "method": "zero_shot_chat",
                "repeat": 0,
                "claim_id": i,
                "correct": ok,
                "row_id": f"binary/r0/{i}",
            }
            for c, i, ok in claims
        ]
    )
    few = pl.DataFrame(
        [
            {
                "country": c,
                "variant": "binary",
                "method": "icm",
                "k": k,
                "repeat": r,
                "claim_id": i,
                "correct": ok,
                "row_id": f"binary/icm/k{k}/r{r}/{i}",
            }
            for c, i, ok in claims
            for k in few_k
            for r in (0, 1)
        ]
    )
    return base, chat, few


def summary_of(frames) -> pl.DataFrame:
    return pl.DataFrame(summary_rows(method_scores(*frames)))


def experiment(name, model, frames, summary=True, perplexity=None, judging=None) -> ExperimentInputs:
    return ExperimentInputs(
        name,
        model,
        *frames,
        accuracy_summary=summary_of(frames) if summary else None,
        perplexity_matrix=perplexity,
        judging_summary=judging,
    )


# Planted: alpha is right on every 4th question (25%), beta on every 2nd (50%) and on one more question alpha
# never saw, x0. On the 20 shared questions beta - alpha is +25 points in each country.
ALPHA = predictions(lambda i: i % 4 == 0)
BETA = predictions(lambda i: i % 2 == 0, extra=1, few_k=(4,))


@pytest.fixture(scope="module")
def planted() -> pl.DataFrame:
    rows = comparison_rows(
        [experiment("beta", "transformers:tiny-b", BETA), experiment("alpha", "transformers:tiny", ALPHA)]
    )
    return result_frame(rows, COMPARISON_SCHEMA, Provenance("run", "v1"))


def rows_of(frame: pl.DataFrame, measure: str, **where) -> list[dict]:
    part = frame.filter(pl.col("measure") == measure)
    for column, value in where.items():
        part = part.filter(pl.col(column) == value)
    return part.to_dicts()


def test_the_planted_difference_has_its_sign_and_size_on_the_shared_questions_only(planted):
    differences = rows_of(planted, DIFFERENCE)
    assert {(r["experiment"], r["other_experiment"]) for r in differences} == {("beta", "alpha")}
    assert {r["method"] for r in differences} == {"zero_shot_base", "zero_shot_chat", "icm"}
    for r in differences:
        # x0 (beta right on it) would move the difference if it were paired with nothing.
        assert r["value"] == pytest.approx(0.25)
        assert r["n"] == (40 if r["scope"] == AGGREGATE else 20) and r["unit"] == "questions"
        assert r["clusters"] == r["n"]
        assert 0 < r["ci_low"] <= 0.25 <= r["ci_high"]
        # Five questions differ per country, all the same way: exact sign-flip p 2 / 2**5; pooled 2 / 2**10.
        assert r["p_value"] == pytest.approx(2 / 2**10 if r["scope"] == AGGREGATE else 2 / 2**5, abs=0.01)
        assert r["model"] == "transformers:tiny-b vs transformers:tiny"
        assert "bootstrap over questions" in r["interval"]
    aggregate = rows_of(planted, DIFFERENCE, scope=AGGREGATE)
    assert len(aggregate) == 3 and all("stratified" in r["interval"] for r in aggregate)
    # beta's own accuracy counts the extra question; the pairing did not.
    beta = rows_of(planted, ACCURACY, experiment="beta", scope="Aldoria", method="icm")[0]
    assert beta["n"] == 21 and beta["value"] == pytest.approx(11 / 21)


def test_countries_are_weighted_by_the_claims_of_the_questions_both_experiments_scored():
    # beta is 25 points ahead in Aldoria, where it also scored 20 questions alpha did not, and level in
    # Borvania: 20 shared questions each, so the countries weigh the same.
    aldoria, borvania = (
        predictions(lambda i: i % 2 == 0, extra=20, countries=("Aldoria",)),
        predictions(lambda i: i % 4 == 0, countries=("Borvania",)),
    )
    beta = tuple(pl.concat(pair) for pair in zip(aldoria, borvania, strict=True))
    rows = comparison_rows([experiment("alpha", "m1", ALPHA), experiment("beta", "m2", beta)])
    aggregate = [r for r in rows if r["measure"] == DIFFERENCE and r["scope"] == AGGREGATE]
    assert len(aggregate) == 3
    assert all(r["value"] == pytest.approx(0.125) and r["n"] == 40 for r in aggregate)


def test_the_difference_is_the_later_name_minus_the_earlier_whatever_the_order_given():
    rows = comparison_rows([experiment("alpha", "m1", ALPHA), experiment("aardvark", "m2", BETA)])
    differences = [r for r in rows if r["measure"] == DIFFERENCE]
    assert {(r["experiment"], r["other_experiment"]) for r in differences} == {("alpha", "aardvark")}
    assert all(r["value"] == pytest.approx(-0.25) and r["ci_high"] < 0 for r in differences)


def test_accuracy_rows_equal_each_experiments_summary_and_cite_it_in_its_own_schema(planted):
    for name, frames in (("alpha", ALPHA), ("beta", BETA)):
        summary = summary_of(frames).filter(pl.col("headline"))
        by_id = {r["row_id"]: r for r in summary.iter_rows(named=True)}
        mine = rows_of(planted, ACCURACY, experiment=name)
        assert len(mine) == summary.height == 9  # 3 methods x (2 countries + aggregate)
        for r in mine:
            assert r["n"] and r["unit"] == "questions" and r["ci_low"] < r["value"] < r["ci_high"]
            if r["scope"] == AGGREGATE:
                source = summary.filter((pl.col("scope") == AGGREGATE) & (pl.col("method") == r["method"]))
                source = source.to_dicts()[0]
                assert len(r["input_ids"]) == len(COUNTRIES)
            else:
                (ref,) = r["input_ids"]
                table, row_id = ref.split(":", 1)
                assert table == f"{name}__elicitation.accuracy_summary"
                source = by_id[row_id]
            assert (r["value"], r["ci_low"], r["ci_high"], r["n"]) == pytest.approx(
                (source["mean"], source["ci_low"], source["ci_high"], source["n_questions"])
            )
    for r in rows_of(planted, DIFFERENCE, scope="Aldoria"):
        assert sorted(ref.split(".", 1)[0] for ref in r["input_ids"]) == [
            "alpha__elicitation",
            "beta__elicitation",
        ]


def test_without_a_summary_row_the_prediction_rows_are_cited_in_the_experiments_schema():
    rows = comparison_rows([experiment("alpha", "m", ALPHA, summary=False)])
    row = next(r for r in rows if r["scope"] == "Aldoria" and r["method"] == "zero_shot_base")
    assert len(row["input_ids"]) == 40
    assert all(
        ref.startswith("alpha__elicitation.zero_shot_base_predictions:binary/") for ref in row["input_ids"]
    )


def test_row_ids_are_unique_and_every_row_cites_its_inputs(planted):
    assert planted["row_id"].n_unique() == planted.height
    assert all(planted["input_ids"].list.len() > 0)
    assert set(planted["measure"]) == {ACCURACY, DIFFERENCE}  # no perplexity or judging given


def test_a_method_one_experiment_lacks_has_its_accuracy_and_no_difference():
    base, _, few = ALPHA
    rows = comparison_rows(
        [experiment("alpha", "m1", (base, None, few), summary=False), experiment("beta", "m2", BETA)]
    )
    chat = [r for r in rows if r["method"] == "zero_shot_chat"]
    assert chat and {(r["measure"], r["experiment"]) for r in chat} == {(ACCURACY, "beta")}


def perplexity_matrix() -> pl.DataFrame:
    cells = [(m, a) for m in ("base", "ann", "bob") for a in ("ann", "bob")]
    return pl.DataFrame(
        {
            "row_id": [f"{m}/{a}" for m, a in cells],
            "model": [m for m, _ in cells],
            "heldout_agent": [a for _, a in cells],
            "examples": [3] * 6,
            "tokens": [120] * 6,
            "nll": [300.0] * 6,
            "perplexity": [12.0, 13.0, 9.0, 14.0, 15.0, 10.0],
        }
    )


def judging_summary() -> pl.DataFrame:
    scopes = [("agent x task", "ann", "trait"), ("task", "all", "trait"), ("task", "all", "completion")]
    return pl.DataFrame(
        {
            "row_id": [f"{a}/{t}/all" for _, a, t in scopes],
            "scope": [s for s, _, _ in scopes],
            "agent": [a for _, a, _ in scopes],
            "task": [t for _, _, t in scopes],
            "items": [4, 8, 6],
            "judged": [10, 20, 12],
            "consistent_rate": [0.5, 0.6, None],
            "consistent_low": [0.2, 0.4, None],
            "consistent_high": [0.8, 0.8, None],
            "interval_method": ["95% BCa cluster bootstrap over evaluation items, 9999 resamples, seed 0"]
            * 3,
        }
    )


def test_perplexity_and_judging_rows_cite_their_experiments_rows_and_empty_inputs_add_none():
    rows = comparison_rows(
        [
            experiment("alpha", "m1", ALPHA, perplexity=perplexity_matrix(), judging=judging_summary()),
            experiment("beta", "m2", BETA, perplexity=pl.DataFrame(), judging=None),
        ]
    )
    frame = result_frame(rows, COMPARISON_SCHEMA, Provenance("run", "v1"))
    perplexity = rows_of(frame, PERPLEXITY)
    assert {(r["scope"], r["method"], r["value"]) for r in perplexity} == {
        ("ann", "base", 12.0),
        ("ann", "own adapter", 9.0),
        ("bob", "base", 13.0),
        ("bob", "own adapter", 10.0),
    }
    assert all(r["experiment"] == "alpha" and r["n"] == 120 and r["unit"] == "tokens" for r in perplexity)
    assert all(r["ci_low"] is None and r["interval"].startswith("none") for r in perplexity)
    assert rows_of(frame, PERPLEXITY, scope="ann", method="own adapter")[0]["input_ids"] == [
        "alpha__agents.perplexity_matrix:ann/ann"
    ]
    judged = rows_of(frame, JUDGE_WIN_RATE)
    assert [(r["method"], r["value"], r["n"], r["clusters"]) for r in judged] == [
        ("completion", None, 12, 6),
        ("trait", 0.6, 20, 8),
    ]
    assert judged[1]["input_ids"] == ["alpha__judging.judging_summary:all/trait/all"]
    assert judged[1]["unit"] == "pairs" and "BCa" in judged[1]["interval"]
    assert frame["row_id"].n_unique() == frame.height
    header, table = side_by_side_table(frame, PERPLEXITY)
    assert len(header) == 5 and table[0] == ["ann", None, "base", "12.00 [no interval]", 120]


def test_ui_tables_put_experiments_side_by_side_and_list_the_differences(planted):
    header, rows = side_by_side_table(planted)
    assert header[3].startswith("alpha (transformers:tiny)") and header[5].startswith(
        "beta (transformers:tiny-b)"
    )
    assert rows[0][:3] == [AGGREGATE, "binary", "icm"] and len(rows) == 9
    assert rows[0][4] == 40 and rows[0][6] == 42
    header, rows = difference_table(planted)
    assert len(rows) == 9 and rows[0][3] == "beta − alpha" and rows[0][4].startswith("25.0 [")


def test_verdict_names_the_difference_or_says_the_experiments_score_the_same(planted):
    verdict = comparison_verdict(planted)
    assert verdict.startswith("beta − alpha: +25.0 points on") and "3 of 3" in verdict
    same = comparison_rows([experiment("alpha", "m", ALPHA), experiment("beta", "m", ALPHA)])
    assert comparison_verdict(pl.DataFrame(same)).startswith(
        "experiments score the same within their intervals"
    )
    one = comparison_rows([experiment("alpha", "m", ALPHA)])
    assert "nothing to compare" in comparison_verdict(pl.DataFrame(one))


def footnote(figure) -> str:
    return "\n".join(t.get_text() for t in figure.texts)


def test_plots_draw_every_interval_and_state_n_and_the_interval_method(planted):
    scope, variant, interval, series = accuracy_plot_series(planted)[0]
    assert (scope, variant) == (AGGREGATE, "binary") and list(series) == [
        "alpha (transformers:tiny)",
        "beta (transformers:tiny-b)",
    ]
    figure = experiment_accuracy_bars(
        "Accuracy by experiment", {k: [Bar(*b) for b in v] for k, v in series.items()}, interval
    )
    axis = figure.axes[0]
    assert sum(isinstance(c, ErrorbarContainer) for c in axis.containers) == 6
    texts = [t.get_text() for t in axis.texts]
    assert any("n=40" in t for t in texts) and any("n=42" in t for t in texts)
    assert "stratified" in footnote(figure) and "n:" in footnote(figure)
    variant, interval, effects = difference_plot_series(planted)[0]
    forest = difference_forest("beta − alpha", [Effect(*e) for e in effects], interval=interval)
    assert sum(isinstance(c, ErrorbarContainer) for c in forest.axes[0].containers) == 3
    assert all("n=40" in t.get_text() for t in forest.axes[0].get_yticklabels())
    assert "stratified" in footnote(forest)
    empty = difference_forest("nothing", [])
    for f in (figure, forest, empty):
        buffer = io.BytesIO()
        f.savefig(buffer, format="png")
        assert buffer.getvalue().startswith(b"\x89PNG")
        plt.close(f)
