"""Votes: motions and per-agent votes from the records, vote predictions two ways, and their metrics."""

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetsDefinition,
    AssetSpec,
    MetadataValue,
    asset,
)

from persona_platform.partitions import AGENTS, DISPLAY_NAMES, agents_partitions
from persona_platform.persona_assets.agents.adapters import serve_adapters
from persona_platform.persona_assets.common import (
    AGENT_PARTITION,
    BOARD_INPUT,
    OWNERS,
    REPORT_STEP,
    TABLE_KINDS,
    WAREHOUSE_POOL,
    experiment_model_step,
    experiment_step,
    results_table,
    table_columns,
)
from persona_platform.persona_assets.experiments import Experiment
from persona_platform.persona_assets.plots import confusion_matrix, saved_plot
from persona_platform.persona_assets.review import REVIEW_SCHEMA, REVIEW_TABLE, reviewed
from persona_platform.persona_assets.statistics import interval_method
from persona_platform.persona_assets.steps import asset_frame, model_step, partition_metadata
from persona_platform.persona_assets.verdicts import scores_verdict
from persona_platform.persona_assets.votes.prediction import (
    ANSWER_PREFIX,
    LABELS,
    METRIC_SCHEMA,
    OVERALL,
    UNKNOWN,
    VOTE_HASH,
    formal_question,
    metric_rows,
)
from persona_platform.persona_assets.votes.tables import (
    MOTION_SCHEMA,
    PREDICTION_SCHEMA,
    RECORD_SCHEMA,
    metric_table,
    motion_rows,
    prediction_rows,
    record_rows,
)
from persona_platform.resources.artifacts import ArtifactStore
from persona_platform.resources.inputs.transcripts import alias_table
from persona_platform.resources.inputs.votes import read_votes
from persona_platform.resources.llm.resource import LLMResource
from persona_platform.resources.sources import BoardSource
from persona_platform.resources.warehouse import WarehouseResource

GROUP = "votes"
VERSION = "votes-1"
PREDICTION_VERSION = f"vote-prediction-1-{VOTE_HASH}"
SHARED = dict(key_prefix=GROUP, group_name=GROUP, owners=OWNERS)
REVIEWS = AssetKey([GROUP, REVIEW_TABLE])

question_reviews = AssetSpec(
    REVIEWS,
    group_name=GROUP,
    owners=OWNERS,
    kinds={"duckdb"},
    metadata=table_columns(REVIEW_SCHEMA),
    description="People's reviews of the generated vote questions (keep, edit, drop), written by "
    "`persona review-questions --kind votes`; motions apply them when they next materialize.",
)


@asset(
    **SHARED,
    kinds=TABLE_KINDS,
    pool=WAREHOUSE_POOL,
    code_version=VERSION,
    metadata=table_columns(MOTION_SCHEMA),
    deps=[REVIEWS],
    tags=dict([BOARD_INPUT]),
)
def motions(context: AssetExecutionContext, board: BoardSource, warehouse: WarehouseResource) -> pl.DataFrame:
    """Each vote record's motion, with the formal yes/no question a member answers: the reviewed
    text where a person reviewed it (a dropped question leaves its motion out), else the generated one."""
    votes = read_votes(board.votes_file())
    reviews = warehouse.read_optional(GROUP, REVIEW_TABLE)

    def review(motion, generated):
        return reviewed(f"votes.motions:{motion.motion_id}", generated, reviews, f"votes.{REVIEW_TABLE}")

    rows, dropped = motion_rows(votes, formal_question, review)
    context.add_output_metadata(
        {"reviewed": sum(r["review"] is not None for r in rows), "dropped_by_review": dropped}
    )
    return asset_frame(context, rows, MOTION_SCHEMA)


@asset(
    **SHARED,
    kinds=TABLE_KINDS,
    pool=WAREHOUSE_POOL,
    code_version=VERSION,
    metadata=table_columns(RECORD_SCHEMA),
    ins={"motions": AssetIn(key=[GROUP, "motions"])},
    tags=dict([BOARD_INPUT]),
)
def vote_records(context: AssetExecutionContext, motions: pl.DataFrame) -> pl.DataFrame:
    """One row per (motion, voter): the agent the name resolves to through the registry's aliases, or
    null for a name that matches no agent (kept, reported in metadata and by a check)."""
    rows, unknown = record_rows(motions, alias_table(AGENTS))
    frame = asset_frame(context, rows, RECORD_SCHEMA)
    counts = frame.filter(pl.col("agent").is_not_null()).group_by("agent", "vote").len().sort("agent", "vote")
    context.add_output_metadata(
        {
            "unknown_names": MetadataValue.json(sorted({name for _, name in unknown})),
            "votes_per_agent": results_table(["agent", "vote", "motions"], counts.rows()),
        }
    )
    return frame


