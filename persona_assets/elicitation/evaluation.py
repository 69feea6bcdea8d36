"""Few-shot evaluation conditions, and the chat baseline's answers (no Dagster here).

A condition is one demonstration set: a method (gold, ICM or accuracy-matched
random labels), a number of examples k and a repeat. Each repeat draws its own
questions and their order from one seeded generator, whole questions at a time
(both labelled options of a question together, as upstream), up to k claims; for
a given (k, repeat) the three methods share the same claims in the same order and
differ only in the labels. k = M (every ICM-labelled claim) gives the headline ICM
and golden accuracies. Accuracy statistics are in ``accuracy``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from persona_platform.persona_assets.elicitation.accuracy import question_of
from persona_platform.persona_assets.elicitation.prompts import (
    CANDIDATES,
    CHAT_CANDIDATES,
    few_shot_prompt,
    parse_true_false,
    predicted_label,
)
from persona_platform.resources.llm.engine import ChatPrompt, Engine, GenerateRequest, ScoreRequest

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


def draw_by_question(pool: Sequence[DemoClaim], k: int, rng: random.Random) -> list[DemoClaim]:
    """Whole questions in a seeded order until k claims (a question that would pass k is skipped)."""
    questions: dict[str, list[DemoClaim]] = {}
    for claim in pool:
        questions.setdefault(question_of(claim.claim_id), []).append(claim)
    groups = list(questions.values())
    rng.shuffle(groups)
    subset: list[DemoClaim] = []
    for group in groups:
        if len(subset) + len(group) <= k:
            subset += group
        if len(subset) == k:
            break
    return subset


def build_conditions(
    pool: Sequence[DemoClaim], ks: Sequence[int], repeats: int, seed: int
) -> list[Condition]:
    rng = random.Random(seed)
    out = []
    for k in example_counts(ks, len(pool)):
        for repeat in range(repeats):
            subset = draw_by_question(pool, k, rng)
            wrong = sum(d.icm != d.gold for d in subset)
            flipped = set(rng.sample(range(len(subset)), wrong))
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


def condition_margins(
    engine: Engine, country: str, condition: Condition, tests: Sequence[TestClaim]
) -> list[float]:
    """Margins of every test claim under one demonstration set: one call, the prefix computed once."""
    requests = [
        ScoreRequest(few_shot_prompt(country, list(condition.demos), (t.question, t.option)), CANDIDATES)
        for t in tests
    ]
    return [t - f for t, f in engine.score(requests, reuse_prefix=True)]


@dataclass(frozen=True)
class ChatAnswers:
    """The chat baseline's answers: per repeat, each claim's reply and the label it gives (None: unparsed)."""

    replies: list[list[str]]
    predictions: list[list[int | None]]
    answered_by: str


def chat_answers(engine: Engine, chats: Sequence[Sequence[tuple[str, str]]], repeats: int) -> ChatAnswers:
    """Ask each chat whether its claim is the most popular answer.

    An engine that lays the chat out itself scores "True" against "False" after the template, exactly, once;
    an API applies its template remotely, so there the reply is asked for (each repeat with its own seed: a
    server that honours seeds still answers each repeat independently) and must be exactly True or False."""
    if engine.scores_chat_prompts:
        scores = engine.score([ScoreRequest(ChatPrompt(tuple(m)), CHAT_CANDIDATES) for m in chats])
        predictions = [predicted_label(t, f) for t, f in scores]
        return ChatAnswers(
            [["True" if p else "False" for p in predictions]], [predictions], f"local:{engine.model_id}"
        )
    replies = [
        engine.generate(
            [
                GenerateRequest(ChatPrompt(tuple(m)), max_new_tokens=5, temperature=0.0, seed=repeat)
                for m in chats
            ]
        )
        for repeat in range(repeats)
    ]
    return ChatAnswers(
        replies, [[parse_true_false(r) for r in repeat] for repeat in replies], f"api:{engine.model_id}"
    )
