"""Asking the judge: absolute scores per aspect and pairwise comparisons in both orders (no Dagster here)."""

from __future__ import annotations

from collections.abc import Sequence

from persona_platform.persona_assets.judging.outcomes import ORDERS, ordered, winner_of
from persona_platform.persona_assets.judging.rubrics import (
    ASPECTS,
    Item,
    absolute_messages,
    comparison_schema,
    judgment_schema,
    pairwise_messages,
)
from persona_platform.persona_assets.judging.tables import comparison_row, judgment_row
from persona_platform.persona_assets.responses.tasks import AGENT, BASELINE
from persona_platform.persona_assets.structured_output import ask_structured
from persona_platform.resources.llm import ChatPrompt, Engine


def score_responses(
    engine: Engine,
    items: dict[str, Item],
    responses: Sequence[dict],
    max_chars: int,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[dict]:
    """One judgment row per response and aspect of its task, all in one batch on the base model."""
    plan = [(r, aspect) for r in responses for aspect in ASPECTS[r["task"]]]
    chats = [ChatPrompt(absolute_messages(aspect, items[r["item_id"]], r["response"])) for r, aspect in plan]
    answers = ask_structured(
        engine, chats, judgment_schema(max_chars), max_chars, temperature=temperature, seed=seed
    )
    return [
        judgment_row(r, items[r["item_id"]], aspect, reply, parsed)
        for (r, aspect), (reply, parsed) in zip(plan, answers, strict=True)
    ]


def compare_pairs(
    engine: Engine,
    items: dict[str, Item],
    responses: Sequence[dict],
    max_chars: int,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[dict]:
    """Pair the agent's sample i with the baseline's sample i of the same item and setting (no best-of-n);
    judge each pair with the agent as A and again with the baseline as A; one row per pair."""
    by_key = {(r["item_id"], r["setting"], r["sample"], r["system"]): r for r in responses}
    pairs = sorted(k[:3] for k in by_key if k[3] == AGENT and (*k[:3], BASELINE) in by_key)
    chats = []
    for key in pairs:
        agent_text, baseline_text = by_key[(*key, AGENT)]["response"], by_key[(*key, BASELINE)]["response"]
        chats += [
            ChatPrompt(pairwise_messages(items[key[0]], *ordered(order, agent_text, baseline_text)))
            for order in ORDERS
        ]
    answers = ask_structured(
        engine, chats, comparison_schema(max_chars), max_chars, temperature=temperature, seed=seed
    )
    rows = []
    for index, key in enumerate(pairs):
        replies = dict(zip(ORDERS, answers[2 * index : 2 * index + 2], strict=True))
        verdicts = {
            order: winner_of(parsed.value["winner"] if parsed.ok else None, order)
            for order, (_, parsed) in replies.items()
        }
        rows.append(
            comparison_row(items[key[0]], by_key[(*key, AGENT)], by_key[(*key, BASELINE)], verdicts, replies)
        )
    return rows