def vote_predictions(x: Experiment) -> AssetsDefinition:
    @asset(
        **experiment_model_step(x, GROUP, "vote_predictions", agents_partitions),
        code_version=x.code_version(PREDICTION_VERSION),
        metadata=AGENT_PARTITION | table_columns(PREDICTION_SCHEMA),
        ins={
            "motions": AssetIn(key=[GROUP, "motions"]),
            "vote_records": AssetIn(key=[GROUP, "vote_records"]),
            "lora_adapters": AssetIn(key=x.key("agents", "lora_adapters")),
        },
    )
    def vote_predictions(
        context: AssetExecutionContext,
        llm: LLMResource,
        motions: pl.DataFrame,
        vote_records: pl.DataFrame,
        lora_adapters: pl.DataFrame,
    ) -> pl.DataFrame:
        """Each agent's adapter votes on the motions it voted on, two ways: by scoring 'Final Vote: Aye'
        against 'Final Vote: Naye' (no sampling), and by greedy generation read by a strict parser (the
        last explicit final vote wins; anything else is Unknown)."""
        questions = dict(zip(motions["row_id"], motions["question"], strict=True))
        with model_step(context, x.role("generator", llm), VOTE_HASH) as step:
            serve_adapters(step.engine, lora_adapters)
            rows = prediction_rows(
                step.engine,
                context.partition_keys,
                DISPLAY_NAMES,
                questions,
                vote_records,
            )
            frame = step.frame(rows, PREDICTION_SCHEMA)
        partition_metadata(context, frame, _prediction_metadata)
        return frame

    return vote_predictions


METRICS_VERSION = "vote-metrics-2"


def experiment_assets(x: Experiment) -> list[AssetsDefinition]:
    """An experiment's vote predictions and their metrics."""
    return [vote_predictions(x), vote_metrics_summary(x)]


def _prediction_metadata(predictions: pl.DataFrame) -> dict:
    return {
        "answer_prefix": ANSWER_PREFIX,
        "unknown_generations": int((predictions["predicted"] == UNKNOWN).sum()),
    }


def vote_metrics_summary(x: Experiment) -> AssetsDefinition:
    @asset(
        key=x.key(GROUP, "vote_metrics_summary"),
        **(REPORT_STEP | experiment_step(x, GROUP)),
        metadata=table_columns(METRIC_SCHEMA),
        code_version=x.code_version(METRICS_VERSION),
        ins={"vote_predictions": AssetIn(key=x.key(GROUP, "vote_predictions"))},
    )
    def vote_metrics_summary(
        context: AssetExecutionContext, artifacts: ArtifactStore, vote_predictions: pl.DataFrame
    ) -> pl.DataFrame:
        """Accuracy, balanced accuracy, macro-F1 and, beside them, the majority-class baseline, each with a
        95% BCa cluster-bootstrap interval over motions (null where undefined), the Unknown rate, n votes
        and motions, per method, per agent and overall, with confusion matrices."""
        rows, plots = metric_rows(vote_predictions), {}
        for method in sorted(vote_predictions["method"].unique()):
            part = vote_predictions.filter(pl.col("method") == method)
            figure = confusion_matrix(
                f"Vote prediction ({method})",
                part["truth"].to_list(),
                part["predicted"].to_list(),
                list(LABELS),
                [*LABELS, UNKNOWN],
            )
            plots[f"plot/confusion_{method}"] = saved_plot(
                x.artifacts(artifacts), figure, "votes", f"confusion-{method}"
            )
        frame = asset_frame(context, rows, METRIC_SCHEMA)
        overall = {
            r["method"]: r["accuracy"] for r in rows if r["scope"] == OVERALL and r["accuracy"] is not None
        }
        context.add_output_metadata(
            {
                "verdict": scores_verdict(overall, "methods' vote accuracy"),
                "metrics": results_table(*metric_table(rows)),
                "interval_method": interval_method("motions"),
                **plots,
            }
        )
        return frame

    return vote_metrics_summary
