"""Accuracy of every elicitation method per country and aggregated, with plots for the UI."""

from collections import defaultdict

import polars as pl
from dagster import AssetExecutionContext, AssetIn, MetadataValue, asset

from persona_assets.common import OWNERS, TABLE_KINDS, WAREHOUSE_POOL
from persona_assets.elicitation.evaluation import AccuracySummary, aggregate, summarize
from persona_assets.provenance import Provenance, result_frame, row_ref
from persona_assets.reports.plots import Bar, accuracy_bars, accuracy_curves, inline
from resources.artifacts import ArtifactStore

AGGREGATE = "aggregate"
SUMMARY_VERSION = "accuracy-summary-1"
BAR_METHODS = ("zero_shot_base", "zero_shot_chat", "icm", "gold")
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
    "repeats": pl.Int64,
    "n_test": pl.Int64,
}


def accuracy_lists(
    zero_base: pl.DataFrame, zero_chat: pl.DataFrame, few_shot: pl.DataFrame
) -> dict[tuple[str, str, str, int | None], tuple[list[float], int, list[str]]]:
    """(country, variant, method, k) -> (accuracy per repeat, test claims, prediction row refs).
    Parse failures count as wrong."""
    out = {}
    sources = (("zero_shot_base", zero_base, "elicitation.zero_shot_base_predictions"),
               ("zero_shot_chat", zero_chat, "elicitation.zero_shot_chat_predictions"))
    for method, frame, table in sources:
        grouped = frame.group_by("country", "variant").agg(pl.col("correct").fill_null(False).mean(), pl.len(), pl.col("row_id"))
        for country, variant, accuracy, n, ids in grouped.iter_rows():
            out[(country, variant, method, None)] = ([accuracy], n, [row_ref(table, i) for i in ids])
    grouped = few_shot.group_by("country", "variant", "method", "k", "repeat").agg(
        pl.col("correct").mean(), pl.len(), pl.col("row_id"))
    lists: dict[tuple, list[float]] = defaultdict(list)
    sizes: dict[tuple, int] = {}
    refs: dict[tuple, list[str]] = defaultdict(list)
    for country, variant, method, k, _, accuracy, n, ids in grouped.sort("repeat").iter_rows():
        lists[(country, variant, method, k)].append(accuracy)
        sizes[(country, variant, method, k)] = n
        refs[(country, variant, method, k)] += [row_ref("elicitation.few_shot_predictions", i) for i in ids]
    for key, accuracies in lists.items():
        out[key] = (accuracies, sizes[key], refs[key])
    return out


def summary_row_id(scope: str, variant: str, method: str, k: int | None) -> str:
    return f"{scope}/{variant}/{method}/{'-' if k is None else k}"


def summary_rows(lists) -> list[dict]:
    per_country: dict[tuple, AccuracySummary] = {k: summarize(a, n) for k, (a, n, _) in lists.items()}
    largest_k = defaultdict(int)
    for country, variant, method, k in per_country:
        if k is not None:
            largest_k[(country, variant)] = max(largest_k[(country, variant)], k)
    rows = []

    def add(scope, variant, method, k, headline, s: AccuracySummary, inputs: list[str]):
        rows.append({
            "row_id": summary_row_id(scope, variant, method, k), "scope": scope, "variant": variant,
            "method": method, "k": k, "headline": headline, "mean": s.mean, "std": s.std, "ci_low": s.ci_low,
            "ci_high": s.ci_high, "repeats": s.repeats, "n_test": s.n_test,
            "partition_key": None if scope == AGGREGATE else scope, "input_ids": inputs,
        })

    def country_refs(keys) -> list[str]:
        return [row_ref("elicitation.accuracy_summary", summary_row_id(*key)) for key in keys]

    for (country, variant, method, k), s in sorted(per_country.items(), key=lambda i: str(i[0])):
        add(country, variant, method, k, k is None or k == largest_k[(country, variant)], s, lists[(country, variant, method, k)][2])
    countries = sorted({c for c, *_ in per_country})
    variants = sorted({v for _, v, *_ in per_country})
    for variant in variants:
        for method in {m for _, v, m, _ in per_country if v == variant}:
            keys = [(c, variant, method, None if method.startswith("zero") else largest_k[(c, variant)]) for c in countries]
            headline = [per_country.get(key) for key in keys]
            if all(headline):
                add(AGGREGATE, variant, method, None if method.startswith("zero") else -1, True, aggregate(headline),
                    country_refs(keys))
            ks = {k for c, v, m, k in per_country if v == variant and m == method and k is not None}
            for k in sorted(ks):
                keys = [(c, variant, method, k) for c in countries]
                parts = [per_country.get(key) for key in keys]
                if all(parts) and not all(k == largest_k[(c, variant)] for c in countries):
                    add(AGGREGATE, variant, method, k, False, aggregate(parts), country_refs(keys))
    return rows


@asset(
    key_prefix="elicitation",
    group_name="reports",
    owners=OWNERS,
    kinds=TABLE_KINDS | {"matplotlib"}, pool=WAREHOUSE_POOL,
    code_version=SUMMARY_VERSION,
    ins={
        "zero_shot_base_predictions": AssetIn(key=["elicitation", "zero_shot_base_predictions"]),
        "zero_shot_chat_predictions": AssetIn(key=["elicitation", "zero_shot_chat_predictions"]),
        "few_shot_predictions": AssetIn(key=["elicitation", "few_shot_predictions"]),
    },
)
def accuracy_summary(
    context: AssetExecutionContext,
    artifacts: ArtifactStore,
    zero_shot_base_predictions: pl.DataFrame,
    zero_shot_chat_predictions: pl.DataFrame,
    few_shot_predictions: pl.DataFrame,
) -> pl.DataFrame:
    """Test accuracy per country, variant and method (mean, std over repeats, 95% binomial interval),
    and aggregated over countries weighted by test size (k = -1 there: each country's own M); bar and
    accuracy-vs-examples plots per country and for the aggregate."""
    rows = summary_rows(accuracy_lists(zero_shot_base_predictions, zero_shot_chat_predictions, few_shot_predictions))
    frame = result_frame(rows, SUMMARY_SCHEMA, Provenance(context.run.run_id, SUMMARY_VERSION))
    sections = []
    for (scope, variant), part in sorted(frame.group_by("scope", "variant"), key=lambda g: (g[0][0] == AGGREGATE, g[0])):
        headline = {r["method"]: r for r in part.filter(pl.col("headline")).iter_rows(named=True)}
        bars = [Bar(m, headline[m]["mean"], headline[m]["ci_low"], headline[m]["ci_high"]) for m in BAR_METHODS if m in headline]
        curves = {
            m: [(r["k"], r["mean"], r["std"]) for r in part.filter((pl.col("method") == m) & (pl.col("k") > 0)).iter_rows(named=True)]
            for m in CURVE_METHODS
        }
        for kind, png in (
            ("accuracy", accuracy_bars(f"Test accuracy - {scope} ({variant})", bars)),
            ("examples", accuracy_curves(f"Test accuracy vs examples - {scope} ({variant})", {m: c for m, c in curves.items() if c})),
        ):
            path, sha = artifacts.write(png, "plots", "elicitation", f"{scope}-{variant}-{kind}.png")
            sections.append(f"### {scope} ({variant}): {kind}\n`{path}` (sha256 {sha[:12]})\n\n{inline(png, f'{scope} {variant} {kind}')}")
    context.add_output_metadata({"plots": MetadataValue.md("\n\n".join(sections))})
    return frame
