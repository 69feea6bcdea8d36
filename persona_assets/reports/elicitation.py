"""Accuracy of every elicitation method per country and aggregated, with plots for the UI."""

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, AssetIn, MetadataValue, asset

from persona_assets.common import OWNERS, TABLE_KINDS, WAREHOUSE_POOL, table_metadata
from persona_assets.elicitation.accuracy import (
    Difference,
    Estimate,
    QuestionScores,
    accuracy,
    difference,
    question_scores,
    repeat_std,
    weighted_accuracy,
    weighted_difference,
)
from persona_assets.provenance import Provenance, result_frame, row_ref
from persona_assets.reports.plots import Bar, accuracy_bars, accuracy_curves, inline
from resources.artifacts import ArtifactStore

AGGREGATE = "aggregate"
SUMMARY_VERSION = "accuracy-summary-2"
DIFFERENCES_VERSION = "method-differences-1"
BAR_METHODS = ("zero_shot_base", "zero_shot_base_chat_template", "zero_shot_chat", "icm", "gold")
CURVE_METHODS = ("gold", "icm", "random_matched")

SUMMARY_SCHEMA = {
    "scope": pl.String,
    "variant": pl.String,
    "method": pl.String,
    "k": pl.Int64,
    "headline": pl.Boolean,
    "mean": pl.Float64,
    "std": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "se": pl.Float64,
    "interval": pl.String,
    "repeats": pl.Int64,
    "n_questions": pl.Int64,
    "n_test": pl.Int64,
    "n_unparsed": pl.Int64,
}
DIFFERENCES_SCHEMA = {
    "scope": pl.String,
    "variant": pl.String,
    "comparison": pl.String,
    "method_a": pl.String,
    "method_b": pl.String,
    "mean_difference": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "p_value": pl.Float64,
    "n_questions": pl.Int64,
    "interval": pl.String,
}
# (a, b): a - b on the same test questions, each few-shot method at its headline k (every ICM-labelled claim).
COMPARISONS = (("icm", "gold"), ("icm", "zero_shot_base"), ("gold", "random_matched"), ("icm", "zero_shot_chat"))

Key = tuple  # (country, variant, method, k or None)
# Both reports read every prediction table of the elicitation methods.
REPORT = dict(
    key_prefix="elicitation", group_name="reports", owners=OWNERS, pool=WAREHOUSE_POOL,
    ins={name: AssetIn(key=["elicitation", name])
         for name in ("zero_shot_base_predictions", "zero_shot_chat_predictions", "few_shot_predictions")},
)


@dataclass(frozen=True)
class MethodScores:
    scores: QuestionScores
    refs: list[str]
    unparsed: int


def method_scores(zero_base: pl.DataFrame, zero_chat: pl.DataFrame, few_shot: pl.DataFrame) -> dict[Key, MethodScores]:
    """Per (country, variant, method, k): per-question scores and the prediction rows they come from.
    A chat reply that did not parse counts as wrong, and is counted apart."""
    out = {}
    no_k = pl.lit(None, pl.Int64).alias("k")
    sources = ((zero_base.with_columns(pl.lit(0).alias("repeat"), pl.lit("zero_shot_base").alias("method"), no_k),
                "elicitation.zero_shot_base_predictions"),
               (zero_chat.with_columns(no_k), "elicitation.zero_shot_chat_predictions"),
               (few_shot, "elicitation.few_shot_predictions"))
    for frame, table in sources:
        for (country, variant, name, k), part in frame.group_by("country", "variant", "method", "k"):
            rows = zip(part["repeat"], part["claim_id"], part["correct"].fill_null(False), strict=True)
            out[(country, variant, name, k)] = MethodScores(question_scores(list(rows)),
                                                            [row_ref(table, i) for i in part["row_id"]],
                                                            part["correct"].null_count())
    return out


def plotted(row: dict) -> tuple[float, float, float]:
    """An accuracy and its interval as plotted (none drawn where a bootstrap had under two questions)."""
    low, high = row["ci_low"], row["ci_high"]
    return row["mean"], row["mean"] if low is None else low, row["mean"] if high is None else high


