"""Reports across the elicitation methods: accuracy per country and aggregated, paired differences, plots."""

from collections.abc import Sequence

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
from persona_platform.persona_assets.experiments import COMPARISON_GROUP, Experiment
from persona_platform.persona_assets.plots import (
    Bar,
    Effect,
    accuracy_bars,
    accuracy_curves,
    difference_forest,
    experiment_accuracy_bars,
    saved_plot,
)
from persona_platform.persona_assets.reports.comparison import (
    COMPARISON_SCHEMA,
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
from persona_platform.resources.warehouse import WarehouseResource, table_location

SUMMARY_VERSION = "accuracy-summary-3"


def headline_metadata(summary: pl.DataFrame) -> dict:
    """The headline accuracies as a UI table, and a verdict on them."""
    return {
        "verdict": scores_verdict(aggregate_headline(summary), "methods (aggregate headline accuracy)"),
        "headline": results_table(*headline_table(summary), SUMMARY_SCHEMA.descriptions),
    }


DIFFERENCES_VERSION = "method-differences-2"
PREDICTIONS = ("zero_shot_base_predictions", "zero_shot_chat_predictions", "few_shot_predictions")
# The country adapters' predictions: read where they were materialized (a dependency, not an input), so that
# the elicitation reports run without the fine-tuning chain.
FINETUNED = ("finetune", "finetuned_predictions")


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
        deps=[x.key(*FINETUNED)],
    )


def finetuned_predictions(x: Experiment, warehouse: WarehouseResource) -> pl.DataFrame | None:
    """Experiment ``x``'s fine-tuned predictions, or None where the fine-tuning chain has not run."""
    return warehouse.read_optional(*table_location(x.key(*FINETUNED).path))


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
        warehouse: WarehouseResource,
        zero_shot_base_predictions: pl.DataFrame,
        zero_shot_chat_predictions: pl.DataFrame,
        few_shot_predictions: pl.DataFrame,
    ) -> pl.DataFrame:
        """Test accuracy per country, variant and method over test questions (mean, std over repeats, 95%
        cluster-bootstrap interval over questions, n questions and claims), and aggregated over countries
        weighted by test size (k = -1 there: each country's own M); bar and accuracy-vs-examples plots per
        country and for the aggregate, with those intervals."""
        rows = summary_rows(
            method_scores(
                zero_shot_base_predictions,
                zero_shot_chat_predictions,
                few_shot_predictions,
                finetuned_predictions(x, warehouse),
            )
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
        warehouse: WarehouseResource,
        zero_shot_base_predictions: pl.DataFrame,
        zero_shot_chat_predictions: pl.DataFrame,
        few_shot_predictions: pl.DataFrame,
    ) -> pl.DataFrame:
        """Paired differences between methods on the same test questions (fine-tuned on ICM − on gold, on ICM
        − on random, fine-tuned on ICM − few-shot ICM, ICM − gold, ICM − zero-shot base, gold − random, ICM −
        zero-shot chat), per country and aggregated: mean difference of per-question accuracy, 95%
        cluster-bootstrap interval, sign-flip permutation p-value, n questions."""
        scores = method_scores(
            zero_shot_base_predictions,
            zero_shot_chat_predictions,
            few_shot_predictions,
            finetuned_predictions(x, warehouse),
        )
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


COMPARISON_VERSION = "experiment-comparison-2"
# What the comparison reads of each experiment: its name here is f"{experiment}__{table}".
COMPARED = {
    **dict.fromkeys(PREDICTIONS, "elicitation"),
    "accuracy_summary": "elicitation",
    "perplexity_matrix": "agents",
    "judging_summary": "judging",
}


def across_experiments(xs: Sequence[Experiment]) -> list[AssetsDefinition]:
    """The reports that read every experiment: their comparison (with one experiment, its numbers alone)."""
    return [experiment_comparison(xs)]


def _compared(
    x: Experiment, inputs: dict[str, pl.DataFrame], warehouse: WarehouseResource
) -> ExperimentInputs:
    """One experiment's tables from the comparison's inputs; its model is what its predictions name."""
    frames = {table: inputs[f"{x.name}__{table}"] for table in COMPARED}
    models = pl.concat([frames[t].select("model_id") for t in PREDICTIONS])["model_id"].drop_nulls().unique()
    return ExperimentInputs(
        name=x.name,
        model=", ".join(sorted(models)),
        finetuned_predictions=finetuned_predictions(x, warehouse),
        **frames,
    )


def _comparison_plots(artifacts: ArtifactStore, frame: pl.DataFrame) -> dict:
    """Grouped accuracy bars of the experiments per scope and variant, and a forest plot of their paired
    differences per variant; their paths."""
    plots = {}
    for scope, variant, interval, series in accuracy_plot_series(frame):
        figure = experiment_accuracy_bars(
            f"Headline accuracy by experiment - {scope} ({variant})",
            {name: [Bar(*b) for b in bars] for name, bars in series.items()},
            interval,
        )
        plots[f"plot/accuracy-{scope}-{variant}"] = saved_plot(
            artifacts, figure, "experiments", f"{scope}-{variant}"
        )
    for variant, interval, effects in difference_plot_series(frame):
        figure = difference_forest(
            f"Paired differences between experiments - aggregate ({variant})",
            [Effect(*e) for e in effects],
            interval=interval,
        )
        plots[f"plot/differences-{variant}"] = saved_plot(
            artifacts, figure, "experiments", f"differences-{variant}"
        )
    return plots


def experiment_comparison(xs: Sequence[Experiment]) -> AssetsDefinition:
    @asset(
        key=[COMPARISON_GROUP, "experiment_comparison"],
        group_name=COMPARISON_GROUP,
        owners=OWNERS,
        pool=WAREHOUSE_POOL,
        kinds=TABLE_KINDS | {"matplotlib"},
        metadata=table_columns(COMPARISON_SCHEMA),
        code_version=COMPARISON_VERSION,
        ins={
            f"{x.name}__{table}": AssetIn(key=x.key(domain, table))
            for x in xs
            for table, domain in COMPARED.items()
        },
        deps=[x.key(*FINETUNED) for x in xs],
    )
    def comparison(
        context: AssetExecutionContext,
        artifacts: ArtifactStore,
        warehouse: WarehouseResource,
        **inputs: pl.DataFrame,
    ):
        """The experiments side by side: each one's headline accuracy per method, country and variant, the
        paired differences between experiments on the test questions both scored (95% cluster-bootstrap
        interval over questions, sign-flip p, n questions), and each one's perplexities and judge win rates;
        grouped accuracy bars and a forest plot of the differences."""
        compared = [_compared(x, inputs, warehouse) for x in xs]
        frame = asset_frame(context, comparison_rows(compared), COMPARISON_SCHEMA)
        plots = _comparison_plots(artifacts, frame)
        context.add_output_metadata(
            {
                "verdict": comparison_verdict(frame),
                "accuracy": results_table(*side_by_side_table(frame), COMPARISON_SCHEMA.descriptions),
                "differences": results_table(*difference_table(frame)),
                "perplexity": results_table(*side_by_side_table(frame, PERPLEXITY)),
                "judge_win_rates": results_table(*side_by_side_table(frame, JUDGE_WIN_RATE)),
                **plots,
            }
        )
        return frame

    return comparison
