"""Agent twins: board turns, per-agent corpora, LoRA adapters, merged models, perplexity."""

from dataclasses import asdict

import polars as pl
from dagster import AssetExecutionContext, AssetIn, AssetOut, Config, MetadataValue, Output, asset, multi_asset
from pydantic import Field

from partitions import AGENTS, agents_partitions
from persona_assets.agents.corpora import split_meetings
from persona_assets.agents.tables import (
    BASE_MODEL_ROW,
    COMPLETION_SCHEMA,
    CONVERSATION_SCHEMA,
    MONOLOGUE_SCHEMA,
    PERPLEXITY_SCHEMA,
    TURN_SCHEMA,
    completion_rows,
    conversation_rows,
    heldout_requests,
    merge_difference,
    monologue_rows,
    perplexity,
    training_chat,
    turn_rows,
)
from resources.inputs.transcripts import read_meetings
from persona_assets.common import (
    AGENT_PARTITION,
    MODEL_KINDS,
    ONE_RUN_PER_BACKFILL,
    OWNERS,
    TABLE_KINDS,
    WAREHOUSE_POOL,
    engine_metadata,
    gpu_step,
    markdown_table,
)
from persona_assets.deployment import TRAINING_PROFILE
from persona_assets.provenance import Provenance, result_frame, row_ref
from persona_assets.reports.plots import heatmap, inline, loss_curve
from resources.artifacts import ArtifactStore
from resources.llm.resource import LLMResource
from resources.sources import BoardSource
from resources.training import LoraTraining, run_fingerprint

GROUP = "agents"
VERSION = "agents-1"
SHARED = dict(key_prefix=GROUP, group_name=GROUP, owners=OWNERS, code_version=VERSION)
BY_AGENT = dict(partitions_def=agents_partitions, metadata=AGENT_PARTITION, backfill_policy=ONE_RUN_PER_BACKFILL)
AGENTS_BY_KEY = {a.key: a for a in AGENTS}


class BoardConfig(Config):
    test_fraction: float = Field(default=0.25, description="Share of meetings held out (whole meetings).")
    seed: int = Field(default=7, description="Seeds the meeting split.")


class CorpusConfig(Config):
    conversation_words: int = Field(default=300, description="Longest training conversation window, in words.")
    context_turns: int = Field(default=6, description="Turns before an utterance given as its context.")
    min_completion_words: int = Field(default=12, description="Shortest utterance used as a completion target.")
    monologue_words: int = Field(default=150, description="A monologue is an utterance longer than this.")


class TrainingConfig(Config):
    learning_rate: float = Field(default=2e-5, description="Upstream default; the embedded model needs far more.")
    epochs: int = Field(default=2)
    batch_size: int = Field(default=4)
    max_length: int = Field(default=2048, description="Tokens per example; longer ones are truncated.")
    checkpoint_every: int = Field(default=50, description="Save a checkpoint every N steps (and every epoch).")
    seed: int = Field(default=0)
    quantization: str = Field(default="none", description="none, or 4bit (QLoRA: a CUDA GPU with bitsandbytes).")


def _provenance(context, engine=None, adapter=None) -> Provenance:
    return Provenance(context.run.run_id, VERSION, model_id=engine.model_id if engine else None, adapter=adapter)


@asset(**SHARED, kinds=TABLE_KINDS, pool=WAREHOUSE_POOL)
def board_turns(context: AssetExecutionContext, config: BoardConfig, board: BoardSource) -> pl.DataFrame:
    """Every turn of every meeting transcript, its speaker resolved to an agent (or none), and the
    meeting's train/test split: whole meetings, so no meeting feeds both."""
    meetings = read_meetings(board.transcripts_dir())
    splits = split_meetings([m.meeting_id for m in meetings], config.test_fraction, config.seed)
    frame = result_frame(turn_rows(meetings, AGENTS, splits), TURN_SCHEMA, _provenance(context))
    per_split = frame.group_by("split").agg(pl.col("meeting_id").unique())
    meetings_by_split = {s: set(ids) for s, ids in per_split.iter_rows()}
    assert not meetings_by_split.get("train", set()) & meetings_by_split.get("test", set())
    per_agent = frame.group_by("agent", "split").agg(pl.len(), pl.col("words").sum()).sort("agent", "split")
    context.add_output_metadata({
        "meetings": MetadataValue.json({s: sorted(ids) for s, ids in meetings_by_split.items()}),
        "unresolved_speakers": sorted(set(frame.filter(pl.col("agent").is_null())["speaker"])),
        "turns_per_agent": markdown_table(["agent", "split", "turns", "words"], per_agent.rows()),
    })
    return frame