def summary_row_id(scope: str, variant: str, method: str, k: int | None) -> str:
    return f"{scope}/{variant}/{method}/{'-' if k is None else k}"


def headline_keys(scores: Mapping[Key, MethodScores]) -> dict[tuple[str, str, str], Key]:
    """(country, variant, method) -> the key of its headline: zero-shot, or few-shot with every ICM-labelled claim."""
    largest: dict[tuple, int] = defaultdict(int)
    for country, variant, _, k in scores:
        if k is not None:
            largest[(country, variant)] = max(largest[(country, variant)], k)
    return {(c, v, m): (c, v, m, k) for c, v, m, k in scores if k is None or k == largest[(c, v)]}


def summary_rows(scores: Mapping[Key, MethodScores]) -> list[dict]:
    rows = []
    headlines = headline_keys(scores)

    def add(scope, variant, method, k, headline, estimate: Estimate, std, repeats, n_test, unparsed, inputs):
        rows.append({
            "row_id": summary_row_id(scope, variant, method, k), "scope": scope, "variant": variant, "method": method,
            "k": k, "headline": headline, "mean": estimate.mean, "std": std, "ci_low": estimate.ci_low,
            "ci_high": estimate.ci_high, "se": estimate.se, "interval": estimate.interval, "repeats": repeats,
            "n_questions": estimate.n_questions, "n_test": n_test, "n_unparsed": unparsed,
            "partition_key": None if scope == AGGREGATE else scope, "input_ids": inputs,
        })

    for key, m in sorted(scores.items(), key=lambda i: str(i[0])):
        country, variant, method, k = key
        add(country, variant, method, k, headlines.get((country, variant, method)) == key, accuracy(m.scores),
            repeat_std(m.scores), len(m.scores.per_repeat), m.scores.n_claims, m.unparsed, m.refs)
    countries = sorted({c for c, *_ in scores})
    for variant, method in sorted({(v, m) for _, v, m, _ in scores}):
        groups = [([headlines.get((c, variant, method)) for c in countries], True)]
        ks = sorted({k for _, v, m, k in scores if v == variant and m == method and k is not None})
        groups += [([(c, variant, method, k) for c in countries], False) for k in ks]
        for keys, headline in groups:
            if not all(key in scores for key in keys) or (not headline and all(k == headlines[k[:3]] for k in keys)):
                continue
            parts = [scores[key].scores for key in keys]
            k = keys[0][3] if not headline or keys[0][3] is None else -1
            add(AGGREGATE, variant, method, k, headline, weighted_accuracy(parts),
                float(np.std([np.mean(p.per_repeat) for p in parts], ddof=1)) if len(parts) > 1 else 0.0,
                min(len(p.per_repeat) for p in parts), sum(p.n_claims for p in parts),
                sum(scores[key].unparsed for key in keys),
                [row_ref("elicitation.accuracy_summary", summary_row_id(*key)) for key in keys])
    return rows


def difference_rows(scores: Mapping[Key, MethodScores]) -> list[dict]:
    """Paired differences between methods on the same test questions, per country and aggregated."""
    headlines = headline_keys(scores)
    rows = []
    for variant in sorted({v for _, v, _, _ in scores}):
        for a, b in COMPARISONS:
            pairs = {c: (headlines[(c, variant, a)], headlines[(c, variant, b)]) for c, v, _, _ in scores
                     if v == variant and (c, variant, a) in headlines and (c, variant, b) in headlines}
            for scope, keys in sorted(pairs.items()):
                rows.append(_difference_row(scope, variant, a, b, difference(scores[keys[0]].scores, scores[keys[1]].scores),
                                            [summary_row_id(*key) for key in keys]))
            if pairs:
                both = [(scores[ka].scores, scores[kb].scores) for ka, kb in pairs.values()]
                rows.append(_difference_row(AGGREGATE, variant, a, b, weighted_difference(both),
                                            [summary_row_id(*key) for keys in pairs.values() for key in keys]))
    return rows


