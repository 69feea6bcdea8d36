"""Reports across the elicitation methods: accuracy per country and aggregated, paired differences, plots."""

import polars as pl
from dagster import AssetExecutionContext, AssetIn, MetadataValue, asset

from persona_platform.persona_assets.common import (
    OWNERS,
    TABLE_KINDS,
    WAREHOUSE_POOL,
    table_columns,
    table_metadata,
)
from persona_platform.persona_assets.plots import Bar, accuracy_bars, accuracy_curves, saved_plot
from persona_platform.persona_assets.reports.tables import (
    DIFFERENCES_SCHEMA,
    SUMMARY_SCHEMA,
    difference_rows,
    method_scores,
    plot_series,
    summary_rows,
)
from persona_platform.persona_assets.steps import asset_frame
from persona_platform.resources.artifacts import ArtifactStore

SUMMARY_VERSION = "accuracy-summary-2"
DIFFERENCES_VERSION = "method-differences-1"
# Both reports read every prediction table of the elicitation methods.
REPORT = dict(
    key_prefix="elicitation",
    group_name="reports",
    owners=OWNERS,
    pool=WAREHOUSE_POOL,
    ins={
        name: AssetIn(key=["elicitation", name])
        for name in ("zero_shot_base_predictions", "zero_shot_chat_predictions", "few_shot_predictions")
    },
)


@asset(
    **REPORT,
    metadata=table_columns(SUMMARY_SCHEMA),
    kinds=TABLE_KINDS | {"matplotlib"},
    code_version=SUMMARY_VERSION,
)
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
    rows = summary_rows(
        method_scores(zero_shot_base_predictions, zero_shot_chat_predictions, few_shot_predictions)
    )
    frame = asset_frame(context, rows, SUMMARY_SCHEMA)
    sections = []
    for scope, variant, bars, curves in plot_series(frame):
        for kind, png in (
            ("accuracy", accuracy_bars(f"Test accuracy - {scope} ({variant})", [Bar(*b) for b in bars])),
            ("examples", accuracy_curves(f"Test accuracy vs examples - {scope} ({variant})", curves)),
        ):
            plot = saved_plot(artifacts, png, "elicitation", f"{scope}-{variant}-{kind}")
            sections.append(f"### {scope} ({variant}): {kind}\n" + plot)
    context.add_output_metadata({"plots": MetadataValue.md("\n\n".join(sections))})
    return frame


@asset(
    **REPORT, metadata=table_columns(DIFFERENCES_SCHEMA), kinds=TABLE_KINDS, code_version=DIFFERENCES_VERSION
)
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
    frame = asset_frame(context, difference_rows(scores), DIFFERENCES_SCHEMA)
    columns = {
        "scope": "string",
        "variant": "string",
        "comparison": "string",
        "mean_difference": "float",
        "ci_low": "float",
        "ci_high": "float",
        "p_value": "float",
        "n_questions": "int",
    }
    context.add_output_metadata({"differences": table_metadata(columns, frame.to_dicts())})
    return frame
