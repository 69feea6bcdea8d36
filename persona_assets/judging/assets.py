"""Judging: absolute 1-5 scores per aspect, pairwise comparisons in both orders, and their summary."""

import polars as pl
from dagster import AssetExecutionContext, AssetIn, AssetsDefinition, Config, asset
from pydantic import Field

from persona_platform.partitions import DISPLAY_NAMES, agents_partitions
from persona_platform.persona_assets.common import (
    AGENT_PARTITION,
    REPORT_STEP,
    experiment_model_step,
    experiment_step,
    results_table,
    table_columns,
)
from persona_platform.persona_assets.experiments import Experiment
from persona_platform.persona_assets.judging.judge import compare_pairs, score_responses
from persona_platform.persona_assets.judging.rubrics import JUDGE_HASH, PAIRWISE_HASH
from persona_platform.persona_assets.judging.tables import (
    COMPARISON_FAILURES,
    COMPARISON_SCHEMA,
    JUDGMENT_FAILURES,
    JUDGMENT_SCHEMA,
    SUMMARY_SCHEMA,
    agent_task_win_rates,
    decided_and_tied,
    failure_metadata,
    failure_rate_table,
    judge_items,
    score_groups,
    summary_rows,
    win_rate_table,
)
from persona_platform.persona_assets.plots import saved_plot, score_violins, win_rate_bars
from persona_platform.persona_assets.statistics import interval_method
from persona_platform.persona_assets.steps import asset_frame, model_step, partition_metadata
from persona_platform.persona_assets.verdicts import ties_verdict
from persona_platform.resources.artifacts import ArtifactStore
from persona_platform.resources.llm.resource import LLMResource

GROUP = "judging"


def experiment_assets(x: Experiment) -> list[AssetsDefinition]:
    """An experiment's judge scores, pairwise comparisons and their summary."""
    return [judgments(x), pairwise_comparisons(x), judging_summary(x)]


def _judge_step(x: Experiment, table: str) -> dict:
    """Decorator arguments of an experiment's judge step: on its judge's GPUs, every agent in one run."""
    return dict(
        **experiment_model_step(x, GROUP, table, agents_partitions, role="judge"),
        ins={
            "evaluation_items": AssetIn(key=x.key("responses", "evaluation_items")),
            "task_responses": AssetIn(key=x.key("responses", "task_responses")),
        },
    )


JUDGMENTS_VERSION = f"judgments-1-{JUDGE_HASH}"
COMPARISONS_VERSION = f"comparisons-1-{PAIRWISE_HASH}"


class JudgeConfig(Config):
    explanation_chars: int = Field(
        default=300, description="Longest explanation or justification a reply may hold."
    )
    temperature: float = Field(default=0.0, description="0: greedy judging.")
    seed: int = Field(default=0)


def judgments(x: Experiment) -> AssetsDefinition:
    @asset(
        **_judge_step(x, "judgments"),
        metadata=AGENT_PARTITION | table_columns(JUDGMENT_SCHEMA),
        code_version=x.code_version(JUDGMENTS_VERSION),
    )
    def judgments(
        context: AssetExecutionContext,
        config: x.configured(JudgeConfig, "judgments"),
        judge_llm: LLMResource,
        evaluation_items: pl.DataFrame,
        task_responses: pl.DataFrame,
    ) -> pl.DataFrame:
        """Every response of both systems scored 1-5 per aspect of its task (trait: alignment with the trait;
        completion: alignment, plausibility, tone; monologue: fit, style) by the judge model, as JSON-schema
        constrained output read by a strict parser of the reply alone. A reply that still fails is a row
        with a `failure` and no score."""
        items = judge_items(evaluation_items, DISPLAY_NAMES)
        with model_step(context, x.role("judge", judge_llm), JUDGE_HASH) as step:
            rows = score_responses(
                step.engine,
                items,
                task_responses.sort("row_id").to_dicts(),
                config.explanation_chars,
                config.temperature,
                config.seed,
            )
            frame = step.frame(rows, JUDGMENT_SCHEMA)
        partition_metadata(context, frame, lambda part: failure_metadata(part, JUDGMENT_FAILURES))
        return frame

    return judgments


