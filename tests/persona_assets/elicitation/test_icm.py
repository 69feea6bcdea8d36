import json
import random

import numpy as np
import pytest
from scipy import stats

from persona_platform.benchmarks.icm_recovery import run_world, summarize_cell
from persona_platform.persona_assets.elicitation.icm import (
    ClaimScorer,
    IcmClaim,
    IcmParams,
    IcmSearch,
    SearchState,
    naive_order,
    tree_order,
)
from persona_platform.persona_assets.elicitation.prompts import CANDIDATES, few_shot_prompt
from persona_platform.resources.llm import ScoreRequest
from persona_platform.resources.llm.simulated import WorldSpec
from tests.synthetic_engine import HiddenLabelEngine


def make_claims(groups=20, seed=3, inconsistent_groups=0):
    """Two options per question; the hidden labelling marks one True, or both for the first groups."""
    rng = random.Random(seed)
    claims, hidden = [], {}
    for g in range(groups):
        positive = rng.randrange(2)
        for k in range(2):
            question, option = f"question {g}", f"option {k}"
            label = 1 if g < inconsistent_groups else int(k == positive)
            hidden[(question, option)] = label
            claims.append(IcmClaim(len(claims), f"g{g}", question, option, label))
    return claims, hidden


def search(claims, hidden, **params):
    engine = HiddenLabelEngine(model_id="synthetic", hidden=hidden)
    icm = IcmSearch(claims, IcmParams(**params), ClaimScorer(engine, "Aldoria", claims))
    return icm, engine


def recovery(worlds=8, **spec):
    return [run_world(WorldSpec(seed=seed, **spec), modes=("exactly_one",)) for seed in range(worlds)]


def test_the_synthetic_engine_needs_no_labelling_procedure():
    # Why the planted-signal engine replaced it for recovery: its margin has the hidden label's sign
    # whatever the demonstrations say, so any labelling procedure "recovers" the truth with it.
    claims, hidden = make_claims(groups=6)
    engine = HiddenLabelEngine(model_id="synthetic", hidden=hidden)
    wrong = [1 - c.gold for c in claims]
    margins = ClaimScorer(engine, "Aldoria", claims).pool_margins([wrong])[0]
    assert all((margins[c.uid] > 0) == bool(c.gold) for c in claims)


def test_icm_recovers_a_salient_truth_that_zero_shot_sees_dimly():
    # The truth is the most salient concept (1.5 nats over each of 9 others) and each demonstration
    # moves the learner by 0.05 nats: zero-shot answers are diluted by the distractors.
    worlds = recovery()
    icm = np.array([w["icm_exactly_one"] for w in worlds])
    argmax = np.array([w["zero_shot_argmax"] for w in worlds])
    assert icm.mean() >= 0.95
    assert icm.mean() - argmax.mean() >= 0.08
    assert stats.ttest_rel(icm, argmax).confidence_interval().low > 0
    assert np.mean([w["few_shot_icm"] for w in worlds]) > np.mean([w["few_shot_random"] for w in worlds])


def test_icm_does_not_recover_a_truth_nothing_prefers():
    # Salience 0: the truth is no likelier than its negation or a distractor, which are as coherent.
    worlds = recovery(salience=0.0)
    assert np.mean([w["icm_exactly_one"] for w in worlds]) < 0.8
    assert summarize_cell(worlds)["icm_recovers"] is False


@pytest.mark.parametrize("consistency", ["at_most_one", "none"])
def test_other_consistency_modes_recover_the_salient_truth(consistency):
    worlds = [run_world(WorldSpec(seed=seed), modes=(consistency,)) for seed in range(4)]
    assert np.mean([w[f"icm_{consistency}"] for w in worlds]) >= 0.9


