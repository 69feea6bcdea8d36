"""Pairwise outcomes and win rates (no Dagster here).

Every pair (agent sample i vs baseline sample i) is judged twice, once with the
agent as A and once with the baseline as A. An order-consistent outcome needs
both orders to name the same system (or both a tie); otherwise it is
``inconsistent``. A failed parse in either order makes the pair ``failed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from persona_platform.persona_assets.responses.tasks import AGENT, BASELINE
from persona_platform.persona_assets.statistics import SEED, ratio_interval

TIE, INCONSISTENT, FAILED = "tie", "inconsistent", "failed"
AGENT_FIRST, BASELINE_FIRST = "agent_first", "baseline_first"
ORDERS = (AGENT_FIRST, BASELINE_FIRST)


def flatten(messages: Sequence[Sequence[str]], speaker: str) -> str:
    """A chat as the judge reads it: user turns already name their speakers;
    assistant turns are the speaker's."""
    return "\n".join(
        content if role == "user" else f"{speaker}: {content}"
        for role, content in messages
        if role != "system"
    )


def ordered(order: str, agent_text: str, baseline_text: str) -> tuple[str, str]:
    return (agent_text, baseline_text) if order == AGENT_FIRST else (baseline_text, agent_text)


def winner_of(letter: str | None, order: str) -> str | None:
    """The system a verdict letter names in this order; None for a failed judgment."""
    if letter is None:
        return None
    if letter == "Tie":
        return TIE
    first, second = (AGENT, BASELINE) if order == AGENT_FIRST else (BASELINE, AGENT)
    return first if letter == "A" else second


def combine(agent_first: str | None, baseline_first: str | None) -> str:
    if agent_first is None or baseline_first is None:
        return FAILED
    return agent_first if agent_first == baseline_first else INCONSISTENT


@dataclass(frozen=True)
class WinRates:
    pairs: int
    items: int  # evaluation items the pairs come from: the resampling unit of the intervals
    judged: int  # pairs whose two orders both parsed
    agent_wins: int  # order-consistent
    baseline_wins: int
    ties: int
    inconsistent: int
    failed: int
    raw_agent_wins: int  # over single-order verdicts
    raw_verdicts: int
    consistent_rate: float | None
    consistent_low: float | None
    consistent_high: float | None
    raw_rate: float | None
    raw_low: float | None
    raw_high: float | None


def win_rates(
    items: Sequence[str],
    outcomes: Sequence[str],
    agent_first: Sequence[str | None],
    baseline_first: Sequence[str | None],
    seed: int = SEED,
) -> WinRates:
    """One entry per pair in each sequence: its evaluation item, its outcome and its two single-order verdicts
    (None where the reply failed).

    The consistent rate is agent wins over pairs judged in both orders (ties and inconsistent pairs
    count as not won); the raw rate is agent verdicts over parsed single-order verdicts. Both are
    pooled over pairs, with 95% intervals from a cluster bootstrap over items: the samples and settings
    of one item answer the same prompt, so they are not independent evidence (see
    persona_assets.statistics). None where undefined."""
    consistent = ratio_interval(items, [o == AGENT for o in outcomes], [o != FAILED for o in outcomes], seed)
    raw = ratio_interval(
        items,
        [(a == AGENT) + (b == AGENT) for a, b in zip(agent_first, baseline_first, strict=True)],
        [(a is not None) + (b is not None) for a, b in zip(agent_first, baseline_first, strict=True)],
        seed,
    )
    parsed = [v for v in (*agent_first, *baseline_first) if v is not None]
    return WinRates(
        len(outcomes),
        len(set(items)),
        sum(o != FAILED for o in outcomes),
        outcomes.count(AGENT),
        outcomes.count(BASELINE),
        outcomes.count(TIE),
        outcomes.count(INCONSISTENT),
        outcomes.count(FAILED),
        parsed.count(AGENT),
        len(parsed),
        consistent.estimate,
        consistent.low,
        consistent.high,
        raw.estimate,
        raw.low,
        raw.high,
    )
