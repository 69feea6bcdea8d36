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
from persona_platform.persona_assets.columns import columns
from persona_platform.persona_assets.provenance import file_ref, row_ref
from persona_platform.resources.inputs.registry import Agent
from persona_platform.resources.inputs.transcripts import Meeting, alias_table, speaker_agent
from persona_platform.resources.llm.engine import LoglikelihoodRequest
from persona_platform.resources.training import LoraTraining, TrainingOutcome

TURNS_TABLE = "agents.board_turns"

_AGENT = ("agent", pl.String, "the agent's key in the registry (its partition key)")
_MEETING_ID = ("meeting_id", pl.String, "the meeting: its transcript's file name without .json")
_TURN = ("turn", pl.Int64, "0-based index of the turn in its meeting's transcript")
_WORDS = ("words", pl.Int64, "words in the turn's text (split on whitespace)")
_SPLIT = ("split", pl.String, "train or test: whole meetings go to one split (seeded)")

TURN_SCHEMA = columns(
    _MEETING_ID,
    _TURN,
    ("speaker", pl.String, "the speaker as written in the transcript, whitespace collapsed"),
    (
        "agent",
        pl.String,
        "the agent the speaker resolves to through the registry's names and aliases; null for none",
    ),
    ("text", pl.String, "what the speaker said, whitespace collapsed"),
    _WORDS,
    _SPLIT,
    ("source_file", pl.String, "path of the meeting's transcript file"),
    ("source_sha256", pl.String, "sha256 of the meeting's transcript file"),
)
CONVERSATION_SCHEMA = columns(
    _AGENT,
    _MEETING_ID,
    (
        "window",
        pl.Int64,
        "0-based index of the window among the meeting's windows that hold a turn of the agent",
    ),
    (
        "messages",
        pl.String,
        "the training chat as JSON [role, content] pairs: the agent's turns as assistant turns, everyone "
        "else's as user turns of 'Speaker: text' lines",
    ),
    ("agent_turns", pl.Int64, "how many of the window's turns are the agent's"),
)
COMPLETION_SCHEMA = columns(
    _AGENT,
    (
        "split",
        pl.String,
        "the meeting's split: test rows are the held-out set; train rows come from meetings trained on",
    ),
    _MEETING_ID,
    ("turn", pl.Int64, "0-based index of the agent's utterance (the target) in the meeting's transcript"),
    (
        "context",
        pl.String,
        "the turns before the utterance (up to 6 by default) as JSON [role, content] pairs, laid out as the "
        "training chats",
    ),
    ("target", pl.String, "the agent's utterance after the context (12 words or more by default)"),
)
MONOLOGUE_SCHEMA = columns(
    _AGENT,
    _MEETING_ID,
    _TURN,
    ("text", pl.String, "the agent's utterance, longer than the monologue threshold (150 words by default)"),
    _WORDS,
)
PERPLEXITY_SCHEMA = columns(
    ("model", pl.String, "the model scored: base (the base model) or the agent whose adapter was applied"),
    ("heldout_agent", pl.String, "the agent whose held-out (test) utterances were scored"),
    ("examples", pl.Int64, "held-out utterances scored"),
    ("tokens", pl.Int64, "the utterances' tokens counted (the context's tokens are not)"),
    ("nll", pl.Float64, "negative log-likelihood of those tokens, in nats, summed"),
    ("perplexity", pl.Float64, "token-weighted perplexity: exp(nll / tokens); NaN without tokens"),
)
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


ADAPTER_SCHEMA = columns(
    _AGENT,
    ("adapter_path", pl.String, "directory of the saved PEFT adapter (adapter_model.safetensors and config)"),
    ("sha256", pl.String, "sha256 over the adapter directory's files (their relative paths and contents)"),
    ("rank", pl.Int64, "LoRA rank r, from the registry"),
    ("alpha", pl.Int64, "LoRA alpha (scaling alpha / r), from the registry"),
    ("dropout", pl.Float64, "LoRA dropout probability, from the registry"),
    ("target_modules", pl.List(pl.String), "the model's modules that get LoRA weights, e.g. q_proj, v_proj"),
    ("steps", pl.Int64, "optimizer steps trained in all (a resumed training counts the steps before it)"),
    ("tokens_trained", pl.Int64, "the agent's tokens the loss counted, over every step"),
    ("seconds", pl.Float64, "wall-clock seconds of this run's training loop (after a resume, since it)"),
    ("tokens_per_second", pl.Float64, "tokens_trained / seconds; null when seconds is 0"),
    ("resumed_from_step", pl.Int64, "the checkpoint's step this run resumed from; null for a fresh training"),
    ("final_loss", pl.Float64, "the loss of the last step; null when no step ran"),
)
LOSS_SCHEMA = columns(
    _AGENT,
    ("step", pl.Int64, "1-based optimizer step"),
    ("epoch", pl.Int64, "0-based epoch of the step"),
    ("loss", pl.Float64, "mean cross-entropy over the batch's counted tokens (the agent's), in nats"),
    ("tokens", pl.Int64, "the batch's counted tokens: the agent's tokens, others masked out"),
)
MERGED_SCHEMA = columns(
    _AGENT,
    ("model_path", pl.String, "directory of the merged model: safetensors weights and the tokenizer"),
    (
        "sha256",
        pl.String,
        "sha256 over the merged model directory's files (their relative paths and contents)",
    ),
    (
        "max_logit_difference",
        pl.Float64,
        "largest absolute logit difference (float32) of the merged model from base + adapter, on up to "
        "three of the agent's utterances; at most 1e-4",
    ),
)


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