TURNS_IN = {"board_turns": AssetIn(key=[GROUP, "board_turns"])}


@asset(**SHARED, **BY_AGENT, kinds=TABLE_KINDS, pool=WAREHOUSE_POOL, ins=TURNS_IN)
def training_conversations(context: AssetExecutionContext, config: CorpusConfig, board_turns: pl.DataFrame) -> pl.DataFrame:
    """Training chats from train meetings: the agent's turns as assistant turns, everyone else's as user turns."""
    rows = conversation_rows(board_turns, context.partition_keys, config.conversation_words)
    return result_frame(rows, CONVERSATION_SCHEMA, _provenance(context))


@asset(**SHARED, **BY_AGENT, kinds=TABLE_KINDS, pool=WAREHOUSE_POOL, ins=TURNS_IN)
def completion_examples(context: AssetExecutionContext, config: CorpusConfig, board_turns: pl.DataFrame) -> pl.DataFrame:
    """Each utterance of the agent with the turns before it, from train and test meetings (the held-out sets)."""
    rows = completion_rows(board_turns, context.partition_keys, config.context_turns, config.min_completion_words)
    return result_frame(rows, COMPLETION_SCHEMA, _provenance(context))


@asset(**SHARED, **BY_AGENT, kinds=TABLE_KINDS, pool=WAREHOUSE_POOL, ins=TURNS_IN)
def monologues(context: AssetExecutionContext, config: CorpusConfig, board_turns: pl.DataFrame) -> pl.DataFrame:
    """The agent's utterances longer than the monologue threshold (150 words by default)."""
    return result_frame(monologue_rows(board_turns, context.partition_keys, config.monologue_words), MONOLOGUE_SCHEMA,
                        _provenance(context))


ADAPTER_SCHEMA = {"agent": pl.String, "adapter_path": pl.String, "sha256": pl.String, "rank": pl.Int64, "alpha": pl.Int64,
                  "dropout": pl.Float64, "target_modules": pl.List(pl.String), "steps": pl.Int64,
                  "tokens_trained": pl.Int64, "seconds": pl.Float64, "tokens_per_second": pl.Float64,
                  "resumed_from_step": pl.Int64, "final_loss": pl.Float64}
LOSS_SCHEMA = {"agent": pl.String, "step": pl.Int64, "epoch": pl.Int64, "loss": pl.Float64, "tokens": pl.Int64}


