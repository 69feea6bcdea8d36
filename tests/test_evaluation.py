import pytest

from persona_assets.elicitation.evaluation import (
    AccuracySummary,
    DemoClaim,
    aggregate,
    build_conditions,
    example_counts,
    summarize,
    wilson_interval,
)
from persona_assets.elicitation.prompts import parse_true_false


def pool(n=30, wrong_every=4):
    return [DemoClaim(f"c{i}", f"q{i}", "o", i % 2, (i % 2) ^ (i % wrong_every == 0)) for i in range(n)]


def test_example_counts_always_end_at_the_pool_size():
    assert example_counts([10, 20, 50], 30) == [10, 20, 30]
    assert example_counts([10], 0) == []


def test_methods_share_claims_and_order_and_random_labels_match_icm_accuracy():
    conditions = build_conditions(pool(), [10, 20], repeats=4, seed=3)
    by_draw = {}
    for c in conditions:
        by_draw.setdefault((c.k, c.repeat), {})[c.method] = c
    assert len(by_draw) == 3 * 4
    for (k, _), methods in by_draw.items():
        assert {m.demo_ids for m in methods.values()} == {methods["gold"].demo_ids}
        gold = [label for _, _, label in methods["gold"].demos]
        icm = [label for _, _, label in methods["icm"].demos]
        random = [label for _, _, label in methods["random_matched"].demos]
        assert len(gold) == k
        assert sum(a == b for a, b in zip(icm, gold)) == sum(a == b for a, b in zip(random, gold))


def test_conditions_are_seeded():
    assert build_conditions(pool(), [10], 3, seed=1) == build_conditions(pool(), [10], 3, seed=1)
    assert build_conditions(pool(), [10], 3, seed=1) != build_conditions(pool(), [10], 3, seed=2)


def test_wilson_interval():
    low, high = wilson_interval(0.8, 50)
    assert (low, high) == pytest.approx((0.6697, 0.8876), abs=1e-3)
    assert wilson_interval(1.0, 10)[1] == pytest.approx(1.0) and wilson_interval(0.0, 10)[0] == pytest.approx(0.0)


def test_summary_and_weighted_aggregate():
    s = summarize([0.7, 0.8, 0.9], 50)
    assert s.mean == pytest.approx(0.8) and s.std == pytest.approx(0.1)
    a = aggregate([AccuracySummary(0.6, 0.0, 0, 1, 1, 25), AccuracySummary(0.9, 0.0, 0, 1, 1, 75)])
    assert a.mean == pytest.approx(0.825) and a.n_test == 100


@pytest.mark.parametrize(
    "reply, expected",
    [("True", 1), (" false.", 0), ('"TRUE"', 1), ("True, because", None), ("Yes", None), ("", None)],
)
def test_chat_replies_parse_strictly(reply, expected):
    assert parse_true_false(reply) == expected