def _difference_row(scope, variant, a, b, d: Difference, summary_ids: list[str]) -> dict:
    return {"row_id": f"{scope}/{variant}/{a}-{b}", "scope": scope, "variant": variant, "comparison": f"{a} − {b}",
            "method_a": a, "method_b": b, "mean_difference": d.mean, "ci_low": d.ci_low, "ci_high": d.ci_high,
            "p_value": d.p_value, "n_questions": d.n_questions, "interval": d.interval,
            "partition_key": None if scope == AGGREGATE else scope,
            "input_ids": [row_ref("elicitation.accuracy_summary", i) for i in summary_ids]}


@asset(**REPORT, kinds=TABLE_KINDS | {"matplotlib"}, code_version=SUMMARY_VERSION)
def accuracy_summary(
    context: AssetExecutionContext,
    artifacts: ArtifactStore,
    zero_shot_base_predictions: pl.DataFrame,
    zero_shot_chat_predictions: pl.DataFrame,
    few_shot_predictions: pl.DataFrame,
) -> pl.DataFrame:
    """Test accuracy per country, variant and method over test questions (mean, std over repeats, 95%
    cluster-bootstrap interval over questions, n questions and claims), and aggregated over countries
    weighted by test size (k = -1 there: each country's own M); bar and accuracy-vs-examples plots per
    country and for the aggregate, with those intervals."""
    rows = summary_rows(method_scores(zero_shot_base_predictions, zero_shot_chat_predictions, few_shot_predictions))
    frame = result_frame(rows, SUMMARY_SCHEMA, Provenance(context.run.run_id, SUMMARY_VERSION))
    sections = []
    for (scope, variant), part in sorted(frame.group_by("scope", "variant"), key=lambda g: (g[0][0] == AGGREGATE, g[0])):
        headline = {r["method"]: r for r in part.filter(pl.col("headline")).iter_rows(named=True)}
        bars = [Bar(m, *plotted(headline[m])) for m in BAR_METHODS if m in headline]
        curves = {m: [(r["k"], *plotted(r)) for r in part.filter((pl.col("method") == m) & (pl.col("k") > 0)).iter_rows(named=True)]
                  for m in CURVE_METHODS}
        for kind, png in (
            ("accuracy", accuracy_bars(f"Test accuracy - {scope} ({variant})", bars)),
            ("examples", accuracy_curves(f"Test accuracy vs examples - {scope} ({variant})", {m: c for m, c in curves.items() if c})),
        ):
            path, sha = artifacts.write(png, "plots", "elicitation", f"{scope}-{variant}-{kind}.png")
            sections.append(f"### {scope} ({variant}): {kind}\n`{path}` (sha256 {sha[:12]})\n\n{inline(png, f'{scope} {variant} {kind}')}")
    context.add_output_metadata({"plots": MetadataValue.md("\n\n".join(sections))})
    return frame


@asset(**REPORT, kinds=TABLE_KINDS, code_version=DIFFERENCES_VERSION)
def method_differences(
    context: AssetExecutionContext,
    zero_shot_base_predictions: pl.DataFrame,
    zero_shot_chat_predictions: pl.DataFrame,
    few_shot_predictions: pl.DataFrame,
) -> pl.DataFrame:
    """Paired differences between methods on the same test questions (ICM − gold, ICM − zero-shot base,
    gold − random, ICM − zero-shot chat), per country and aggregated: mean difference of per-question
    accuracy, 95% cluster-bootstrap interval, sign-flip permutation p-value, n questions."""
    scores = method_scores(zero_shot_base_predictions, zero_shot_chat_predictions, few_shot_predictions)
    frame = result_frame(difference_rows(scores), DIFFERENCES_SCHEMA, Provenance(context.run.run_id, DIFFERENCES_VERSION))
    columns = {"scope": "string", "variant": "string", "comparison": "string", "mean_difference": "float",
               "ci_low": "float", "ci_high": "float", "p_value": "float", "n_questions": "int"}
    context.add_output_metadata({"differences": table_metadata(columns, frame.to_dicts())})
    return frame
