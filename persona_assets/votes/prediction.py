"""Vote prompts, the strict final-answer parser, and classification metrics (no Dagster here)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from persona_platform.persona_assets.agents.corpora import adapter_prompt
from persona_platform.persona_assets.columns import columns
from persona_platform.persona_assets.provenance import row_ref, text_hash
from persona_platform.persona_assets.statistics import (
    SEED,
    cluster_bootstrap,
    cluster_totals,
    interval_method,
)
from persona_platform.resources.inputs.votes import AYE, NAYE
from persona_platform.resources.llm.engine import ChatPrompt

UNKNOWN = "Unknown"
LABELS = (AYE, NAYE)
FINAL_VOTE = re.compile(r"final\s+vote\s*:\s*\**\s*(aye|naye)\b", re.I)

VOTE_TEMPLATE = (
    "You are {name}, a member of the school board. The board is voting on this motion:\n\n"
    "{question}\n\n"
    "Think about it as {name} would, then end with exactly one line: "
    "'Final Vote: Aye' or 'Final Vote: Naye'."
)
VOTE_HASH = text_hash(VOTE_TEMPLATE)
ANSWER_PREFIX = "Final Vote:"
SCORE_CANDIDATES = (f"{ANSWER_PREFIX} {AYE}", f"{ANSWER_PREFIX} {NAYE}")

OVERALL = "overall"  # the scope of every agent's votes together


def vote_messages(display_name: str, question: str) -> tuple[tuple[str, str], ...]:
    return (("user", VOTE_TEMPLATE.format(name=display_name, question=question)),)


def vote_prompt(display_name: str, question: str) -> ChatPrompt:
    """The chat an agent's adapter votes on: one user turn, laid out as its training chats
    (no system turn)."""
    return adapter_prompt(vote_messages(display_name, question))


def parse_final_vote(text: str) -> str:
    """The last explicit 'Final Vote: Aye|Naye' wins; anything else is Unknown, never guessed."""
    matches = FINAL_VOTE.findall(text or "")
    return {"aye": AYE, "naye": NAYE}[matches[-1].lower()] if matches else UNKNOWN


PREDICTED = (*LABELS, UNKNOWN)


def confusion_rows(truth: Sequence[str], predicted: Sequence[str]) -> np.ndarray:
    """One row per vote: a one-hot cell of the (recorded label x predicted label or Unknown) confusion matrix,
    flattened, so that summing rows over any set of votes gives that set's confusion matrix."""
    cells = np.zeros((len(truth), len(LABELS) * len(PREDICTED)))
    for row, (t, p) in enumerate(zip(truth, predicted, strict=True)):
        cells[row, LABELS.index(t) * len(PREDICTED) + PREDICTED.index(p)] = 1.0
    return cells


# The metrics below map confusion counts (..., cells) to values (...): the bootstrap evaluates many
# resamples at once.


def _matrix(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=float)
    return counts.reshape(*counts.shape[:-1], len(LABELS), len(PREDICTED))


def accuracy(counts: np.ndarray) -> np.ndarray:
    matrix = _matrix(counts)
    return np.einsum("...ii->...", matrix[..., : len(LABELS)]) / matrix.sum(axis=(-2, -1))