def pairwise_comparisons(x: Experiment) -> AssetsDefinition:
    @asset(
        **_judge_step(x, "pairwise_comparisons"),
        metadata=AGENT_PARTITION | table_columns(COMPARISON_SCHEMA),
        code_version=x.code_version(COMPARISONS_VERSION),
    )
    def pairwise_comparisons(
        context: AssetExecutionContext,
        config: x.configured(JudgeConfig, "pairwise_comparisons"),
        judge_llm: LLMResource,
        evaluation_items: pl.DataFrame,
        task_responses: pl.DataFrame,
    ) -> pl.DataFrame:
        """The agent's sample i against the baseline's sample i of the same item and setting (no
        best-of-n), judged against the reference in both orders (agent as A, then baseline as A).
        `outcome` is the winner when both orders agree, `tie`, `inconsistent` when they disagree, or
        `failed` when either reply did not parse."""
        items = judge_items(evaluation_items, DISPLAY_NAMES)
        with model_step(context, x.role("judge", judge_llm), PAIRWISE_HASH) as step:
            rows = compare_pairs(
                step.engine,
                items,
                task_responses.to_dicts(),
                config.explanation_chars,
                config.temperature,
                config.seed,
            )
            frame = step.frame(rows, COMPARISON_SCHEMA)
        partition_metadata(context, frame, _comparison_metadata)
        return frame

    return pairwise_comparisons


SUMMARY_VERSION = "judging-summary-2"


def _comparison_metadata(comparisons: pl.DataFrame) -> dict:
    outcomes = comparisons.group_by("outcome").len().sort("outcome")
    return {
        **failure_metadata(comparisons, COMPARISON_FAILURES),
        "outcomes": results_table(["outcome", "pairs"], outcomes.rows()),
    }


def judging_summary(x: Experiment) -> AssetsDefinition:
    @asset(
        key=x.key(GROUP, "judging_summary"),
        **(REPORT_STEP | experiment_step(x, GROUP)),
        metadata=table_columns(SUMMARY_SCHEMA),
        code_version=x.code_version(SUMMARY_VERSION),
        ins={
            "judgments": AssetIn(key=x.key(GROUP, "judgments")),
            "pairwise_comparisons": AssetIn(key=x.key(GROUP, "pairwise_comparisons")),
        },
    )
    def judging_summary(
        context: AssetExecutionContext,
        artifacts: ArtifactStore,
        judgments: pl.DataFrame,
        pairwise_comparisons: pl.DataFrame,
    ) -> pl.DataFrame:
        """Win rates of agent over baseline (order-consistent and raw), mean judge scores of both systems and
        their paired difference, per agent, task and sampling setting, each with its n and a 95% BCa
        cluster-bootstrap interval over evaluation items (null where undefined); score violins and judge
        failure rates."""
        frame = asset_frame(context, summary_rows(judgments, pairwise_comparisons), SUMMARY_SCHEMA)
        violins = score_violins("Judge scores, every sample (no best-of-n)", score_groups(judgments))
        interval = interval_method("evaluation items")
        bars = win_rate_bars(
            "Agent vs persona baseline, order-consistent wins",
            **agent_task_win_rates(frame),
            interval=interval,
        )
        context.add_output_metadata(
            {
                "verdict": ties_verdict(*decided_and_tied(frame)),
                "win_rates": results_table(*win_rate_table(frame)),
                "interval_method": interval,
                "judge_failure_rates": results_table(*failure_rate_table(judgments, pairwise_comparisons)),
                "plot/score_violins": saved_plot(x.artifacts(artifacts), violins, "judging", "score-violins"),
                "plot/win_rates": saved_plot(x.artifacts(artifacts), bars, "judging", "win-rates"),
            }
        )
        return frame

    return judging_summary
