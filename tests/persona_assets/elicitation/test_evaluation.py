import numpy as np
import pytest

from persona_platform.persona_assets.elicitation.accuracy import (
    QuestionScores,
    accuracy,
    difference,
    question_scores,
    weighted_accuracy,
    weighted_difference,
)
from persona_platform.persona_assets.elicitation.evaluation import (
    DemoClaim,
    build_conditions,
    example_counts,
    question_of,
)
from persona_platform.persona_assets.elicitation.prompts import parse_true_false


def pool(n=30, wrong_every=4):
    """Two claims (options) per question, as the splits give them: ids '<question>/<country>/<option>'."""
    return [
        DemoClaim(
            f"q{i // 2}/Aldoria/{i % 2}",
            f"question {i // 2}",
            f"option {i % 2}",
            i % 2,
            (i % 2) ^ (i % wrong_every == 0),
        )
        for i in range(n)
    ]


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
        icm_agreement = sum(a == b for a, b in zip(icm, gold, strict=True))
        random_agreement = sum(a == b for a, b in zip(random, gold, strict=True))
        assert icm_agreement == random_agreement


def test_demonstrations_are_drawn_by_question_both_options_together():
    for condition in build_conditions(pool(), [10, 20, 9], repeats=5, seed=7):
        questions = [question_of(i) for i in condition.demo_ids]
        assert all(questions.count(q) == 2 for q in questions)  # never one option of a question alone
        for first, second in zip(questions[::2], questions[1::2], strict=True):
            assert first == second  # and next to each other
        assert len(questions) == condition.k - condition.k % 2


def test_conditions_are_seeded():
    assert build_conditions(pool(), [10], 3, seed=1) == build_conditions(pool(), [10], 3, seed=1)
    assert build_conditions(pool(), [10], 3, seed=1) != build_conditions(pool(), [10], 3, seed=2)


def scores(per_question: list[float], repeats=(0.5,), claims_per_question=2) -> QuestionScores:
    return QuestionScores(
        {f"q{i}": v for i, v in enumerate(per_question)},
        list(repeats),
        claims_per_question * len(per_question),
    )


def test_accuracy_is_over_questions_with_a_cluster_bootstrap_interval():
    rng = np.random.default_rng(1)
    rows = [
        (r, f"q{q}/A/{o}", bool(rng.random() < 0.7)) for r in range(3) for q in range(40) for o in range(2)
    ]
    s = question_scores(rows)
    assert s.n_questions == 40 and s.n_claims == 80 and len(s.per_repeat) == 3
    estimate = accuracy(s)
    assert estimate.mean == np.mean([c for *_, c in rows])
    assert estimate.ci_low < estimate.mean < estimate.ci_high and estimate.n_questions == 40
    assert "cluster bootstrap over questions" in estimate.interval


def test_anti_correlated_siblings_do_not_shrink_the_interval():
    # Each question: exactly one of its two claims right. Per claim the Wilson interval would have
    # n = 2 x questions; per question every question scores 0.5, so there is no spread at all,
    # and a question-level interval says so instead of inventing precision from the claim count.
    rows = [(0, f"q{q}/A/{o}", o == q % 2) for q in range(30) for o in range(2)]
    estimate = accuracy(question_scores(rows))
    assert (estimate.mean, estimate.ci_low, estimate.ci_high) == (0.5, 0.5, 0.5)


def test_fewer_than_two_questions_have_no_interval():
    assert accuracy(scores([1.0])).ci_low is None


def test_weighted_aggregate_and_its_standard_error():
    small, large = (
        scores([0.5] * 10 + [1.0] * 10, claims_per_question=1),
        scores([1.0] * 60, claims_per_question=1),
    )
    estimate = weighted_accuracy([small, large])
    assert estimate.mean == pytest.approx((0.75 * 20 + 1.0 * 60) / 80)
    assert estimate.se > 0 and estimate.n_questions == 80 and "stratified" in estimate.interval


def test_paired_difference_on_shared_questions_with_a_permutation_p_value():
    a = scores([1.0] * 25 + [0.5] * 5)
    b = scores([0.5] * 25 + [0.5] * 5)
    d = difference(a, b)
    assert d.mean == pytest.approx(25 * 0.5 / 30) and d.n_questions == 30
    assert d.ci_low > 0 and d.p_value < 0.001
    same = difference(a, a)
    assert (same.mean, same.p_value) == (0.0, 1.0)
    noise = difference(scores([1.0, 0.0] * 15), scores([0.0, 1.0] * 15))
    assert noise.p_value > 0.5 and noise.ci_low < 0 < noise.ci_high
    assert weighted_difference([(a, b), (a, b)]).p_value < 0.001


@pytest.mark.parametrize(
    "reply, expected",
    [("True", 1), (" false.", 0), ('"TRUE"', 1), ("True, because", None), ("Yes", None), ("", None)],
)
def test_chat_replies_parse_strictly(reply, expected):
    assert parse_true_false(reply) == expected
