"""Answer distributions over option letters, and similarity to a country's survey distribution.

Similarity is 1 - Jensen-Shannon distance with base-2 logarithms (Durmus et al. 2023):
1 for identical distributions, 0 for disjoint ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from persona_platform.persona_assets.agents.corpora import adapter_prompt
from persona_platform.persona_assets.provenance import text_hash
from persona_platform.resources.llm.engine import ChatPrompt

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
OPINION_TEMPLATE = "{question}\n\n{options}\n\nAnswer with the letter of one option."
OPINION_HASH = text_hash(OPINION_TEMPLATE)


def opinion_messages(question: str, options: Sequence[str]) -> tuple[tuple[str, str], ...]:
    if len(options) > len(LETTERS):
        raise ValueError(f"{len(options)} options; at most {len(LETTERS)} can be lettered")
    listed = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    return (("user", OPINION_TEMPLATE.format(question=question, options=listed)),)


def opinion_prompt(question: str, options: Sequence[str]) -> ChatPrompt:
    """The chat every persona answers a survey question in: one user turn, no system turn, which is how an
    agent's adapter was trained; the base model gets the very same prompt, so the personas compare."""
    return adapter_prompt(opinion_messages(question, options))


def option_letters(n: int) -> tuple[str, ...]:
    return tuple(LETTERS[:n])


def normalize_logprobs(logprobs: Sequence[float]) -> list[float]:
    """Probabilities of the option letters, renormalised over the letters only."""
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


def normalize(values: Sequence[float]) -> list[float]:
    total = sum(values)
    return [v / total for v in values]


def js_distance(p: Sequence[float], q: Sequence[float]) -> float:
    if len(p) != len(q):
        raise ValueError(f"distributions of different lengths: {len(p)} and {len(q)}")
    p, q = normalize(p), normalize(q)
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]

    def kl(a, b):
        return sum(x * math.log2(x / y) for x, y in zip(a, b, strict=True) if x > 0)

    divergence = max(0.0, (kl(p, m) + kl(q, m)) / 2)
    return math.sqrt(min(1.0, divergence))


def similarity(p: Sequence[float], q: Sequence[float]) -> float:
    return 1.0 - js_distance(p, q)
