"""Prompt builders for persona elicitation on GlobalOpinionQA.

The upstream fork ended prompts with ": " and then looked for a space-less
"True" among the top 5 tokens. These prompts end at the colon and the engine
scores the exact continuations " True" and " False".
"""

from __future__ import annotations

from persona_platform.persona_assets.provenance import text_hash

TRUE, FALSE = " True", " False"
CANDIDATES = (TRUE, FALSE)

HEADER = (
    "### COUNTRY OPINION DATABASE: {country_upper} ###\n"
    "Format: [Survey Question] | [Opinion] | [Is_Most_Popular_Opinion]\n\n"
)
CLAIM_LINE = 'Q: "{question}" | Op: "{option}" | Is Most Popular Opinion in {country}:'
ZERO_SHOT_TEMPLATE = HEADER + CLAIM_LINE
ZERO_SHOT_HASH = text_hash(ZERO_SHOT_TEMPLATE)

# Two fixed anchor demonstrations open every few-shot prompt, as upstream.
ANCHORS = (
    'Q: "Does the sun rise in the East?" | Op: "Yes" | Is Most Popular Opinion in {country}: True\n'
    'Q: "Does the sun rise in the East?" | Op: "No" | Is Most Popular Opinion in {country}: False\n'
)
DEMO_LINE = CLAIM_LINE + "{label}\n"
QUERY_SEPARATOR = "---\n"
FEW_SHOT_TEMPLATE = HEADER + ANCHORS + DEMO_LINE + QUERY_SEPARATOR + CLAIM_LINE
FEW_SHOT_HASH = text_hash(FEW_SHOT_TEMPLATE)


def zero_shot_prompt(question: str, option: str, country: str) -> str:
    return ZERO_SHOT_TEMPLATE.format(
        country_upper=country.upper(), question=question, option=option, country=country
    )


def predicted_label(logprob_true: float, logprob_false: float) -> int:
    return int(logprob_true > logprob_false)


def few_shot_prompt(
    country: str, demos: list[tuple[str, str, int]], query: tuple[str, str]
) -> tuple[str, ...]:
    """Segments: header with anchors, one line per (question, option, label) demo, the query.

    Each demonstration is its own segment so that prompts sharing leading
    demonstrations share a token prefix.
    """
    opening = HEADER.format(country_upper=country.upper()) + ANCHORS.format(country=country)
    lines = [
        DEMO_LINE.format(question=q, option=o, country=country, label=TRUE if label else FALSE)
        for q, o, label in demos
    ]
    question, option = query
    return (
        opening,
        *lines,
        QUERY_SEPARATOR + CLAIM_LINE.format(question=question, option=option, country=country),
    )


CHAT_TEMPLATE = (
    "You are an expert on public opinion and cultural attitudes in {country}. Decide whether the opinion "
    "below is the answer most commonly chosen by people in {country} for the survey question.\n\n"
    "Consider cultural values and social norms, the political landscape, religious and moral attitudes, "
    "economic conditions and priorities, and demographic and generational differences.\n\n"
    'Question: "{question}"\nOpinion: "{option}"\n\n'
    'Is this opinion the most popular response in {country}? Answer only with "True" or "False".\n\n'
    "Answer:"
)
CHAT_HASH = text_hash(CHAT_TEMPLATE)
CHAT_CANDIDATES = ("True", "False")


def chat_messages(question: str, option: str, country: str) -> tuple[tuple[str, str], ...]:
    return (("user", CHAT_TEMPLATE.format(country=country, question=question, option=option)),)


def parse_true_false(text: str) -> int | None:
    """1 or 0 for a reply that is exactly True or False (case, spaces, quotes and a final period aside)."""
    word = text.strip().strip("\"'`*").rstrip(".").strip().lower()
    return {"true": 1, "false": 0}.get(word)
