"""Accuracy over test questions, with intervals a reviewer accepts (no Dagster here).

The unit is the question, not the claim: the two claims of a question are scored from one
prompt context and are anti-correlated (exactly one is True), and every repeat scores the
same questions again. So an accuracy is the mean over questions of each question's share of
correct predictions (its claims x repeats), and its 95% interval comes from a cluster
bootstrap over questions (scipy.stats.bootstrap, percentile): a resample draws whole
questions, all their claims and repeats together. The spread across repeats (demonstration
draws) is reported beside it as ``std``.

Across countries the aggregate is the test-size-weighted mean of the countries' accuracies;
its interval comes from a stratified bootstrap (each country's questions resampled within
that country) and ``se`` is that bootstrap's standard error of the weighted mean.

A comparison of two methods is paired on the questions both scored: the mean over questions
of the difference of their per-question accuracies, a 95% cluster-bootstrap interval, and a
two-sided p-value from a sign-flip permutation test of those differences
(scipy.stats.permutation_test).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

INTERVAL = "cluster bootstrap over questions, 95% percentile"
STRATIFIED = "stratified cluster bootstrap over questions within countries, 95% percentile"
RESAMPLES = 2000
SEED = 0


@dataclass(frozen=True)
class QuestionScores:
    """One method's per-question accuracy (claims x repeats) and the repeat-level accuracies."""

    by_question: Mapping[str, float]
    per_repeat: Sequence[float]
    n_claims: int

    @property
    def n_questions(self) -> int:
        return len(self.by_question)


@dataclass(frozen=True)
class Estimate:
    mean: float
    ci_low: float | None
    ci_high: float | None
    se: float | None
    n_questions: int
    interval: str


def question_of(claim_id: str) -> str:
    """Claim ids are '<question_id>/<country>/<option index>'; question ids never hold a '/'."""
    return claim_id.split("/", 1)[0]


def question_scores(rows: Sequence[tuple[int, str, bool]]) -> QuestionScores:
    """From (repeat, claim_id, correct) rows of one method, country and variant."""
    by_question: dict[str, list[bool]] = {}
    by_repeat: dict[int, list[bool]] = {}
    claims = set()
    for repeat, claim_id, correct in rows:
        by_question.setdefault(question_of(claim_id), []).append(bool(correct))
        by_repeat.setdefault(repeat, []).append(bool(correct))
        claims.add(claim_id)
    return QuestionScores(
        {q: float(np.mean(v)) for q, v in sorted(by_question.items())},
        [float(np.mean(v)) for _, v in sorted(by_repeat.items())],
        len(claims),
    )


def _bootstrap(samples: Sequence[np.ndarray], statistic) -> tuple[float | None, float | None, float | None]:
    """95% percentile interval and standard error, or None where a bootstrap cannot say anything (a
    sample of fewer than two questions)."""
    if any(len(s) < 2 for s in samples):
        return None, None, None
    result = stats.bootstrap(
        tuple(samples),
        statistic,
        n_resamples=RESAMPLES,
        method="percentile",
        vectorized=True,
        random_state=np.random.default_rng(SEED),
    )
    low, high = result.confidence_interval
    return float(low), float(high), float(result.standard_error)


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def accuracy(scores: QuestionScores) -> Estimate:
    values = np.array(list(scores.by_question.values()))
    low, high, se = _bootstrap([values], _mean)
    return Estimate(float(values.mean()), low, high, se, scores.n_questions, INTERVAL)


def repeat_std(scores: QuestionScores) -> float:
    return float(np.std(scores.per_repeat, ddof=1)) if len(scores.per_repeat) > 1 else 0.0


def weighted_accuracy(parts: Sequence[QuestionScores]) -> Estimate:
    """Across countries, weighted by test claims, each country's questions resampled within it."""
    samples = [np.array(list(p.by_question.values())) for p in parts]
    weights = np.array([p.n_claims for p in parts], dtype=float)
    weights /= weights.sum()

    def weighted(*xs, axis=-1):
        return sum(w * np.mean(x, axis=axis) for w, x in zip(weights, xs, strict=True))

    low, high, se = _bootstrap(samples, weighted)
    return Estimate(float(weighted(*samples)), low, high, se, sum(p.n_questions for p in parts), STRATIFIED)


@dataclass(frozen=True)
class Difference:
    mean: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    n_questions: int
    interval: str


def paired_differences(a: QuestionScores, b: QuestionScores) -> np.ndarray:
    shared = sorted(set(a.by_question) & set(b.by_question))
    return np.array([a.by_question[q] - b.by_question[q] for q in shared])


def sign_flip_p(differences: np.ndarray, weights: np.ndarray | None = None) -> float | None:
    """Two-sided p of a (weighted) mean difference of 0, flipping the sign of each question's difference."""
    if len(differences) == 0:
        return None
    if not differences.any():
        return 1.0
    w = np.full(len(differences), 1 / len(differences)) if weights is None else weights

    def statistic(d, axis=-1):
        return np.sum(w * d, axis=axis)

    result = stats.permutation_test(
        (differences,),
        statistic,
        permutation_type="samples",
        vectorized=True,
        n_resamples=9999,
        alternative="two-sided",
        random_state=np.random.default_rng(SEED),
    )
    return float(result.pvalue)


def difference(a: QuestionScores, b: QuestionScores) -> Difference:
    d = paired_differences(a, b)
    if len(d) == 0:
        return Difference(float("nan"), None, None, None, 0, INTERVAL)
    low, high, _ = _bootstrap([d], _mean)
    return Difference(float(d.mean()), low, high, sign_flip_p(d), len(d), INTERVAL)


def weighted_difference(pairs: Sequence[tuple[QuestionScores, QuestionScores]]) -> Difference:
    """The test-size-weighted mean over countries of their paired differences."""
    samples = [paired_differences(a, b) for a, b in pairs]
    weights = np.array([a.n_claims for a, _ in pairs], dtype=float)
    weights /= weights.sum()

    def weighted(*xs, axis=-1):
        return sum(w * np.mean(x, axis=axis) for w, x in zip(weights, xs, strict=True))

    low, high, _ = _bootstrap(samples, weighted)
    per_question = np.concatenate(
        [np.full(len(s), w / len(s)) for s, w in zip(samples, weights, strict=True) if len(s)]
    )
    return Difference(
        float(weighted(*samples)),
        low,
        high,
        sign_flip_p(np.concatenate(samples), per_question),
        sum(len(s) for s in samples),
        STRATIFIED,
    )
