"""95% intervals by cluster bootstrap, seeded (no Dagster here).

Why clusters: observations that share a unit are correlated (the samples and sampling settings of one
evaluation item are answers to the same prompt; the members voting on one motion read the same motion), so
treating them as independent, as a binomial interval over every sample does, makes intervals too narrow.
Resampling whole clusters with replacement keeps that correlation inside every resample, and the interval then
reflects how many independent units there are, not how many rows.

How: each cluster is summarised by a vector of totals (wins and judged pairs; a confusion matrix's counts), a
statistic reads the sum of the totals of the clusters it is given, and scipy.stats.bootstrap resamples cluster
indices. A pooled rate (wins over pairs) is then the ratio estimator over clusters: every pair weighs the same
in the estimate, as in the point value reported, while the resampling unit stays the cluster.

Why BCa (scipy's default): it corrects the percentile interval for the bias and skew of the bootstrap
distribution, which are large for rates near 0 or 1 and for ratio estimators; its acceleration is the
jackknife that leaves one cluster out, the same unit. With few clusters any bootstrap interval is rough: the
cluster count is reported with it.

Degenerate inputs give a null interval (``low`` and ``high`` None), never an exception: no cluster (the
estimate is None too), a single cluster (nothing to resample), or a statistic that leaving out any one cluster
does not change, where BCa's acceleration is 0/0 (every cluster alike: all ties, all wins; or a constant
predictor's balanced accuracy), and a bootstrap says nothing useful about the spread.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import DegenerateDataWarning, bootstrap

CONFIDENCE = 0.95
RESAMPLES = 9999
SEED = 0
_BATCH = 500  # resamples evaluated at once: bounds memory at _BATCH x clusters x totals


@dataclass(frozen=True)
class Interval:
    estimate: float | None
    low: float | None
    high: float | None
    clusters: int  # clusters the estimate and interval are computed over


def interval_method(unit: str, seed: int = SEED) -> str:
    """How the intervals of a row were computed, for the row to name."""
    return f"{CONFIDENCE:.0%} BCa cluster bootstrap over {unit}, {RESAMPLES} resamples, seed {seed}"


def shown(
    estimate: float | None, low: float | None, high: float | None, scale: float = 1.0, digits: int = 2
) -> str:
    """'0.62 [0.48, 0.75]' for a report; 'n/a' without an estimate,
    'no interval' where the interval is null."""
    if estimate is None:
        return "n/a"
    interval = (
        "no interval"
        if low is None or high is None
        else f"{scale * low:.{digits}f}, {scale * high:.{digits}f}"
    )
    return f"{scale * estimate:.{digits}f} [{interval}]"


def cluster_totals(clusters: Sequence[Hashable], values: np.ndarray) -> np.ndarray:
    """Column sums of ``values`` (one row per observation) per cluster, clusters in first-seen order."""
    values = np.asarray(values, dtype=float)
    values = values[:, None] if values.ndim == 1 else values
    index: dict[Hashable, int] = {}
    rows = [index.setdefault(c, len(index)) for c in clusters]
    totals = np.zeros((len(index), values.shape[1]))
    np.add.at(totals, rows, values)
    return totals


def cluster_bootstrap(
    totals: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], seed: int = SEED
) -> Interval:
    """``totals``: one row of totals per cluster; ``statistic`` maps summed totals (..., k)
    to values (...)."""
    totals = np.asarray(totals, dtype=float)
    if totals.shape[0] == 0:
        return Interval(None, None, None, 0)
    estimate = float(statistic(totals.sum(axis=0)))
    if not np.isfinite(estimate):
        return Interval(None, None, None, totals.shape[0])
    if totals.shape[0] < 2:
        return Interval(estimate, None, None, 1)

    def resampled(index: np.ndarray, axis: int = -1) -> np.ndarray:
        return statistic(totals[index].sum(axis=-2))

    # A constant statistic makes BCa's acceleration 0/0: scipy warns and returns NaN, reported below as a
    # null interval.
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", DegenerateDataWarning)
        result = bootstrap(
            (np.arange(totals.shape[0]),),
            resampled,
            vectorized=True,
            n_resamples=RESAMPLES,
            confidence_level=CONFIDENCE,
            method="BCa",
            batch=_BATCH,
            rng=np.random.default_rng(seed),
        )
    low, high = result.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):
        return Interval(estimate, None, None, totals.shape[0])
    return Interval(estimate, float(low), float(high), totals.shape[0])


def _ratio(sums: np.ndarray) -> np.ndarray:
    return sums[..., 0] / sums[..., 1]


def ratio_interval(
    clusters: Sequence[Hashable], numerators: Sequence[float], denominators: Sequence[float], seed: int = SEED
) -> Interval:
    """sum(numerators) / sum(denominators) with its cluster-bootstrap interval. A cluster with nothing
    in the denominator (every pair of an item failed) adds nothing to the estimate and is left out of
    the resampling."""
    totals = cluster_totals(
        clusters, np.column_stack([np.asarray(numerators, float), np.asarray(denominators, float)])
    )
    return cluster_bootstrap(totals[totals[:, 1] > 0], _ratio, seed)


def mean_interval(clusters: Sequence[Hashable], values: Sequence[float], seed: int = SEED) -> Interval:
    """The mean over every observation, with an interval from resampling clusters."""
    return ratio_interval(clusters, values, [1.0] * len(values), seed)
