"""Responses: the evaluation items of each agent, and both systems' answers over the sampling grid."""

import polars as pl
from dagster import AssetExecutionContext, AssetIn, AssetsDefinition, Config, asset
from pydantic import Field

from persona_platform.partitions import DISPLAY_NAMES, agents_partitions
from persona_platform.persona_assets.agents.adapters import serve_adapters
from persona_platform.persona_assets.common import (
    AGENT_PARTITION,
    MODEL_KINDS,
    ONE_RUN_PER_BACKFILL,
    OWNERS,
    TABLE_KINDS,
    WAREHOUSE_POOL,
    experiment_step,
    gpu_step,
    model_backfill,
    results_table,
    table_columns,
)
from persona_platform.persona_assets.experiments import Experiment
from persona_platform.persona_assets.responses.tables import (
    ITEM_SCHEMA,
    RESPONSE_SCHEMA,
    item_rows,
    response_plan,
    response_row,
)
from persona_platform.persona_assets.responses.tasks import PROMPT_HASH, UPSTREAM_GRID, SamplingSetting
from persona_platform.persona_assets.steps import asset_frame, model_step, partition_metadata
from persona_platform.resources.llm.resource import LLMResource

GROUP = "responses"


def experiment_assets(x: Experiment) -> list[AssetsDefinition]:
    """An experiment's evaluation items and both systems' responses to them."""
    return [evaluation_items(x), task_responses(x)]


def _shared(x: Experiment, table: str) -> dict:
    return dict(
        key=x.key(GROUP, table),
        **experiment_step(x, GROUP),
        owners=OWNERS,
        partitions_def=agents_partitions,
    )


ITEMS_VERSION = "items-1"


def _item_counts(items: pl.DataFrame) -> dict:
    counts = items.group_by("agent", "task").len().sort("agent", "task")
    return {"items": results_table(["agent", "task", "items"], counts.rows())}


def _response_counts(responses: pl.DataFrame):
    counts = responses.group_by("agent", "task", "system").len().sort("agent", "task", "system")
    return results_table(counts.columns, counts.rows())


RESPONSES_VERSION = f"responses-1-{PROMPT_HASH}"


class ItemConfig(Config):
    max_per_trait: int = Field(
        default=25, description="Probe questions answered per agent and trait (upstream: 25)."
    )
    max_completions: int = Field(
        default=20, description="Held-out completion prompts per agent (upstream: 20)."
    )
    max_monologues: int = Field(default=20, description="Monologue prompts per agent (upstream: 20).")


class ResponseConfig(Config):
    grid: list[str] = Field(
        default=[s.label for s in UPSTREAM_GRID],
        description="Sampling settings as T<temperature>_P<top_p>_K<top_k>_R<repetition penalty>; "
        "every item is answered under each (default: the upstream four).",
    )
    samples: int = Field(
        default=3, description="Samples per item, setting and system (the same for both systems)."
    )
    max_new_tokens: dict[str, int] = Field(
        default={"trait": 500, "completion": 150, "monologue": 250},
        description="New tokens per task (upstream: 500, 150, 250).",
    )
    seed: int = Field(default=0)


def evaluation_items(x: Experiment) -> AssetsDefinition:
    @asset(
        **_shared(x, "evaluation_items"),
        backfill_policy=ONE_RUN_PER_BACKFILL,
        metadata=AGENT_PARTITION | table_columns(ITEM_SCHEMA),
        kinds=TABLE_KINDS,
        pool=WAREHOUSE_POOL,
        code_version=x.code_version(ITEMS_VERSION),
        ins={
            "probe_questions": AssetIn(key=x.key("traits", "probe_questions")),
            "completion_examples": AssetIn(key=["agents", "completion_examples"]),
            "monologue_prompts": AssetIn(key=x.key("traits", "monologue_prompts")),
        },
    )
    def evaluation_items(
        context: AssetExecutionContext,
        config: x.configured(ItemConfig, "evaluation_items"),
        probe_questions: pl.DataFrame,
        completion_examples: pl.DataFrame,
        monologue_prompts: pl.DataFrame,
    ) -> pl.DataFrame:
        """What each agent is evaluated on, with the reference a judge compares against: probe questions
        (reference: the trait summary), held-out completion contexts (what the agent said next), monologue
        prompts (the monologue)."""
        rows = [
            row
            for agent in context.partition_keys
            for row in item_rows(
                agent,
                probe_questions,
                completion_examples,
                monologue_prompts,
                config.max_per_trait,
                config.max_completions,
                config.max_monologues,
            )
        ]
        frame = asset_frame(context, rows, ITEM_SCHEMA)
        partition_metadata(context, frame, _item_counts)
        return frame

    return evaluation_items


def task_responses(x: Experiment) -> AssetsDefinition:
    @asset(
        **_shared(x, "task_responses"),
        backfill_policy=model_backfill(agents_partitions),
        metadata=AGENT_PARTITION | table_columns(RESPONSE_SCHEMA),
        kinds=MODEL_KINDS,
        **gpu_step(gpus=x.gpus()),
        code_version=x.code_version(RESPONSES_VERSION),
        ins={
            "evaluation_items": AssetIn(key=x.key(GROUP, "evaluation_items")),
            "lora_adapters": AssetIn(key=x.key("agents", "lora_adapters")),
            "agent_profiles": AssetIn(key=x.key("traits", "agent_profiles")),
        },
    )
    def task_responses(
        context: AssetExecutionContext,
        config: x.configured(ResponseConfig, "task_responses"),
        llm: LLMResource,
        evaluation_items: pl.DataFrame,
        lora_adapters: pl.DataFrame,
        agent_profiles: pl.DataFrame,
    ) -> pl.DataFrame:
        """Every item answered by both systems under every sampling setting, `samples` times each with seeds
        shared by the systems: the agent's adapter, and the base model told the agent's persona profile (the
        baseline). Both answer the same turns through the model's own template: the adapter exactly as laid
        out in its training (no system turn), the baseline after a system turn with the profile; no best-of-n
        is taken here."""
        grid = [SamplingSetting.parse(label) for label in config.grid]
        profiles = dict(zip(agent_profiles["agent"], agent_profiles["profile"], strict=True))
        items = evaluation_items.sort("agent", "row_id").to_dicts()
        plan = response_plan(
            items, DISPLAY_NAMES, profiles, grid, config.samples, config.max_new_tokens, config.seed
        )
        with model_step(context, x.role("generator", llm), PROMPT_HASH) as step:
            serve_adapters(step.engine, lora_adapters)
            replies = step.engine.generate([planned.request for planned in plan])
            rows = [response_row(planned, reply) for planned, reply in zip(plan, replies, strict=True)]
            frame = step.frame(rows, RESPONSE_SCHEMA)
        settings = {"settings": [s.label for s in grid], "samples": config.samples}
        partition_metadata(context, frame, lambda part: {**settings, "responses": _response_counts(part)})
        return frame

    return task_responses
