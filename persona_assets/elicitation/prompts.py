"""Prompt builders for persona elicitation on GlobalOpinionQA.

The upstream fork ended prompts with ": " and then looked for a space-less
"True" among the top 5 tokens. These prompts end at the colon and the engine
scores the exact continuations " True" and " False".
"""

from __future__ import annotations

from persona_assets.provenance import text_hash

TRUE, FALSE = " True", " False"
CANDIDATES = (TRUE, FALSE)

HEADER = (
    "### COUNTRY OPINION DATABASE: {country_upper} ###\n"
    "Format: [Survey Question] | [Opinion] | [Is_Most_Popular_Opinion]\n\n"
)
CLAIM_LINE = 'Q: "{question}" | Op: "{option}" | Is Most Popular Opinion in {country}:'
ZERO_SHOT_TEMPLATE = HEADER + CLAIM_LINE
ZERO_SHOT_HASH = text_hash(ZERO_SHOT_TEMPLATE)


def zero_shot_prompt(question: str, option: str, country: str) -> str:
    return ZERO_SHOT_TEMPLATE.format(
        country_upper=country.upper(), question=question, option=option, country=country
    )


def predicted_label(logprob_true: float, logprob_false: float) -> int:
    return int(logprob_true > logprob_false)
