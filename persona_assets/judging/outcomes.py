"""Pairwise outcomes and win rates (no Dagster here).

Every pair (agent sample i vs baseline sample i) is judged twice, once with the
agent as A and once with the baseline as A. An order-consistent outcome needs
both orders to name the same system (or both a tie); otherwise it is
``inconsistent``. A failed parse in either order makes the pair ``failed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from persona_assets.elicitation.evaluation import wilson_interval
from persona_assets.responses.tasks import AGENT, BASELINE

TIE, INCONSISTENT, FAILED = "tie", "inconsistent", "failed"
AGENT_FIRST, BASELINE_FIRST = "agent_first", "baseline_first"
ORDERS = (AGENT_FIRST, BASELINE_FIRST)


def flatten(messages: Sequence[Sequence[str]], speaker: str) -> str:
    """A chat as the judge reads it: user turns already name their speakers; assistant turns are the speaker's."""
    return "\n".join(content if role == "user" else f"{speaker}: {content}" for role, content in messages if role != "system")


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
    judged: int  # pairs whose two orders both parsed
    agent_wins: int  # order-consistent
    baseline_wins: int
    ties: int
    inconsistent: int
    failed: int
    raw_agent_wins: int  # over single-order verdicts
    raw_verdicts: int
    consistent_rate: float
    consistent_low: float
    consistent_high: float
    raw_rate: float
    raw_low: float
    raw_high: float


def win_rates(outcomes: Sequence[str], verdicts: Sequence[str | None]) -> WinRates:
    """``outcomes``: one per pair; ``verdicts``: every single-order verdict (None where it failed).

    The consistent rate is agent wins over pairs judged in both orders (ties and inconsistent pairs count as
    not won); the raw rate is agent verdicts over parsed single-order verdicts. Both with Wilson 95% intervals."""
    judged = sum(o != FAILED for o in outcomes)
    agent_wins = outcomes.count(AGENT)
    parsed = [v for v in verdicts if v is not None]
    raw_wins = parsed.count(AGENT)
    consistent = agent_wins / judged if judged else float("nan")
    raw = raw_wins / len(parsed) if parsed else float("nan")
    return WinRates(len(outcomes), judged, agent_wins, outcomes.count(BASELINE), outcomes.count(TIE),
                    outcomes.count(INCONSISTENT), outcomes.count(FAILED), raw_wins, len(parsed),
                    consistent, *wilson_interval(consistent, judged), raw, *wilson_interval(raw, len(parsed)))