def _per_label(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(recorded votes, predictions, hits) per label; Unknown is never a hit."""
    matrix = _matrix(counts)
    return (
        matrix.sum(axis=-1),
        matrix[..., : len(LABELS)].sum(axis=-2),
        np.einsum("...ii->...i", matrix[..., : len(LABELS)]),
    )


def _mean_over_recorded(values: np.ndarray, recorded: np.ndarray) -> np.ndarray:
    """A label nobody voted has no recall: balanced accuracy and macro-F1 average
    over the labels that occur."""
    present = recorded > 0
    return np.where(present, values, 0.0).sum(axis=-1) / present.sum(axis=-1)


def balanced_accuracy(counts: np.ndarray) -> np.ndarray:
    recorded, _, hits = _per_label(counts)
    return _mean_over_recorded(
        np.divide(hits, recorded, out=np.zeros_like(hits), where=recorded > 0), recorded
    )


def macro_f1(counts: np.ndarray) -> np.ndarray:
    recorded, predictions, hits = _per_label(counts)
    # F1 = 2 hits / (recorded + predictions); recorded > 0 wherever it is averaged,
    # so the division is defined there
    total = recorded + predictions
    return _mean_over_recorded(np.divide(2 * hits, total, out=np.zeros_like(hits), where=total > 0), recorded)


def label_share(label: str):
    """The accuracy of always predicting ``label``: its share of the recorded votes."""

    def share(counts: np.ndarray) -> np.ndarray:
        recorded, _, _ = _per_label(counts)
        return recorded[..., LABELS.index(label)] / recorded.sum(axis=-1)

    return share


@dataclass(frozen=True)
class VoteMetrics:
    n: int  # votes (motion x voter rows)
    motions: int  # the resampling unit of the intervals
    accuracy: float | None
    accuracy_low: float | None
    accuracy_high: float | None
    balanced_accuracy: float | None
    balanced_accuracy_low: float | None
    balanced_accuracy_high: float | None
    macro_f1: float | None
    macro_f1_low: float | None
    macro_f1_high: float | None
    unknown_rate: float | None
    majority_baseline: float | None
    majority_baseline_low: float | None
    majority_baseline_high: float | None
    majority_class: str


def vote_metrics(
    truth: Sequence[str], predicted: Sequence[str], motions: Sequence[str], seed: int = SEED
) -> VoteMetrics:
    """Unknown predictions count as wrong; balanced accuracy and macro-F1 average over Aye and Naye.
    The majority baseline always predicts the class most often recorded here (ties: Aye); its accuracy
    is that class's share.

    95% intervals from a cluster bootstrap over motions (persona_assets.statistics): the members voting on
    one motion read the same motion and often vote together, so in a scope with several voters per motion
    its votes are not independent; where each motion has one voter (a single agent) this is a bootstrap
    over votes. The baseline is resampled the same way with its class fixed, so the two intervals are
    comparable side by side."""
    counts = cluster_totals(motions, confusion_rows(truth, predicted))
    recorded = counts.sum(axis=0).reshape(len(LABELS), len(PREDICTED)).sum(axis=1)
    majority = LABELS[
        int(np.argmax(recorded))
    ]  # argmax takes the first of equal counts, as max() over LABELS did
    metrics = {
        name: cluster_bootstrap(counts, statistic, seed)
        for name, statistic in (
            ("accuracy", accuracy),
            ("balanced_accuracy", balanced_accuracy),
            ("macro_f1", macro_f1),
            ("majority_baseline", label_share(majority)),
        )
    }
    intervals = {
        f"{name}{suffix}": getattr(interval, field)
        for name, interval in metrics.items()
        for suffix, field in (("", "estimate"), ("_low", "low"), ("_high", "high"))
    }
    n = len(truth)
    return VoteMetrics(
        n=n,
        motions=len(counts),
        unknown_rate=sum(p == UNKNOWN for p in predicted) / n if n else None,
        majority_class=majority if n else "",
        **intervals,
    )


_UNDEFINED = "null where undefined (under 2 motions, or every motion alike)"


def _metric(name: str, what: str) -> list[tuple]:
    """A metric's column and the bounds of its 95% BCa cluster-bootstrap interval over motions."""
    return [
        (name, pl.Float64, what),
        (f"{name}_low", pl.Float64, f"lower bound of the 95% BCa bootstrap interval of {name}; {_UNDEFINED}"),
        (
            f"{name}_high",
            pl.Float64,
            f"upper bound of the 95% BCa bootstrap interval of {name}; {_UNDEFINED}",
        ),
    ]


METRIC_SCHEMA = columns(
    ("method", pl.String, "how the adapter voted: score or generate"),
    ("scope", pl.String, "an agent, or overall (every agent's votes together)"),
    ("n", pl.Int64, "votes predicted (motion x voter rows)"),
    ("motions", pl.Int64, "distinct motions voted on (the intervals' resampling unit)"),
    *_metric("accuracy", "share of votes predicted right (Unknown counts as wrong)"),
    *_metric("balanced_accuracy", "mean recall over the recorded labels (Aye, Naye) that occur"),
    *_metric("macro_f1", "mean F1 over the recorded labels (Aye, Naye) that occur"),
    ("unknown_rate", pl.Float64, "share of predictions that are Unknown; null without votes"),
    *_metric(
        "majority_baseline", "accuracy of always predicting majority_class: its share of the recorded votes"
    ),
    (
        "majority_class",
        pl.String,
        "the vote most often recorded in the scope (ties: Aye); empty without votes",
    ),
    ("interval_method", pl.String, "how the intervals were computed: method, unit, resamples and seed"),
)


def metric_rows(predictions: pl.DataFrame, seed: int = SEED) -> list[dict]:
    """Rows of the vote metrics summary: per method, each agent and ``overall``
    (every agent's votes together)."""
    rows = []
    for method in sorted(predictions["method"].unique()):
        part = predictions.filter(pl.col("method") == method)
        scopes = [(a, part.filter(pl.col("agent") == a)) for a in sorted(part["agent"].unique())] + [
            (OVERALL, part)
        ]
        for scope, data in scopes:
            metrics = vote_metrics(
                data["truth"].to_list(), data["predicted"].to_list(), data["motion_id"].to_list(), seed
            )
            rows.append(
                {
                    "row_id": f"{method}/{scope}",
                    "method": method,
                    "scope": scope,
                    **vars(metrics),
                    "interval_method": interval_method("motions", seed),
                    "partition_key": None,
                    "input_ids": [row_ref("votes.vote_predictions", i) for i in data["row_id"]],
                }
            )
    return rows


def formal_question(context: str) -> str:
    """The yes/no question a member answers: 'Should the board approve ...?'."""
    body = context.rstrip(" .?")
    return f"Should the board {body[0].lower()}{body[1:]}?"
