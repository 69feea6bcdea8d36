"""Cluster-bootstrap intervals: coverage on simulated clustered data, width under within-cluster correlation,
degenerate inputs, reproducibility."""

import numpy as np
import pytest

from persona_platform.persona_assets.statistics import (
    cluster_bootstrap,
    cluster_totals,
    interval_method,
    mean_interval,
    ratio_interval,
    shown,
)


def clustered_wins(rng, items=40, samples=8, rate=0.6, spread=1.0):
    """Each item has its own win probability (Beta with mean ``rate``): its samples are correlated (intra-item
    correlation 1 / (1 + spread))."""
    item_rates = rng.beta(rate * spread, (1 - rate) * spread, items)
    wins = rng.random((items, samples)) < item_rates[:, None]
    return np.repeat(np.arange(items), samples), wins.ravel().astype(float)


def width(interval):
    return interval.high - interval.low


def test_totals_are_summed_per_cluster_in_first_seen_order():
    totals = cluster_totals(["b", "a", "b", "c"], np.array([[1, 2], [3, 4], [5, 6], [7, 8]]))
    assert totals.tolist() == [[6, 8], [3, 4], [7, 8]]
    assert cluster_totals([], np.zeros((0, 2))).shape == (0, 2)


def test_the_cluster_interval_covers_the_true_rate_where_a_per_sample_one_does_not():
    rng = np.random.default_rng(7)
    clustered = naive = 0
    for _ in range(40):
        items, wins = clustered_wins(rng)
        clustered += (i := mean_interval(items, wins)).low <= 0.6 <= i.high
        naive += (
            (i := mean_interval(range(len(wins)), wins)).low <= 0.6 <= i.high
        )  # every sample its own unit
    assert clustered >= 34  # nominal 95% of 40 = 38
    assert (
        naive <= 30
    )  # over samples: about 2x too narrow here (design effect 1 + 7 / 2), covering about 2 in 3


def test_perfectly_correlated_samples_widen_the_interval_by_about_the_root_of_the_cluster_size():
    rng = np.random.default_rng(3)
    item_wins = (rng.random(30) < 0.5).astype(float)
    samples = 9
    wins = np.repeat(item_wins, samples)
    clustered = mean_interval(np.repeat(np.arange(30), samples), wins)
    independent = mean_interval(range(len(wins)), wins)
    assert clustered.estimate == independent.estimate == item_wins.mean()
    assert clustered.clusters == 30 and independent.clusters == 270
    assert width(clustered) / width(independent) == pytest.approx(np.sqrt(samples), rel=0.25)


def test_a_ratio_pools_observations_and_skips_clusters_with_an_empty_denominator():
    interval = ratio_interval(["a", "a", "b", "c", "d"], [1, 1, 0, 3, 0], [1, 1, 2, 4, 0])
    assert interval.estimate == pytest.approx(5 / 8) and interval.clusters == 3  # d: every pair failed
    assert interval.low <= interval.estimate <= interval.high


@pytest.mark.parametrize(
    "clusters, values, estimate",
    [
        ([], [], None),  # nothing measured
        (["a", "a", "a"], [1, 0, 1], 2 / 3),  # one item: nothing to resample
        (["a", "a", "b", "b", "c"], [0, 0, 0, 0, 0], 0.0),  # all ties: every resample is the estimate
        (["a", "b", "c"], [4, 4, 4], 4.0),
    ],
)
def test_degenerate_inputs_give_a_null_interval_not_an_error(clusters, values, estimate):
    interval = mean_interval(clusters, values)
    assert interval.estimate == (estimate if estimate is None else pytest.approx(estimate))
    assert interval.low is None and interval.high is None
    assert ratio_interval(["a", "b"], [0, 0], [0, 0]).estimate is None  # every pair failed: no rate


def test_intervals_are_reproducible_from_the_seed():
    items, wins = clustered_wins(np.random.default_rng(1))
    assert mean_interval(items, wins, seed=5) == mean_interval(items, wins, seed=5)
    assert mean_interval(items, wins, seed=5) != mean_interval(items, wins, seed=6)


def test_any_statistic_of_summed_totals_can_be_bootstrapped():
    totals = np.array([[2.0, 1.0], [3.0, 3.0], [1.0, 0.0], [4.0, 2.0]])
    difference = cluster_bootstrap(totals, lambda sums: sums[..., 0] - sums[..., 1])
    assert difference.estimate == 4.0 and difference.low < 4.0 < difference.high and difference.clusters == 4


def test_reports_name_the_method_and_show_nulls_plainly():
    assert (
        interval_method("evaluation items", 3)
        == "95% BCa cluster bootstrap over evaluation items, 9999 resamples, seed 3"
    )
    assert shown(0.625, 0.5, 0.75, 100, 0) == "62 [50, 75]"
    assert shown(3.0, None, None) == "3.00 [no interval]" and shown(None, None, None) == "n/a"