def test_tree_and_naive_order_reach_the_same_agreement():
    # With a recency-weighted learner (the last demonstration weighs 1.5 times the first) the order
    # of demonstrations changes every answer; `persona bench icm-recovery` also reports recency 1.
    tree = [
        run_world(WorldSpec(seed=s, recency=0.5), pool_order="tree", modes=("exactly_one",)) for s in range(8)
    ]
    naive = [
        run_world(WorldSpec(seed=s, recency=0.5), pool_order="naive", modes=("exactly_one",))
        for s in range(8)
    ]
    difference = np.array(
        [t["icm_exactly_one"] - n["icm_exactly_one"] for t, n in zip(tree, naive, strict=True)]
    )
    assert abs(difference.mean()) <= 0.05


def siblings_right_before(scorer, claims):
    order = scorer.order(list(range(len(claims))))
    return sum(bool(demos) and claims[demos[-1]].group == claims[q].group for q, demos in order) / len(order)


def test_tree_order_rarely_puts_a_sibling_right_before_its_query():
    claims = [IcmClaim(i, f"g{i // 2}", f"question {i // 2}", f"option {i % 2}", i % 2) for i in range(124)]
    tree, naive = ClaimScorer(None, "A", claims, "tree", 0), ClaimScorer(None, "A", claims, "naive")
    unshuffled = (
        sum(claims[d[-1]].group == claims[q].group for q, d in tree_order(list(range(124))) if d) / 124
    )
    assert unshuffled > 0.4  # what split order gave before the seeded leaf order
    assert siblings_right_before(tree, claims) <= 0.10
    assert siblings_right_before(naive, claims) <= 0.05
    for q, demos in tree.order(list(range(124))):
        assert sorted(demos) == [i for i in range(124) if i != q]


def test_a_proposal_is_predicted_from_the_prompt_the_energy_scores():
    claims = [IcmClaim(i, f"g{i // 2}", f"question {i // 2}", f"option {i % 2}", i % 2) for i in range(40)]
    scorer = ClaimScorer(None, "A", claims, "tree", 3)
    labelled = [u for u in range(40) if u % 3]
    for query in (0, 3, 39):
        pool = sorted({*labelled, query})
        assert scorer.demos_for(query, labelled) == dict(scorer.order(pool))[query]


def test_same_seed_same_labels_other_seed_other_path():
    claims, hidden = make_claims()
    first = search(claims, hidden, iterations=30, seed=1)[0].run()
    again = search(claims, hidden, iterations=30, seed=1)[0].run()
    other = search(claims, hidden, iterations=30, seed=2)[0].run()
    assert first.labels == again.labels and first.trace == again.trace
    assert [t["uid"] for t in first.trace] != [t["uid"] for t in other.trace]


def test_consistency_modes_count_the_pairs_they_forbid():
    claims, hidden = make_claims(groups=3)
    labels = [1, 1, 0, 0, 1, 0]  # group 0 both True, group 1 both False, group 2 fine
    counts = {
        mode: len(search(claims, hidden, consistency=mode)[0].inconsistent_pairs(labels))
        for mode in ("exactly_one", "at_most_one", "none")
    }
    assert counts == {"exactly_one": 2, "at_most_one": 1, "none": 0}
    unlabelled = [1, None, None, 0, None, None]
    assert search(claims, hidden, consistency="exactly_one")[0].inconsistent_pairs(unlabelled) == []


def final_group_labels(claims, labels):
    groups = {}
    for c in claims:
        groups.setdefault(c.group, []).append(labels[c.uid])
    return groups


def test_modes_decide_whether_an_incoherent_favourite_survives():
    # The scorer's favourite labels both options of the first 4 questions True.
    claims, hidden = make_claims(groups=12, inconsistent_groups=4)
    free = search(claims, hidden, iterations=120, seed=5, consistency="none")[0]
    state = free.run()
    assert free.gold_agreement(state.labels) >= 0.95
    assert any(g == [1, 1] for g in final_group_labels(claims, state.labels).values())
    for mode in ("exactly_one", "at_most_one"):
        icm = search(claims, hidden, iterations=120, seed=5, consistency=mode)[0]
        state = icm.run()
        groups = final_group_labels(claims, state.labels).values()
        assert not any(g == [1, 1] for g in groups), mode
        if mode == "exactly_one":
            assert not any(g == [0, 0] for g in groups)


