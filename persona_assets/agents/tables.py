"""Rows of the agents tables (no Dagster here)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import polars as pl

from persona_platform.persona_assets.agents.corpora import (
    SpeakerTurn,
    adapter_prompt,
    as_messages,
    completions,
    conversation_windows,
    monologues,
)
from persona_platform.persona_assets.provenance import file_ref, row_ref
from persona_platform.resources.inputs.registry import Agent
from persona_platform.resources.inputs.transcripts import Meeting, alias_table, speaker_agent
from persona_platform.resources.llm.engine import LoglikelihoodRequest
from persona_platform.resources.training import LoraTraining, TrainingOutcome

TURNS_TABLE = "agents.board_turns"

TURN_SCHEMA = {
    "meeting_id": pl.String,
    "turn": pl.Int64,
    "speaker": pl.String,
    "agent": pl.String,
    "text": pl.String,
    "words": pl.Int64,
    "split": pl.String,
    "source_file": pl.String,
    "source_sha256": pl.String,
}
CONVERSATION_SCHEMA = {
    "agent": pl.String,
    "meeting_id": pl.String,
    "window": pl.Int64,
    "messages": pl.String,
    "agent_turns": pl.Int64,
}
COMPLETION_SCHEMA = {
    "agent": pl.String,
    "split": pl.String,
    "meeting_id": pl.String,
    "turn": pl.Int64,
    "context": pl.String,
    "target": pl.String,
}
MONOLOGUE_SCHEMA = {
    "agent": pl.String,
    "meeting_id": pl.String,
    "turn": pl.Int64,
    "text": pl.String,
    "words": pl.Int64,
}
PERPLEXITY_SCHEMA = {
    "model": pl.String,
    "heldout_agent": pl.String,
    "examples": pl.Int64,
    "tokens": pl.Int64,
    "nll": pl.Float64,
    "perplexity": pl.Float64,
}
BASE_MODEL_ROW = "base"
# Largest |logit difference| allowed between the merged model and base + adapter (float32).
MERGE_TOLERANCE = 1e-4


def turn_rows(meetings: Sequence[Meeting], agents: Sequence[Agent], splits: dict[str, str]) -> list[dict]:
    aliases = alias_table(agents)
    rows = []
    for meeting in meetings:
        for turn in meeting.turns:
            rows.append(
                {
                    "row_id": f"{meeting.meeting_id}/{turn.index}",
                    "meeting_id": meeting.meeting_id,
                    "turn": turn.index,
                    "speaker": turn.speaker,
                    "agent": speaker_agent(turn.speaker, aliases),
                    "text": turn.text,
                    "words": len(turn.text.split()),
                    "split": splits[meeting.meeting_id],
                    "source_file": str(meeting.path),
                    "source_sha256": meeting.sha256,
                    "partition_key": None,
                    "input_ids": [file_ref(meeting.sha256, turn.index + 1)],
                }
            )
    return rows


def speaker_turns(turns: pl.DataFrame, split: str | None = None) -> dict[str, list[SpeakerTurn]]:
    """Turns per meeting, in order, optionally of one split only."""
    frame = turns if split is None else turns.filter(pl.col("split") == split)
    out: dict[str, list[SpeakerTurn]] = {}
    for r in frame.sort("meeting_id", "turn").iter_rows(named=True):
        out.setdefault(r["meeting_id"], []).append(
            SpeakerTurn(r["meeting_id"], r["turn"], r["speaker"], r["agent"], r["text"])
        )
    return out


def _refs(turns: Sequence[SpeakerTurn]) -> list[str]:
    return [row_ref(TURNS_TABLE, f"{t.meeting_id}/{t.index}") for t in turns]


def conversation_rows(turns: pl.DataFrame, agents: Sequence[str], max_words: int) -> list[dict]:
    rows = []
    for agent in agents:
        for meeting_id, meeting in speaker_turns(turns, "train").items():
            for window_index, window in enumerate(conversation_windows(meeting, agent, max_words)):
                rows.append(
                    {
                        "row_id": f"{agent}/{meeting_id}/{window_index}",
                        "agent": agent,
                        "meeting_id": meeting_id,
                        "window": window_index,
                        "messages": json.dumps(as_messages(window, agent)),
                        "agent_turns": sum(t.agent == agent for t in window),
                        "partition_key": agent,
                        "input_ids": _refs(window),
                    }
                )
    return rows


def completion_rows(
    turns: pl.DataFrame, agents: Sequence[str], context_turns: int, min_words: int
) -> list[dict]:
    split_of = dict(zip(turns["meeting_id"], turns["split"], strict=True))
    rows = []
    for agent in agents:
        for meeting_id, meeting in speaker_turns(turns).items():
            for c in completions(meeting, agent, context_turns, min_words):
                rows.append(
                    {
                        "row_id": f"{agent}/{meeting_id}/{c.target.index}",
                        "agent": agent,
                        "split": split_of[meeting_id],
                        "meeting_id": meeting_id,
                        "turn": c.target.index,
                        "context": json.dumps(as_messages(c.context, agent)),
                        "target": c.target.text,
                        "partition_key": agent,
                        "input_ids": _refs([*c.context, c.target]),
                    }
                )
    return rows


def monologue_rows(turns: pl.DataFrame, agents: Sequence[str], min_words: int) -> list[dict]:
    rows = []
    for agent in agents:
        for meeting_id, meeting in speaker_turns(turns).items():
            for t in monologues(meeting, agent, min_words):
                rows.append(
                    {
                        "row_id": f"{agent}/{meeting_id}/{t.index}",
                        "agent": agent,
                        "meeting_id": meeting_id,
                        "turn": t.index,
                        "text": t.text,
                        "words": len(t.text.split()),
                        "partition_key": agent,
                        "input_ids": _refs([t]),
                    }
                )
    return rows


def perplexity(nll: float, tokens: int) -> float:
    """Token-weighted: exp(total negative log-likelihood / total counted tokens)."""
    return math.exp(nll / tokens) if tokens else float("nan")


def training_chat(messages_json: str) -> list[tuple[str, str]]:
    """A training conversation row's messages as (role, content) pairs; the engine lays them out as token ids
    and the loss mask (the agent's, i.e. assistant, turns) by the model's own template
    (``Engine.training_examples``)."""
    return [(role, content) for role, content in json.loads(messages_json)]


def heldout_requests(examples: pl.DataFrame, adapter: str | None) -> list[LoglikelihoodRequest]:
    """Each held-out utterance after its context, the context laid out as the adapter's training chats; only
    the utterance counts. The base model gets the same layout, so the perplexities compare."""
    return [
        LoglikelihoodRequest(((adapter_prompt(json.loads(context)), False), (target, True)), adapter=adapter)
        for context, target in zip(examples["context"], examples["target"], strict=True)
    ]


def merge_difference(agent: str, differences: Sequence[float], tolerance: float = MERGE_TOLERANCE) -> float:
    """The largest logit difference of the merge check, or an error when the check does not hold.

    A check that compared no sample proves nothing, so it fails; so does a difference
    that is not a number (NaN compares false with the tolerance and would pass)."""
    if not differences:
        raise RuntimeError(
            f"{agent}: the merge check compared no sample (the agent has no completion example to "
            "compare the merged model with base + adapter on)"
        )
    worst = max(differences)
    if not all(math.isfinite(d) for d in differences) or worst > tolerance:
        bad = next((d for d in differences if not math.isfinite(d)), worst)
        raise RuntimeError(f"{agent}: merged model differs from base + adapter by {bad:.2e} (> {tolerance})")
    return worst


def perplexity_rows(
    engine, heldout: pl.DataFrame, models: Sequence[str], agents: Sequence[str]
) -> list[dict]:
    """Every model (the base, or an agent's adapter) on every agent's held-out utterances: the negative
    log-likelihood of the agent's tokens, their count and the token-weighted perplexity."""
    rows = []
    for model in models:
        adapter = None if model == BASE_MODEL_ROW else model
        for agent in agents:
            examples = heldout.filter(pl.col("agent") == agent)
            results = engine.loglikelihood(heldout_requests(examples, adapter))
            nll = -sum(r.total for r in results)
            tokens = sum(r.n_counted for r in results)
            rows.append(
                {
                    "row_id": f"{model}/{agent}",
                    "model": model,
                    "adapter": adapter,
                    "heldout_agent": agent,
                    "examples": examples.height,
                    "tokens": tokens,
                    "nll": nll,
                    "perplexity": perplexity(nll, tokens),
                    "input_ids": [row_ref("agents.completion_examples", i) for i in examples["row_id"]]
                    + ([row_ref("agents.lora_adapters", model)] if adapter else []),
                }
            )
    return rows


ADAPTER_SCHEMA = {
    "agent": pl.String,
    "adapter_path": pl.String,
    "sha256": pl.String,
    "rank": pl.Int64,
    "alpha": pl.Int64,
    "dropout": pl.Float64,
    "target_modules": pl.List(pl.String),
    "steps": pl.Int64,
    "tokens_trained": pl.Int64,
    "seconds": pl.Float64,
    "tokens_per_second": pl.Float64,
    "resumed_from_step": pl.Int64,
    "final_loss": pl.Float64,
}
LOSS_SCHEMA = {
    "agent": pl.String,
    "step": pl.Int64,
    "epoch": pl.Int64,
    "loss": pl.Float64,
    "tokens": pl.Int64,
}
MERGED_SCHEMA = {
    "agent": pl.String,
    "model_path": pl.String,
    "sha256": pl.String,
    "max_logit_difference": pl.Float64,
}


def adapter_row(
    agent: str, outcome: TrainingOutcome, settings: LoraTraining, conversation_ids: Sequence[str]
) -> dict:
    return {
        "row_id": agent,
        "agent": agent,
        "adapter": agent,
        "adapter_path": str(outcome.adapter_dir),
        "sha256": outcome.fingerprint,
        "rank": settings.rank,
        "alpha": settings.alpha,
        "dropout": settings.dropout,
        "target_modules": list(settings.target_modules),
        "steps": outcome.steps,
        "tokens_trained": outcome.tokens_trained,
        "seconds": outcome.seconds,
        "tokens_per_second": outcome.tokens_trained / outcome.seconds if outcome.seconds else None,
        "resumed_from_step": outcome.resumed_from_step,
        "final_loss": outcome.losses[-1]["loss"] if outcome.losses else None,
        "input_ids": [row_ref("agents.training_conversations", i) for i in conversation_ids],
    }


def adapter_table(adapters: Sequence[dict]) -> tuple[list[str], list[list]]:
    """Header and rows of the adapters' training summary (one row per adapter row)."""
    header = ["agent", "steps", "tokens", "tokens/s", "resumed from", "final loss"]
    rows = [
        [
            r["agent"],
            r["steps"],
            r["tokens_trained"],
            round(r["tokens_per_second"] or 0),
            r["resumed_from_step"],
            round(r["final_loss"], 3),
        ]
        for r in adapters
    ]
    return header, rows


def loss_rows(agent: str, outcome: TrainingOutcome) -> list[dict]:
    return [
        {
            "row_id": f"{agent}/{point['step']}",
            "agent": agent,
            **point,
            "input_ids": [row_ref("agents.lora_adapters", agent)],
        }
        for point in outcome.losses
    ]


def merged_row(agent: str, out_dir: str, fingerprint: str, difference: float) -> dict:
    return {
        "row_id": agent,
        "agent": agent,
        "adapter": agent,
        "model_path": out_dir,
        "sha256": fingerprint,
        "max_logit_difference": difference,
        "input_ids": [row_ref("agents.lora_adapters", agent)],
    }