@multi_asset(
    outs={
        "lora_adapters": AssetOut(key=[GROUP, "lora_adapters"], metadata=AGENT_PARTITION, owners=OWNERS, kinds=MODEL_KINDS,
                                  code_version=VERSION, description="A LoRA adapter per agent (PEFT + Accelerate, loss on the agent's tokens only): path, sha256, hyperparameters."),
        "training_loss": AssetOut(key=[GROUP, "training_loss"], metadata=AGENT_PARTITION, owners=OWNERS, kinds=MODEL_KINDS,
                                  code_version=VERSION, description="Training loss per step and agent, with the loss curve plot."),
    },
    group_name=GROUP,
    **gpu_step(TRAINING_PROFILE),
    partitions_def=agents_partitions,
    backfill_policy=ONE_RUN_PER_BACKFILL,
    ins={"training_conversations": AssetIn(key=[GROUP, "training_conversations"])},
)
def lora_training(
    context: AssetExecutionContext, config: TrainingConfig, llm: LLMResource, artifacts: ArtifactStore,
    training_conversations: pl.DataFrame,
):
    """Train each agent's adapter on its conversations; resumes from its last checkpoint after a crash."""
    adapter_rows, loss_rows, plots = [], [], []
    with llm.metered() as (engine, meter):
        for agent in context.partition_keys:
            lora = AGENTS_BY_KEY[agent].lora
            settings = LoraTraining(rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout,
                                    target_modules=lora.target_modules, learning_rate=config.learning_rate,
                                    epochs=config.epochs, batch_size=config.batch_size, max_length=config.max_length,
                                    checkpoint_every=config.checkpoint_every, seed=config.seed,
                                    quantization=config.quantization)
            conversations = training_conversations.filter(pl.col("agent") == agent).sort("row_id")
            examples = engine.training_examples([training_chat(r) for r in conversations["messages"]])
            run = run_fingerprint(settings, examples, engine.model_id)
            outcome = engine.train_adapter(
                agent, examples, settings,
                checkpoint_path=artifacts.path("checkpoints", "lora", agent, f"{run}.pt"),
                adapter_dir=artifacts.path("adapters", agent, run),
                log=context.log.info,
            )
            adapter_rows.append({
                "row_id": agent, "agent": agent, "adapter": agent, "adapter_path": str(outcome.adapter_dir), "sha256": outcome.fingerprint,
                **{k: v for k, v in asdict(settings).items() if k in ("rank", "alpha", "dropout")},
                "target_modules": list(settings.target_modules), "steps": outcome.steps,
                "tokens_trained": outcome.tokens_trained, "seconds": outcome.seconds,
                "tokens_per_second": outcome.tokens_trained / outcome.seconds if outcome.seconds else None,
                "resumed_from_step": outcome.resumed_from_step,
                "final_loss": outcome.losses[-1]["loss"] if outcome.losses else None,
                "partition_key": agent, "input_ids": [row_ref("agents.training_conversations", i) for i in conversations["row_id"]],
            })
            for point in outcome.losses:
                loss_rows.append({"row_id": f"{agent}/{point['step']}", "agent": agent, **point, "partition_key": agent,
                                  "input_ids": [row_ref("agents.lora_adapters", agent)]})
            png = loss_curve(f"LoRA training - {agent}", [p["step"] for p in outcome.losses], [p["loss"] for p in outcome.losses])
            path, sha = artifacts.write(png, "plots", "training", f"{agent}.png")
            plots.append(f"**{agent}** `{path}` sha256 {sha[:12]}\n\n{inline(png, agent)}")
    provenance = _provenance(context, engine)
    adapters = result_frame(adapter_rows, ADAPTER_SCHEMA, provenance)
    usage = engine_metadata(meter, engine.model_id)
    yield Output(adapters, "lora_adapters", metadata={**usage, "adapters": markdown_table(
        ["agent", "steps", "tokens", "tokens/s", "resumed from", "final loss"],
        [[r["agent"], r["steps"], r["tokens_trained"], f"{r['tokens_per_second'] or 0:.0f}", r["resumed_from_step"],
          f"{r['final_loss']:.3f}"] for r in adapter_rows])})
    yield Output(result_frame(loss_rows, LOSS_SCHEMA, provenance), "training_loss",
                 metadata={**usage, "loss_curves": MetadataValue.md("\n\n".join(plots))})


def ensure_adapters(engine, adapters: pl.DataFrame) -> None:
    for r in adapters.iter_rows(named=True):
        engine.add_adapter(r["agent"], r["adapter_path"], r["sha256"])


MERGED_SCHEMA = {"agent": pl.String, "model_path": pl.String, "sha256": pl.String, "max_logit_difference": pl.Float64}


@asset(**SHARED, **BY_AGENT, kinds=MODEL_KINDS | {"safetensors"}, **gpu_step(),
       ins={"lora_adapters": AssetIn(key=[GROUP, "lora_adapters"]), "completion_examples": AssetIn(key=[GROUP, "completion_examples"])})