def test_metropolis_never_overflows_and_accepts_improvements():
    params = IcmParams(initial_temperature=1e-300, final_temperature=1e-300)
    assert params.temperature(10**9) == 1e-300  # a tiny T: exp(-delta/T) would overflow if ever taken
    claims, hidden = make_claims(groups=6)
    icm, _ = search(
        claims, hidden, iterations=40, seed=2, initial_temperature=1e-300, final_temperature=1e-300
    )
    state = icm.run()
    assert all(
        t["accepted"] == (t["delta"] >= 0) for t in state.trace if t["proposed_label"] != t["previous_label"]
    )


def test_temperature_schedule():
    params = IcmParams()
    assert params.temperature(0) == 10.0
    assert params.temperature(1) == pytest.approx(10 / (1 + 2.75 * 0.6931471805599453))
    assert params.temperature(10**20) == 0.1  # the floor; unreachable in practice, as upstream


def test_a_killed_search_resumes_to_the_same_labels():
    claims, hidden = make_claims()
    uninterrupted = search(claims, hidden, iterations=60, seed=11)[0].run()

    saved = {}

    class Killed(Exception):
        pass

    def checkpoint_then_die(state):
        saved["json"] = state.to_json()
        if state.iteration == 30:
            raise Killed

    with pytest.raises(Killed):
        search(claims, hidden, iterations=60, seed=11)[0].run(
            checkpoint=checkpoint_then_die, checkpoint_every=10
        )
    restored = SearchState.from_json(saved["json"])
    assert restored.iteration == 30
    resumed = search(claims, hidden, iterations=60, seed=11)[0].run(restored)
    assert resumed.labels == uninterrupted.labels
    assert resumed.trace == uninterrupted.trace
    assert json.loads(resumed.to_json()) == json.loads(uninterrupted.to_json())


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 33, 64])
def test_tree_order_holds_every_other_item_exactly_once(n):
    order = tree_order(list(range(n)))
    assert sorted(query for query, _ in order) == list(range(n))
    for query, demos in order:
        assert sorted(demos) == [i for i in range(n) if i != query]


def test_tree_order_prompts_share_prefixes():
    n = 64
    tree = tree_order(list(range(n)))
    naive = naive_order(list(range(n)))

    def distinct_prefix_items(order):
        # Demonstrations computed when the prompts are walked in sorted order with prefix reuse.
        prompts = sorted(demos + [("q", q)] for q, demos in order)
        total, previous = 0, []
        for p in prompts:
            shared = 0
            while shared < min(len(p), len(previous)) and p[shared] == previous[shared]:
                shared += 1
            total += len(p) - shared
            previous = p
        return total

    assert distinct_prefix_items(tree) <= n * (6 + 2)  # n (log2 n + 2)
    assert distinct_prefix_items(naive) > n * n / 4


def test_tree_scores_equal_the_same_prompts_scored_independently(tiny_engine):
    claims = [
        IcmClaim(i, f"g{i // 2}", f"Should question number {i // 2} pass?", ["Yes", "No"][i % 2], i % 2)
        for i in range(24)
    ]
    labels = [c.gold for c in claims]
    requests = [
        ScoreRequest(
            few_shot_prompt(
                "Aldoria",
                [(claims[d].question, claims[d].option, labels[d]) for d in demos],
                (claims[q].question, claims[q].option),
            ),
            CANDIDATES,
        )
        for q, demos in tree_order(list(range(len(claims))))
    ]
    before = tiny_engine.usage.snapshot()
    shared = tiny_engine.score(requests, reuse_prefix=True)
    reused = tiny_engine.usage.since(before)
    independent = tiny_engine.score(requests, reuse_prefix=False)
    assert [v for r in shared for v in r] == pytest.approx([v for r in independent for v in r], abs=1e-4)
    assert reused.tokens_reused > reused.tokens_computed
