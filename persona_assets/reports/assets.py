"""Reports across the elicitation methods: accuracy per country and aggregated, paired differences, plots."""

import polars as pl
from dagster import AssetExecutionContext, AssetIn, AssetsDefinition, asset

from persona_platform.persona_assets.common import (
    OWNERS,
    TABLE_KINDS,
    WAREHOUSE_POOL,
    experiment_step,
    results_table,
    table_columns,
)
from persona_platform.persona_assets.elicitation.accuracy import INTERVAL, STRATIFIED
from persona_platform.persona_assets.experiments import Experiment
from persona_platform.persona_assets.plots import Bar, accuracy_bars, accuracy_curves, saved_plot
from persona_platform.persona_assets.reports.tables import (
    AGGREGATE,
    DIFFERENCES_SCHEMA,
    SUMMARY_SCHEMA,
    aggregate_headline,
    difference_rows,
    headline_table,
    method_scores,
    plot_series,
    summary_rows,
)
from persona_platform.persona_assets.steps import asset_frame
from persona_platform.persona_assets.verdicts import scores_verdict
from persona_platform.resources.artifacts import ArtifactStore

SUMMARY_VERSION = "accuracy-summary-2"


def headline_metadata(summary: pl.DataFrame) -> dict:
    """The headline accuracies as a UI table, and a verdict on them."""
    return {
        "verdict": scores_verdict(aggregate_headline(summary), "methods (aggregate headline accuracy)"),
        "headline": results_table(*headline_table(summary), SUMMARY_SCHEMA.descriptions),
    }


DIFFERENCES_VERSION = "method-differences-1"
PREDICTIONS = ("zero_shot_base_predictions", "zero_shot_chat_predictions", "few_shot_predictions")


def experiment_assets(x: Experiment) -> list[AssetsDefinition]:
    """An experiment's reports across its elicitation methods."""
    return [accuracy_summary(x), method_differences(x)]


def _report(x: Experiment) -> dict:
    """Decorator arguments of an experiment's report: both read every prediction table of its methods."""
    return dict(
        **experiment_step(x, "elicitation"),
        owners=OWNERS,
        pool=WAREHOUSE_POOL,
        ins={name: AssetIn(key=x.key("elicitation", name)) for name in PREDICTIONS},
    )


def accuracy_summary(x: Experiment) -> AssetsDefinition:
    @asset(
        key=x.key("elicitation", "accuracy_summary"),
        **_report(x),
        metadata=table_columns(SUMMARY_SCHEMA),
        kinds=TABLE_KINDS | {"matplotlib"},
        code_version=x.code_version(SUMMARY_VERSION),
    )
    def summary(
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
        plots = {}
        for scope, variant, bars, curves in plot_series(frame):
            interval = STRATIFIED if scope == AGGREGATE else INTERVAL
            n = max((b[-1] for b in bars), default=None)
            for kind, figure in (
                (
                    "accuracy",
                    accuracy_bars(f"Test accuracy - {scope} ({variant})", [Bar(*b) for b in bars], interval),
                ),
                (
                    "examples",
                    accuracy_curves(
                        f"Test accuracy vs examples - {scope} ({variant})", curves, n, interval=interval
                    ),
                ),
            ):
                name = f"{scope}-{variant}-{kind}"
                plots[f"plot/{name}"] = saved_plot(x.artifacts(artifacts), figure, "elicitation", name)
        context.add_output_metadata({**headline_metadata(frame), **plots})
        return frame

    return summary


def method_differences(x: Experiment) -> AssetsDefinition:
    @asset(
        key=x.key("elicitation", "method_differences"),
        **_report(x),
        metadata=table_columns(DIFFERENCES_SCHEMA),
        kinds=TABLE_KINDS,
        code_version=x.code_version(DIFFERENCES_VERSION),
    )
    def differences(
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
        shown = [
            "scope",
            "variant",
            "comparison",
            "mean_difference",
            "ci_low",
            "ci_high",
            "p_value",
            "n_questions",
        ]
        table = results_table(shown, frame.select(shown).rows(), DIFFERENCES_SCHEMA.descriptions)
        context.add_output_metadata({"differences": table})
        return frame

    return differences