def merged_models(
    context: AssetExecutionContext, llm: LLMResource, artifacts: ArtifactStore,
    lora_adapters: pl.DataFrame, completion_examples: pl.DataFrame,
) -> pl.DataFrame:
    """Base weights with the agent's adapter merged in, saved as safetensors with the tokenizer; the
    merged model must give the logits of base + adapter (max |difference| <= 1e-4 in float32) on up to three of
    the agent's utterances; an agent with none to compare on fails rather than passing unchecked."""
    rows = []
    with llm.metered() as (engine, meter):
        ensure_adapters(engine, lora_adapters)
        for r in lora_adapters.sort("agent").iter_rows(named=True):
            agent = r["agent"]
            samples = list(completion_examples.filter(pl.col("agent") == agent)["target"][:3])
            out_dir = artifacts.path("merged", agent, r["sha256"][:16])
            fingerprint, differences = engine.merge_adapter(agent, out_dir, samples, max_check_tokens=128)
            difference = merge_difference(agent, differences)
            rows.append({"row_id": agent, "agent": agent, "adapter": agent, "model_path": str(out_dir), "sha256": fingerprint,
                         "max_logit_difference": difference, "partition_key": agent,
                         "input_ids": [row_ref("agents.lora_adapters", agent)]})
    context.add_output_metadata({**engine_metadata(meter, engine.model_id),
                                 "max_logit_difference": max((r["max_logit_difference"] for r in rows), default=0.0)})
    return result_frame(rows, MERGED_SCHEMA, _provenance(context, engine))


@asset(**SHARED, kinds=MODEL_KINDS | {"matplotlib"}, **gpu_step(),
       ins={"lora_adapters": AssetIn(key=[GROUP, "lora_adapters"]), "completion_examples": AssetIn(key=[GROUP, "completion_examples"])})
def perplexity_matrix(
    context: AssetExecutionContext, llm: LLMResource, artifacts: ArtifactStore,
    lora_adapters: pl.DataFrame, completion_examples: pl.DataFrame,
) -> pl.DataFrame:
    """Perplexity of every model (the base, each agent's adapter) on every agent's held-out utterances:
    token-weighted over the held-out agent's tokens only, from the engine's loglikelihood."""
    heldout = completion_examples.filter(pl.col("split") == "test").sort("row_id")
    agents = sorted(heldout["agent"].unique())
    models = [BASE_MODEL_ROW, *sorted(lora_adapters["agent"])]
    rows = []
    with llm.metered() as (engine, meter):
        ensure_adapters(engine, lora_adapters)
        for model in models:
            adapter = None if model == BASE_MODEL_ROW else model
            for agent in agents:
                examples = heldout.filter(pl.col("agent") == agent)
                results = engine.loglikelihood(heldout_requests(examples, adapter))
                nll = -sum(r.total for r in results)
                tokens = sum(r.n_counted for r in results)
                rows.append({"row_id": f"{model}/{agent}", "model": model, "adapter": adapter, "heldout_agent": agent, "examples": examples.height,
                             "tokens": tokens, "nll": nll, "perplexity": perplexity(nll, tokens), "partition_key": None,
                             "input_ids": [row_ref("agents.completion_examples", i) for i in examples["row_id"]]
                             + ([row_ref("agents.lora_adapters", model)] if adapter else [])})
    frame = result_frame(rows, PERPLEXITY_SCHEMA, _provenance(context, engine))
    values = [[next(r["perplexity"] for r in rows if r["model"] == m and r["heldout_agent"] == a) for a in agents] for m in models]
    png = heatmap("Perplexity on held-out utterances", models, agents, values, "perplexity")
    path, sha = artifacts.write(png, "plots", "agents", "perplexity.png")
    context.add_output_metadata({
        **engine_metadata(meter, engine.model_id),
        "matrix": markdown_table(["model", *agents], [[m, *[f"{v:.2f}" for v in row]] for m, row in zip(models, values, strict=True)]),
        "heatmap": MetadataValue.md(f"`{path}` sha256 {sha[:12]}\n\n{inline(png, 'perplexity')}"),
    })
    return frame
