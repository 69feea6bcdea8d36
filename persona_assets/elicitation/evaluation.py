"""Few-shot evaluation conditions and accuracy statistics (no Dagster here).

A condition is one demonstration set: a method (gold, ICM or accuracy-matched
random labels), a number of examples k and a repeat. Each repeat draws its own
subset and order from one seeded generator; for a given (k, repeat) the three
methods share the same claims in the same order and differ only in the labels.
k = M (every ICM-labelled claim) gives the headline ICM and golden accuracies.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from persona_assets.elicitation.prompts import CANDIDATES, few_shot_prompt
from resources.llm.engine import Engine, ScoreRequest

METHODS = ("gold", "icm", "random_matched")


@dataclass(frozen=True)
class DemoClaim:
    claim_id: str
    question: str
    option: str
    gold: int
    icm: int


@dataclass(frozen=True)
class TestClaim:
    claim_id: str
    question: str
    option: str
    label: int


@dataclass(frozen=True)
class Condition:
    method: str
    k: int
    repeat: int
    demos: tuple[tuple[str, str, int], ...]
    demo_ids: tuple[str, ...]


def example_counts(requested: Sequence[int], available: int) -> list[int]:
    return sorted({k for k in requested if 0 < k < available} | ({available} if available else set()))


def build_conditions(pool: Sequence[DemoClaim], ks: Sequence[int], repeats: int, seed: int) -> list[Condition]:
    rng = random.Random(seed)
    out = []
    for k in example_counts(ks, len(pool)):
        for repeat in range(repeats):
            subset = rng.sample(list(pool), k)
            wrong = sum(d.icm != d.gold for d in subset)
            flipped = set(rng.sample(range(k), wrong))
            labels = {
                "gold": [d.gold for d in subset],
                "icm": [d.icm for d in subset],
                "random_matched": [1 - d.gold if i in flipped else d.gold for i, d in enumerate(subset)],
            }
            ids = tuple(d.claim_id for d in subset)
            for method in METHODS:
                demos = tuple((d.question, d.option, y) for d, y in zip(subset, labels[method], strict=True))
                out.append(Condition(method, k, repeat, demos, ids))
    return out


def condition_margins(engine: Engine, country: str, condition: Condition, tests: Sequence[TestClaim]) -> list[float]:
    """Margins of every test claim under one demonstration set: one call, the prefix computed once."""
    requests = [
        ScoreRequest(few_shot_prompt(country, list(condition.demos), (t.question, t.option)), CANDIDATES)
        for t in tests
    ]
    return [t - f for t, f in engine.score(requests, reuse_prefix=True)]


@dataclass(frozen=True)
class AccuracySummary:
    mean: float
    std: float
    ci_low: float
    ci_high: float
    repeats: int
    n_test: int


def wilson_interval(p: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% binomial interval of an accuracy p measured on n test claims."""
    if n == 0:
        return 0.0, 1.0
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(accuracies: Sequence[float], n_test: int) -> AccuracySummary:
    """Mean and sample standard deviation over repeats; the interval covers test sampling."""
    mean = sum(accuracies) / len(accuracies)
    std = (
        math.sqrt(sum((a - mean) ** 2 for a in accuracies) / (len(accuracies) - 1)) if len(accuracies) > 1 else 0.0
    )
    low, high = wilson_interval(mean, n_test)
    return AccuracySummary(mean, std, low, high, len(accuracies), n_test)


def aggregate(parts: Sequence[AccuracySummary]) -> AccuracySummary:
    """Across countries, weighted by test size."""
    n = sum(p.n_test for p in parts)
    mean = sum(p.mean * p.n_test for p in parts) / n
    std = math.sqrt(sum((p.std**2) * p.n_test for p in parts) / n)
    low, high = wilson_interval(mean, n)
    return AccuracySummary(mean, std, low, high, min(p.repeats for p in parts), n)
