"""Binary claims from survey distributions.

Per (question, country): the most chosen option is labelled 1 (the first wins a
tie) and one other option, drawn with a generator seeded by (seed, question,
country), is labelled 0. Every group therefore holds exactly one positive and
one negative, and the result does not depend on which countries are processed
together.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

NO_DISTRIBUTION = "the source gives only a mean ordinal position for this question"


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


def argmax_first(values: tuple[float, ...]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def build_claims(answers: Iterable[SurveyAnswer], seed: int) -> tuple[list[Claim], list[tuple[str, str, str]]]:
    """Return the claims and the (question_id, country, reason) groups left out."""
    claims: list[Claim] = []
    excluded: list[tuple[str, str, str]] = []
    for a in answers:
        if a.distribution is None:
            excluded.append((a.question_id, a.country, NO_DISTRIBUTION))
            continue
        positive = argmax_first(a.distribution)
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
