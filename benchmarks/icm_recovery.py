"""Does ICM find a signal that is there, and only then? A sweep on the planted-signal engine.

Each cell of the sweep is a (salience, strength) pair of the planted-signal engine
(`resources/llm/simulated.py`): how much more likely the truth is than each other concept
before any demonstration, and how far one demonstration moves the learner. Each cell holds
``WORLDS`` worlds (seeded); each world has ``TRAIN_QUESTIONS`` questions (two claims each) to
label and ``TEST_QUESTIONS`` more to test on. Per world:

- agreement with gold over the train claims of: ICM in each consistency mode (unlabelled
  claims count as disagreeing), zero-shot (margin > 0), zero-shot + per-question argmax
  (the likelier claim of each question True), and a random consistent labelling;
- the energy of the gold labelling and of ICM's (exactly_one), scored the same way;
- few-shot test accuracy with every train claim as a demonstration, labelled by gold, by ICM
  (exactly_one) and by the random labelling.

Cells report the mean and, for the paired comparison that matters (ICM exactly_one minus
zero-shot + argmax, over worlds), a 95% t interval from scipy.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace

import numpy as np
from scipy import stats

from persona_platform.persona_assets.elicitation.evaluation import Condition, TestClaim, condition_margins
from persona_platform.persona_assets.elicitation.icm import (
    CONSISTENCY_MODES,
    ClaimScorer,
    IcmClaim,
    IcmParams,
    IcmSearch,
)
from persona_platform.persona_assets.elicitation.prompts import CANDIDATES, zero_shot_prompt
from persona_platform.resources.llm.engine import ScoreRequest
from persona_platform.resources.llm.simulated import PlantedSignalEngine, WorldSpec

SALIENCES = (0.0, 0.75, 1.5, 3.0)
STRENGTHS = (0.05, 0.2, 0.5)
WORLDS = 8
TRAIN_QUESTIONS = 24
TEST_QUESTIONS = 12
ITERATIONS = 150
RECENCIES = (0.5, 1.0)  # the last demonstration weighs 1.5 or 2 times the first
RECOVERED = 0.9  # mean agreement with gold at which a cell counts as recovering the truth


def world_engine(spec: WorldSpec) -> PlantedSignalEngine:
    return PlantedSignalEngine(model_id=f"simulated:{spec.label()}", spec=spec)


def split_world(engine: PlantedSignalEngine) -> tuple[list[IcmClaim], list[TestClaim], str]:
    world = engine.worlds[0]
    train = [c for c in world.claims if c.group < TRAIN_QUESTIONS]
    test = [c for c in world.claims if c.group >= TRAIN_QUESTIONS]
    icm_claims = [IcmClaim(uid, str(c.group), c.question, c.option, c.gold) for uid, c in enumerate(train)]
    test_claims = [TestClaim(f"{c.group}/{c.option}", c.question, c.option, c.gold) for c in test]
    return icm_claims, test_claims, world.country


def agreement(labels, claims) -> float:
    return sum(label == c.gold for label, c in zip(labels, claims, strict=True)) / len(claims)


def zero_shot_margins(engine, claims, country) -> list[float]:
    requests = [ScoreRequest(zero_shot_prompt(c.question, c.option, country), CANDIDATES) for c in claims]
    return [t - f for t, f in engine.score(requests)]


def per_question_argmax(margins, claims) -> list[int]:
    best: dict[str, int] = {}
    for uid, c in enumerate(claims):
        if c.group not in best or margins[uid] > margins[best[c.group]]:
            best[c.group] = uid
    return [int(best[c.group] == uid) for uid, c in enumerate(claims)]


def random_consistent(claims, seed: int) -> list[int]:
    rng = random.Random(f"random-labels:{seed}")
    chosen = {
        g: rng.choice([u for u, c in enumerate(claims) if c.group == g]) for g in {c.group for c in claims}
    }
    return [int(chosen[c.group] == uid) for uid, c in enumerate(claims)]


def few_shot_accuracy(engine, country, claims, labels, tests) -> float:
    demos = tuple(
        (c.question, c.option, label) for c, label in zip(claims, labels, strict=True) if label is not None
    )
    margins = condition_margins(engine, country, Condition("x", len(demos), 0, demos, ()), tests)
    return sum(int(m > 0) == t.label for m, t in zip(margins, tests, strict=True)) / len(tests)


def run_world(
    spec: WorldSpec, iterations: int = ITERATIONS, pool_order: str = "tree", modes=CONSISTENCY_MODES
) -> dict:
    """Every method on one world (the spec's seed), as the bench and the tests run it."""
    engine = world_engine(replace(spec, countries=1, questions=TRAIN_QUESTIONS + TEST_QUESTIONS))
    claims, tests, country = split_world(engine)
    out: dict = {"seed": spec.seed}
    found = {}
    for mode in modes:
        params = IcmParams(iterations=iterations, consistency=mode, pool_order=pool_order, seed=spec.seed)
        search = IcmSearch(claims, params, ClaimScorer(engine, country, claims, pool_order, params.seed))
        state = search.run()
        found[mode] = state.labels
        out[f"icm_{mode}"] = agreement(state.labels, claims)
    margins = zero_shot_margins(engine, claims, country)
    out["zero_shot"] = agreement([int(m > 0) for m in margins], claims)
    out["zero_shot_argmax"] = agreement(per_question_argmax(margins, claims), claims)
    random_labels = random_consistent(claims, spec.seed)
    out["random"] = agreement(random_labels, claims)
    gold = [c.gold for c in claims]
    if "exactly_one" in found:
        reference = IcmSearch(
            claims,
            IcmParams(consistency="exactly_one", pool_order=pool_order, seed=spec.seed),
            ClaimScorer(engine, country, claims, pool_order, spec.seed),
        )
        gold_metric, icm_metric = reference.metrics([gold, found["exactly_one"]])
        out["energy_gold"], out["energy_icm"] = gold_metric.energy, icm_metric.energy
        out["few_shot_gold"] = few_shot_accuracy(engine, country, claims, gold, tests)
        out["few_shot_icm"] = few_shot_accuracy(engine, country, claims, found["exactly_one"], tests)
        out["few_shot_random"] = few_shot_accuracy(engine, country, claims, random_labels, tests)
    return out


def summarize_cell(worlds: list[dict]) -> dict:
    keys = [k for k in worlds[0] if k != "seed"]
    cell = {k: round(float(np.mean([w[k] for w in worlds])), 3) for k in keys}
    gap = np.array([w["icm_exactly_one"] - w["zero_shot_argmax"] for w in worlds])
    interval = (
        stats.ttest_1samp(gap, 0.0).confidence_interval(0.95) if gap.std() > 0 else (gap.mean(), gap.mean())
    )
    cell["icm_minus_argmax"] = round(float(gap.mean()), 3)
    cell["icm_minus_argmax_ci"] = [round(float(interval[0]), 3), round(float(interval[1]), 3)]
    cell["icm_recovers"] = cell["icm_exactly_one"] >= RECOVERED
    cell["icm_beats_argmax"] = bool(interval[0] > 0)
    return cell


def run(saliences=SALIENCES, strengths=STRENGTHS, worlds=WORLDS, iterations=ITERATIONS) -> dict:
    cells = []
    started = time.perf_counter()
    for salience in saliences:
        for strength in strengths:
            results = [
                run_world(WorldSpec(seed=seed, salience=salience, strength=strength), iterations)
                for seed in range(worlds)
            ]
            cells.append(
                {"salience": salience, "strength": strength, "worlds": worlds, **summarize_cell(results)}
            )
    return {
        "benchmark": "icm_recovery",
        "iterations": iterations,
        "train_questions": TRAIN_QUESTIONS,
        "test_questions": TEST_QUESTIONS,
        "cells": cells,
        "pool_order": [order_comparison(recency, 2 * worlds, iterations) for recency in RECENCIES],
        "seconds": round(time.perf_counter() - started, 1),
    }


def order_comparison(recency: float, worlds: int, iterations: int) -> dict:
    """ICM (exactly_one) with tree and naive pool order on the same worlds, paired by world."""
    spec = WorldSpec(recency=recency)
    tree, naive = (
        [
            run_world(replace(spec, seed=seed), iterations, order, ("exactly_one",))["icm_exactly_one"]
            for seed in range(worlds)
        ]
        for order in ("tree", "naive")
    )
    diff = np.array(tree) - np.array(naive)
    test = stats.ttest_rel(tree, naive) if diff.std() > 0 else None
    return {
        "salience": spec.salience,
        "strength": spec.strength,
        "recency": recency,
        "worlds": worlds,
        "tree_mean": round(float(np.mean(tree)), 3),
        "naive_mean": round(float(np.mean(naive)), 3),
        "mean_difference": round(float(diff.mean()), 3),
        "worlds_differing": int((diff != 0).sum()),
        "p_value": None if test is None else round(float(test.pvalue), 3),
    }


def markdown(report: dict) -> str:
    lines = [
        f"### ICM recovery on the planted-signal engine ({report['train_questions']} train questions, "
        f"{report['test_questions']} test questions per world, K = {report['iterations']}, "
        f"{report['seconds']} s)",
        "",
        "Agreement with gold over train claims (mean over worlds); "
        "few-shot = test accuracy with every train claim as a demonstration; "
        "ICM − argmax = ICM (exactly_one) minus zero-shot + per-question argmax, 95% t interval over worlds.",
        "",
        "| salience | strength | worlds | ICM exactly_one | ICM at_most_one | ICM none "
        "| zero-shot | zero-shot + argmax | random "
        "| energy gold | energy ICM | few-shot gold | few-shot ICM | few-shot random | ICM − argmax [95% CI] "
        "| recovers (≥ 0.9) | beats argmax |",
        "|" + "---|" * 17,
    ]
    for c in report["cells"]:
        lo, hi = c["icm_minus_argmax_ci"]
        lines.append(
            f"| {c['salience']} | {c['strength']} | {c['worlds']} "
            f"| {c['icm_exactly_one']} | {c['icm_at_most_one']} | {c['icm_none']} "
            f"| {c['zero_shot']} | {c['zero_shot_argmax']} | {c['random']} "
            f"| {c['energy_gold']} | {c['energy_icm']} "
            f"| {c['few_shot_gold']} | {c['few_shot_icm']} | {c['few_shot_random']} "
            f"| {c['icm_minus_argmax']} [{lo}, {hi}] "
            f"| {'yes' if c['icm_recovers'] else 'no'} | {'yes' if c['icm_beats_argmax'] else 'no'} |"
        )
    lines += [
        "",
        "Tree vs naive pool order, ICM exactly_one, paired by world "
        "(a recency-weighted learner, so order changes answers):",
        "",
        "| recency | worlds | tree | naive | tree − naive | worlds differing | paired t p |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {o['recency']} | {o['worlds']} | {o['tree_mean']} | {o['naive_mean']} | {o['mean_difference']} "
        f"| {o['worlds_differing']} | {o['p_value']} |"
        for o in report["pool_order"]
    ]
    return "\n".join(lines)
