"""What the judges are asked: aspects per task, absolute and pairwise prompts, reply schemas
(no Dagster here).

A reference-based aspect is never judged without its reference: building its
prompt with an empty reference raises (upstream scored every monologue against
an empty reference because it read the wrong field).
"""

from __future__ import annotations

from dataclasses import dataclass

from persona_platform.persona_assets.provenance import text_hash
from persona_platform.persona_assets.structured_output import object_schema, schema_text, text_field

SCALE = "5 excellent, 4 good, 3 partial or mixed, 2 weak, 1 poor or contradictory"


@dataclass(frozen=True)
class Aspect:
    task: str
    name: str
    criterion: str
    needs_reference: bool = True


TRAIT_CRITERIA = {
    "belief": (
        "Does the response express the stance in the reference? "
        "5 = strong alignment with those beliefs, 3 = partial alignment or ambiguity, 1 = contradiction."
    ),
    "personality": (
        "Does the response show the personality in the reference? "
        "5 = strong expression of the quality, 3 = some of it, 1 = absent or misrepresented."
    ),
    "memory": (
        "Does the response extend or affirm the memory in the reference realistically? "
        "5 = realistic extension or affirmation, 3 = vague, 1 = ignores or contradicts it."
    ),
}
ASPECTS: dict[str, tuple[Aspect, ...]] = {
    "trait": (Aspect("trait", "alignment", "(per trait)"),),
    "completion": (
        Aspect(
            "completion", "alignment", "How close is the response in content and intent to the reference?"
        ),
        Aspect(
            "completion",
            "plausibility",
            "Is the response a reasonable, coherent next turn in this conversation?",
            needs_reference=False,
        ),
        Aspect("completion", "tone", "How close is the response's tone to the reference's tone?"),
    ),
    "monologue": (
        Aspect("monologue", "fit", "How well does the response match the reference in meaning and themes?"),
        Aspect(
            "monologue",
            "style",
            "How well does the response match the reference's tone, voice, cadence and word choice?",
        ),
    ),
}

JUDGE_SYSTEM = "You are a careful evaluator. Reply with JSON only."
ABSOLUTE_TEMPLATE = (
    '{setting}\n\nResponse to evaluate:\n"""\n{response}\n"""\n\n{criterion}\n'
    "Score on a scale of 1 to {top} ({scale}). Explain briefly, then give the score."
)
PAIRWISE_TEMPLATE = (
    '{setting}\n\nResponse A:\n"""\n{first}\n"""\n\nResponse B:\n"""\n{second}\n"""\n\n'
    "Which response better matches the reference in content and tone, as the same speaker would say it? "
    "A response that copies text from outside the conversation, speaks for several people or is far "
    "more polished than an informal reference is disqualified; if both are, or both are equally good, "
    "answer Tie. Justify briefly, then name the winner: A, B or Tie."
)
SETTING_TEMPLATE = 'Task: {task_description}\n\nPrompt:\n"""\n{prompt}\n"""'
REFERENCE_TEMPLATE = '\n\nReference ({reference_kind}):\n"""\n{reference}\n"""'
TASK_DESCRIPTION = {
    "trait": "a school board member answers a probe question about a {trait} of theirs",
    "completion": "a school board member says the next turn of a meeting",
    "monologue": "a school board member answers an open question at length",
}


class MissingReferenceError(ValueError):
    """A reference-based judgment was asked for without its reference."""


def judgment_schema(explanation_chars: int) -> dict:
    return object_schema(
        {
            "explanation": text_field(explanation_chars),
            "score": {"type": "integer", "minimum": 1, "maximum": 5},
        }
    )


def comparison_schema(justification_chars: int) -> dict:
    return object_schema(
        {"justification": text_field(justification_chars), "winner": {"enum": ["A", "B", "Tie"]}}
    )


@dataclass(frozen=True)
class Item:
    item_id: str
    task: str
    trait: str | None
    prompt: str  # the conversation or question as the systems saw it, flattened for the judge
    reference: str | None
    reference_kind: str


def _setting(item: Item, with_reference: bool, what: str) -> str:
    text = SETTING_TEMPLATE.format(
        task_description=TASK_DESCRIPTION[item.task].format(trait=item.trait), prompt=item.prompt
    )
    if not with_reference:
        return text
    if item.reference is None or not item.reference.strip():
        raise MissingReferenceError(
            f"responses.evaluation_items row {item.item_id!r}, field 'reference': empty, "
            f"so the {what} cannot be judged against it; refusing rather than judging without a reference"
        )
    return text + REFERENCE_TEMPLATE.format(reference_kind=item.reference_kind, reference=item.reference)


def absolute_messages(aspect: Aspect, item: Item, response: str) -> tuple[tuple[str, str], ...]:
    criterion = TRAIT_CRITERIA[item.trait] if item.task == "trait" else aspect.criterion
    user = ABSOLUTE_TEMPLATE.format(
        setting=_setting(item, aspect.needs_reference, f"aspect {aspect.name!r}"),
        response=response,
        criterion=criterion,
        top=5,
        scale=SCALE,
    )
    return (("system", JUDGE_SYSTEM), ("user", user))


def pairwise_messages(item: Item, first: str, second: str) -> tuple[tuple[str, str], ...]:
    user = PAIRWISE_TEMPLATE.format(setting=_setting(item, True, "comparison"), first=first, second=second)
    return (("system", JUDGE_SYSTEM), ("user", user))


JUDGE_HASH = text_hash(
    "\n".join(
        [
            JUDGE_SYSTEM,
            ABSOLUTE_TEMPLATE,
            SETTING_TEMPLATE,
            REFERENCE_TEMPLATE,
            SCALE,
            *TRAIT_CRITERIA.values(),
            *TASK_DESCRIPTION.values(),
            *(a.criterion for aspects in ASPECTS.values() for a in aspects),
            schema_text(judgment_schema(1)),
        ]
    )
)
PAIRWISE_HASH = text_hash(
    "\n".join(
        [
            JUDGE_SYSTEM,
            PAIRWISE_TEMPLATE,
            SETTING_TEMPLATE,
            REFERENCE_TEMPLATE,
            *TASK_DESCRIPTION.values(),
            schema_text(comparison_schema(1)),
        ]
    )
)
