"""Vote prompts, the strict final-answer parser, and classification metrics (no Dagster here)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from persona_assets.agents.corpora import adapter_prompt
from persona_assets.provenance import text_hash
from persona_assets.votes.records import AYE, NAYE
from resources.llm.engine import ChatPrompt

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


def vote_messages(display_name: str, question: str) -> tuple[tuple[str, str], ...]:
    return (("user", VOTE_TEMPLATE.format(name=display_name, question=question)),)


def vote_prompt(display_name: str, question: str) -> ChatPrompt:
    """The chat an agent's adapter votes on: one user turn, laid out as its training chats (no system turn)."""
    return adapter_prompt(vote_messages(display_name, question))


def parse_final_vote(text: str) -> str:
    """The last explicit 'Final Vote: Aye|Naye' wins; anything else is Unknown, never guessed."""
    matches = FINAL_VOTE.findall(text or "")
    return {"aye": AYE, "naye": NAYE}[matches[-1].lower()] if matches else UNKNOWN


@dataclass(frozen=True)
class VoteMetrics:
    n: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    unknown_rate: float
    majority_baseline: float
    majority_class: str


def vote_metrics(truth: Sequence[str], predicted: Sequence[str]) -> VoteMetrics:
    """Unknown predictions count as wrong; balanced accuracy and macro-F1 average over Aye and Naye."""
    n = len(truth)
    if n == 0:
        return VoteMetrics(0, float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), "")
    pairs = list(zip(truth, predicted, strict=True))
    recalls, f1s = [], []
    for label in LABELS:
        positives = sum(t == label for t in truth)
        predicted_as = sum(p == label for p in predicted)
        hits = sum(t == p == label for t, p in pairs)
        recall = hits / positives if positives else None
        precision = hits / predicted_as if predicted_as else 0.0
        if recall is not None:
            recalls.append(recall)
            f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    majority = max(LABELS, key=lambda label: sum(t == label for t in truth))
    return VoteMetrics(
        n=n,
        accuracy=sum(t == p for t, p in pairs) / n,
        balanced_accuracy=sum(recalls) / len(recalls),
        macro_f1=sum(f1s) / len(f1s),
        unknown_rate=sum(p == UNKNOWN for p in predicted) / n,
        majority_baseline=sum(t == majority for t in truth) / n,
        majority_class=majority,
    )
