"""Agent twins: board turns, per-agent corpora, LoRA adapters, merged models, perplexity."""

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetOut,
    AssetsDefinition,
    Config,
    MetadataValue,
    Output,
    asset,
    multi_asset,
)
from pydantic import Field

from persona_platform.partitions import AGENTS, AGENTS_BY_KEY, agents_partitions
from persona_platform.persona_assets.agents.adapters import serve_adapters
from persona_platform.persona_assets.agents.corpora import split_meetings
from persona_platform.persona_assets.agents.tables import (
    ADAPTER_SCHEMA,
    BASE_MODEL_ROW,
    COMPLETION_SCHEMA,
    CONVERSATION_SCHEMA,
    LOSS_SCHEMA,
    MERGED_SCHEMA,
    MONOLOGUE_SCHEMA,
    PERPLEXITY_SCHEMA,
    TURN_SCHEMA,
    adapter_row,
    adapter_table,
    completion_rows,
    conversation_rows,
    loss_rows,
    merge_difference,
    merged_row,
    monologue_rows,
    perplexity_rows,
    training_chat,
    turn_rows,
)
from persona_platform.persona_assets.common import (
    AGENT_PARTITION,
    BOARD_INPUT,
    DEPLOYMENT,
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
from persona_platform.persona_assets.deployment import TRAINING_PROFILE
from persona_platform.persona_assets.experiments import Experiment
from persona_platform.persona_assets.plots import heatmap, loss_curve, saved_plot
from persona_platform.persona_assets.progress import Tracker
from persona_platform.persona_assets.steps import asset_frame, model_step, partition_metadata
from persona_platform.persona_assets.verdicts import perplexity_verdict
from persona_platform.resources.artifacts import ArtifactStore
from persona_platform.resources.inputs.registry import Agent
from persona_platform.resources.inputs.transcripts import read_meetings
from persona_platform.resources.llm import Engine
from persona_platform.resources.llm.resource import LLMResource
from persona_platform.resources.sources import BoardSource
from persona_platform.resources.training import LoraTraining, TrainingOutcome, run_fingerprint

GROUP = "agents"
VERSION = "agents-1"
SHARED = dict(key_prefix=GROUP, group_name=GROUP, owners=OWNERS, code_version=VERSION)
BY_AGENT = dict(partitions_def=agents_partitions, backfill_policy=ONE_RUN_PER_BACKFILL)


class BoardConfig(Config):
    test_fraction: float = Field(default=0.25, description="Share of meetings held out (whole meetings).")
    seed: int = Field(default=7, description="Seeds the meeting split.")


class CorpusConfig(Config):
    conversation_words: int = Field(
        default=300, description="Longest training conversation window, in words."
    )
    context_turns: int = Field(default=6, description="Turns before an utterance given as its context.")
    min_completion_words: int = Field(
        default=12, description="Shortest utterance used as a completion target."
    )
    monologue_words: int = Field(default=150, description="A monologue is an utterance longer than this.")


class TrainingConfig(Config):
    learning_rate: float = Field(
        default=2e-5, description="Upstream default; the embedded model needs far more."
    )
    epochs: int = Field(default=2)
    batch_size: int = Field(default=4)
    max_length: int = Field(default=2048, description="Tokens per example; longer ones are truncated.")
    checkpoint_every: int = Field(
        default=50, description="Save a checkpoint every N steps (and every epoch)."
    )
    seed: int = Field(default=0)
    quantization: str = Field(
        default="none", description="none, or 4bit (QLoRA: a CUDA GPU with bitsandbytes)."
    )
    processes: int = Field(
        default=DEPLOYMENT.training_processes,
        description="Training processes (one per GPU; gloo on CPU; default: PERSONA_TRAINING_PROCESSES). 1 "
        "trains in the step's process on the engine's loaded model; more launch that many under torchrun, "
        "each loading the base once.",
    )
    strategy: str = Field(
        default="ddp",
        description="With processes > 1: ddp (each process holds the whole base) or fsdp (the base sharded "
        "across the processes).",
    )

    def settings(self, agent: Agent) -> LoraTraining:
        """The agent's LoRA shape (from the registry) with this run's optimisation settings."""
        lora = agent.lora
        return LoraTraining(
            rank=lora.rank,
            alpha=lora.alpha,
            dropout=lora.dropout,
            target_modules=lora.target_modules,
            learning_rate=self.learning_rate,
            epochs=self.epochs,
            batch_size=self.batch_size,
            max_length=self.max_length,
            checkpoint_every=self.checkpoint_every,
            seed=self.seed,
            quantization=self.quantization,
            processes=self.processes,
            strategy=self.strategy,
        )


@asset(
    **SHARED,
    kinds=TABLE_KINDS,
    pool=WAREHOUSE_POOL,
    tags=dict([BOARD_INPUT]),
    metadata=table_columns(TURN_SCHEMA),
)
def board_turns(context: AssetExecutionContext, config: BoardConfig, board: BoardSource) -> pl.DataFrame:
    """Every turn of every meeting transcript, its speaker resolved to an agent (or none), and the
    meeting's train/test split: whole meetings, so no meeting feeds both."""
    meetings = read_meetings(board.transcripts_dir())
    splits = split_meetings([m.meeting_id for m in meetings], config.test_fraction, config.seed)
    frame = asset_frame(context, turn_rows(meetings, AGENTS, splits), TURN_SCHEMA)
    per_split = frame.group_by("split").agg(pl.col("meeting_id").unique())
    meetings_by_split = {s: set(ids) for s, ids in per_split.iter_rows()}
    assert not meetings_by_split.get("train", set()) & meetings_by_split.get("test", set())
    per_agent = frame.group_by("agent", "split").agg(pl.len(), pl.col("words").sum()).sort("agent", "split")
    context.add_output_metadata(
        {
            "meetings": MetadataValue.json({s: sorted(ids) for s, ids in meetings_by_split.items()}),
            "unresolved_speakers": sorted(set(frame.filter(pl.col("agent").is_null())["speaker"])),
            "turns_per_agent": results_table(["agent", "split", "turns", "words"], per_agent.rows()),
        }
    )
    return frame


TURNS_IN = {"board_turns": AssetIn(key=[GROUP, "board_turns"])}


@asset(
    **SHARED,
    **BY_AGENT,
    metadata=AGENT_PARTITION | table_columns(CONVERSATION_SCHEMA),
    kinds=TABLE_KINDS,
    pool=WAREHOUSE_POOL,
    ins=TURNS_IN,
)
def training_conversations(
    context: AssetExecutionContext, config: CorpusConfig, board_turns: pl.DataFrame
) -> pl.DataFrame:
    """Training chats from train meetings: the agent's turns as assistant turns,
    everyone else's as user turns."""
    rows = conversation_rows(board_turns, context.partition_keys, config.conversation_words)
    return asset_frame(context, rows, CONVERSATION_SCHEMA)


@asset(
    **SHARED,
    **BY_AGENT,
    metadata=AGENT_PARTITION | table_columns(COMPLETION_SCHEMA),
    kinds=TABLE_KINDS,
    pool=WAREHOUSE_POOL,
    ins=TURNS_IN,
)
def completion_examples(
    context: AssetExecutionContext, config: CorpusConfig, board_turns: pl.DataFrame
) -> pl.DataFrame:
    """Each utterance of the agent with the turns before it, from train and test meetings
    (the held-out sets)."""
    rows = completion_rows(
        board_turns, context.partition_keys, config.context_turns, config.min_completion_words
    )
    return asset_frame(context, rows, COMPLETION_SCHEMA)


@asset(
    **SHARED,
    **BY_AGENT,
    metadata=AGENT_PARTITION | table_columns(MONOLOGUE_SCHEMA),
    kinds=TABLE_KINDS,
    pool=WAREHOUSE_POOL,
    ins=TURNS_IN,
)
def monologues(
    context: AssetExecutionContext, config: CorpusConfig, board_turns: pl.DataFrame
) -> pl.DataFrame:
    """The agent's utterances longer than the monologue threshold (150 words by default)."""
    return asset_frame(
        context, monologue_rows(board_turns, context.partition_keys, config.monologue_words), MONOLOGUE_SCHEMA
    )


def train_agent(
    engine: Engine,
    artifacts: ArtifactStore,
    agent: str,
    conversations: pl.DataFrame,
    settings: LoraTraining,
    log,
) -> TrainingOutcome:
    """Train (or resume) one agent's adapter; checkpoints and the adapter live under this
    exact run's fingerprint (settings, examples and the base trained on)."""
    examples = engine.training_examples([training_chat(m) for m in conversations["messages"]])
    run = run_fingerprint(settings, examples, engine.training_base)
    return engine.train_adapter(
        agent,
        examples,
        settings,
        log=log,
        progress=Tracker(log, f"training {agent}", 0),
        checkpoint_path=artifacts.path("checkpoints", "lora", agent, f"{run}.pt"),
        adapter_dir=artifacts.path("adapters", agent, run),
    )


def _adapter_metadata(adapters: pl.DataFrame) -> dict:
    return {"adapter": results_table(*adapter_table(adapters.to_dicts()))}


def _loss_plot(artifacts: ArtifactStore, agent: str, outcome: TrainingOutcome) -> MetadataValue:
    """The agent's training loss per step, plotted and stored; its path."""
    steps, losses = [p["step"] for p in outcome.losses], [p["loss"] for p in outcome.losses]
    figure = loss_curve(f"LoRA training - {agent}", steps, losses)
    return saved_plot(artifacts, figure, "training", agent)


def experiment_assets(x: Experiment) -> list[AssetsDefinition]:
    """An experiment's adapters on its generator, their merged models and their perplexities."""
    return [lora_training(x), merged_models(x), perplexity_matrix(x)]


def _model_out(x: Experiment, name: str, schema, description: str) -> AssetOut:
    return AssetOut(
        key=x.key(GROUP, name),
        metadata=AGENT_PARTITION | table_columns(schema),
        owners=OWNERS,
        kinds=MODEL_KINDS,
        tags=x.tags(GROUP),
        code_version=x.code_version(VERSION),
        description=description,
    )


def _shared(x: Experiment) -> dict:
    return dict(**experiment_step(x, GROUP), owners=OWNERS, code_version=x.code_version(VERSION))


def _adapters_in(x: Experiment) -> dict:
    return {
        "lora_adapters": AssetIn(key=x.key(GROUP, "lora_adapters")),
        "completion_examples": AssetIn(key=[GROUP, "completion_examples"]),
    }


def lora_training(x: Experiment) -> AssetsDefinition:
    @multi_asset(
        name=x.op_name("lora_training"),
        outs={
            "lora_adapters": _model_out(
                x,
                "lora_adapters",
                ADAPTER_SCHEMA,
                "A LoRA adapter per agent (PEFT + Accelerate, loss on the agent's tokens only): "
                "path, sha256, hyperparameters.",
            ),
            "training_loss": _model_out(
                x, "training_loss", LOSS_SCHEMA, "Training loss per step and agent, with the loss curve plot."
            ),
        },
        group_name=x.name,
        **gpu_step(TRAINING_PROFILE, x.gpus()),
        partitions_def=agents_partitions,
        backfill_policy=model_backfill(agents_partitions),
        ins={"training_conversations": AssetIn(key=[GROUP, "training_conversations"])},
    )
    def training(
        context: AssetExecutionContext,
        config: x.configured(TrainingConfig, "lora_training"),
        llm: LLMResource,
        artifacts: ArtifactStore,
        training_conversations: pl.DataFrame,
    ):
        """Train each agent's adapter on its conversations; resumes from its last checkpoint after a crash."""
        store = x.artifacts(artifacts)
        adapters, losses, plots = [], [], {}
        with model_step(context, x.role("generator", llm)) as step:
            for agent in context.partition_keys:
                settings = config.settings(AGENTS_BY_KEY[agent])
                conversations = training_conversations.filter(pl.col("agent") == agent).sort("row_id")
                with step.partition(agent):
                    outcome = train_agent(
                        step.engine, store, agent, conversations, settings, context.log.info
                    )
                adapters.append(adapter_row(agent, outcome, settings, conversations["row_id"].to_list()))
                losses += loss_rows(agent, outcome)
                plots[agent] = _loss_plot(store, agent, outcome)
            adapter_frame = step.frame(adapters, ADAPTER_SCHEMA, "lora_adapters")
            loss_frame = step.frame(losses, LOSS_SCHEMA, "training_loss")
        partition_metadata(context, adapter_frame, _adapter_metadata, "lora_adapters")
        for agent, plot in plots.items():
            context.add_asset_metadata(
                {"plot/loss": plot}, asset_key=x.key(GROUP, "training_loss"), partition_key=agent
            )
        yield Output(adapter_frame, "lora_adapters")
        yield Output(loss_frame, "training_loss")

    return training


def merged_models(x: Experiment) -> AssetsDefinition:
    @asset(
        key=x.key(GROUP, "merged_models"),
        **_shared(x),
        partitions_def=agents_partitions,
        backfill_policy=model_backfill(agents_partitions),
        metadata=AGENT_PARTITION | table_columns(MERGED_SCHEMA),
        kinds=MODEL_KINDS | {"safetensors"},
        **gpu_step(gpus=x.gpus()),
        ins=_adapters_in(x),
    )
    def merged(
        context: AssetExecutionContext,
        llm: LLMResource,
        artifacts: ArtifactStore,
        lora_adapters: pl.DataFrame,
        completion_examples: pl.DataFrame,
    ) -> pl.DataFrame:
        """Base weights with the agent's adapter merged in, saved as safetensors with the tokenizer; the
        merged model must give the logits of base + adapter (max |difference| <= 1e-4 in float32) on up to
        three of the agent's utterances; an agent with none to compare on fails rather than passing
        unchecked."""
        rows = []
        with model_step(context, x.role("generator", llm)) as step:
            serve_adapters(step.engine, lora_adapters)
            for r in lora_adapters.sort("agent").iter_rows(named=True):
                agent = r["agent"]
                samples = list(completion_examples.filter(pl.col("agent") == agent)["target"][:3])
                out_dir = x.artifacts(artifacts).path("merged", agent, r["sha256"][:16])
                fingerprint, differences = step.engine.merge_adapter(
                    agent, out_dir, samples, max_check_tokens=128
                )
                rows.append(
                    merged_row(agent, str(out_dir), fingerprint, merge_difference(agent, differences))
                )
            frame = step.frame(rows, MERGED_SCHEMA)
        partition_metadata(
            context, frame, lambda part: {"max_logit_difference": part["max_logit_difference"].max() or 0.0}
        )
        return frame

    return merged


def perplexity_matrix(x: Experiment) -> AssetsDefinition:
    @asset(
        key=x.key(GROUP, "perplexity_matrix"),
        **_shared(x),
        metadata=table_columns(PERPLEXITY_SCHEMA),
        kinds=MODEL_KINDS | {"matplotlib"},
        **gpu_step(gpus=x.gpus()),
        ins=_adapters_in(x),
    )
    def perplexities(
        context: AssetExecutionContext,
        llm: LLMResource,
        artifacts: ArtifactStore,
        lora_adapters: pl.DataFrame,
        completion_examples: pl.DataFrame,
    ) -> pl.DataFrame:
        """Perplexity of every model (the base, each agent's adapter) on every agent's held-out utterances:
        token-weighted over the held-out agent's tokens only, from the engine's loglikelihood."""
        heldout = completion_examples.filter(pl.col("split") == "test").sort("row_id")
        agents = sorted(heldout["agent"].unique())
        models = [BASE_MODEL_ROW, *sorted(lora_adapters["agent"])]
        with model_step(context, x.role("generator", llm)) as step:
            serve_adapters(step.engine, lora_adapters)
            frame = step.frame(perplexity_rows(step.engine, heldout, models, agents), PERPLEXITY_SCHEMA)
        cell = {(r["model"], r["heldout_agent"]): r["perplexity"] for r in frame.iter_rows(named=True)}
        values = [[cell[(m, a)] for a in agents] for m in models]
        figure = heatmap("Perplexity on held-out utterances", models, agents, values, "perplexity")
        context.add_output_metadata(
            {
                "matrix": results_table(
                    ["model", *agents],
                    [[m, *[round(v, 2) for v in row]] for m, row in zip(models, values, strict=True)],
                ),
                "verdict": perplexity_verdict(models, agents, values),
                "plot/heatmap": saved_plot(x.artifacts(artifacts), figure, "agents", "perplexity"),
            }
        )
        return frame

    return perplexities
