"""Per-country train/test splits decided on question identity.

The questions of a variant are shuffled once with a seeded generator; the first
``train_fraction`` of them may go to train and the rest to test, for every
country alike. Each country then takes whole question groups in that shuffled
order until a cap (in claims) would be exceeded. So countries with the same
questions get the same train and test questions, and no question is in train
for one country and in test for another.

Unlike the upstream fork, a cap never cuts a question group in two: with two
claims per group an odd cap of 125 gives 124 train claims.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from persona_platform.persona_assets.opinions.claims import Claim

VARIANT_ALL = "all"
VARIANT_BINARY = "binary"
VARIANTS = (VARIANT_ALL, VARIANT_BINARY)


@dataclass(frozen=True)
class SplitRules:
    seed: int = 733244742
    train_fraction: float = 0.75
    train_cap: int = 125
    test_cap: int = 50


@dataclass(frozen=True)
class SplitRow:
    claim: Claim
    variant: str
    split: str
    position: int


def in_variant(n_options: int, variant: str) -> bool:
    if variant == VARIANT_ALL:
        return True
    if variant == VARIANT_BINARY:
        return n_options == 2
    raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")


def question_roles(question_ids: Sequence[str], rules: SplitRules) -> tuple[list[str], dict[str, str]]:
    """Shuffle the questions (given in source order) and give each a role."""
    order = list(dict.fromkeys(question_ids))
    random.Random(rules.seed).shuffle(order)
    n_train = int(rules.train_fraction * len(order))
    return order, {q: ("train" if i < n_train else "test") for i, q in enumerate(order)}


def split_country(
    claims: Sequence[Claim],
    questions: Sequence[tuple[str, int]],
    variant: str,
    rules: SplitRules,
) -> list[SplitRow]:
    """Split one country's claims; ``questions`` is (question_id, n_options) in source order."""
    variant_questions = [q for q, n in questions if in_variant(n, variant)]
    order, roles = question_roles(variant_questions, rules)
    groups: dict[str, list[Claim]] = defaultdict(list)
    for c in claims:
        groups[c.question_id].append(c)
    caps = {"train": rules.train_cap, "test": rules.test_cap}
    taken: dict[str, list[Claim]] = {"train": [], "test": []}
    for q in order:
        group = sorted(groups.get(q, ()), key=lambda c: c.option_index)
        role = roles[q]
        if group and len(taken[role]) + len(group) <= caps[role]:
            taken[role].extend(group)
    return [
        SplitRow(claim, variant, split, position)
        for split in ("train", "test")
        for position, claim in enumerate(taken[split])
    ]
