"""Binary claims from survey distributions.

Per (question, country): the most chosen option is labelled 1 and one other
option, drawn with a generator seeded by (seed, question, country), is labelled
0. Every group therefore holds exactly one positive and one negative, and the
result does not depend on which countries are processed together.

A survey row makes claims only when its most chosen option is unique: it needs
shares (not only a mean position), at least two options, a positive total, and
one share strictly larger than every other share as written in the source (no
tolerance: equal shares are a tie however they were rounded). Any other row is
unusable and its reason is reported; shares that sum to slightly more or less
than 1 are normalised by their sum.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

# Why a survey row makes no claim: a short code (stored) and what it means.
NO_DISTRIBUTION, TOO_FEW_OPTIONS, NO_ANSWERS, TIED = (
    "no_distribution",
    "too_few_options",
    "no_answers",
    "tied",
)
UNUSABLE_REASONS = {
    NO_DISTRIBUTION: "the source gives only a mean ordinal position, not the share of each option",
    TOO_FEW_OPTIONS: "fewer than 2 options",
    NO_ANSWERS: "every share is 0 (not asked in this country, or no answers)",
    TIED: "no unique most chosen option: a tie for the largest share",
}


@dataclass(frozen=True)
class SurveyAnswer:
    question_id: str
    country: str
    options: tuple[str, ...]
    distribution: tuple[float, ...] | None


@dataclass(frozen=True)
class Claim:
    claim_id: str
    question_id: str
    country: str
    option_index: int
    option: str
    probability: float
    label: int
    n_options: int


def claim_id(question_id: str, country: str, option_index: int) -> str:
    return f"{question_id}/{country}/{option_index}"


def unusable_reason(n_options: int, distribution: tuple[float, ...] | None) -> str | None:
    """Why a survey row cannot make a claim, or None when it can (the rule in this module's docstring)."""
    if distribution is None:
        return NO_DISTRIBUTION
    if n_options < 2:
        return TOO_FEW_OPTIONS
    if sum(distribution) <= 0:
        return NO_ANSWERS
    if distribution.count(max(distribution)) > 1:
        return TIED
    return None


def build_claims(
    answers: Iterable[SurveyAnswer], seed: int
) -> tuple[list[Claim], list[tuple[str, str, str]]]:
    """Return the claims and the (question_id, country, reason) groups left out."""
    claims: list[Claim] = []
    excluded: list[tuple[str, str, str]] = []
    for a in answers:
        reason = unusable_reason(len(a.options), a.distribution)
        if reason:
            excluded.append((a.question_id, a.country, reason))
            continue
        positive = a.distribution.index(max(a.distribution))
        others = [i for i in range(len(a.options)) if i != positive]
        negative = random.Random(f"{seed}:{a.question_id}:{a.country}").choice(others)
        for index in sorted((positive, negative)):
            claims.append(
                Claim(
                    claim_id=claim_id(a.question_id, a.country, index),
                    question_id=a.question_id,
                    country=a.country,
                    option_index=index,
                    option=a.options[index],
                    probability=a.distribution[index] / sum(a.distribution),
                    label=int(index == positive),
                    n_options=len(a.options),
                )
            )
    return claims, excluded
