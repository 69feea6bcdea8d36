"""Prompts and reply schemas for trait extraction, profiles and monologue prompts (no Dagster here).

Every template's hash is part of the code version of the assets that use it, so
changing a prompt marks what it feeds stale.
"""

from __future__ import annotations

from persona_platform.persona_assets.provenance import text_hash
from persona_platform.persona_assets.structured_output import object_schema, schema_text, text_field

BELIEF, MEMORY, PERSONALITY = "belief", "memory", "personality"
TRAITS = (BELIEF, MEMORY, PERSONALITY)

SYSTEM = "You analyse what school board members say in public meetings. Answer with JSON only."

SCREEN_QUESTION = {
    BELIEF: "Does the excerpt state an opinion, belief, value or stance held by {name}? "
    "If so, summarize the stance in one sentence.",
    MEMORY: "Does the excerpt tell a personal story or memory of {name}? "
    "If so, summarize it as one structured fact (who, what, when).",
    PERSONALITY: "Does the excerpt reveal {name}'s preferences, tendencies, behaviour, emotions or values? "
    "If so, summarize the quality in one sentence.",
}
SCREEN_TEMPLATE = (
    'Excerpt of {name} at a school board meeting:\n"""\n{chunk}\n"""\n\n{question}\n'
    'Reply as {{"relevant": true or false, "summary": "..."}}.'
)

QUESTION_GOAL = {
    BELIEF: "draws out this stance",
    MEMORY: "invites {name} to reflect on this memory",
    PERSONALITY: "would reveal this quality",
}
QUESTION_TEMPLATE = (
    "What we know about {name} ({trait}): {summary}\n\n"
    'Write one direct question to {name} that {goal}. Reply as {{"question": "..."}}.'
)

MONOLOGUE_TEMPLATE = (
    '{name} said this at a school board meeting:\n"""\n{monologue}\n"""\n\n'
    "Write the natural, open-ended question someone could have asked {name} that would draw out "
    'this answer. Reply as {{"question": "..."}}.'
)

PARTIAL_PROFILE_TEMPLATE = (
    'Remarks of {name}, a school board member:\n"""\n{remarks}\n"""\n\n'
    "Write an analytical profile of {name}: beliefs, priorities, manner of speaking, "
    "recurring concerns."
)
CONSOLIDATE_TEMPLATE = (
    "Partial profiles of {name}, each from different remarks:\n\n{partials}\n\n"
    "Merge them into one consistent profile of {name}."
)
INTERVIEW_TEMPLATE = (
    "Profile of {name}:\n{profile}\n\nWrite {count} interview questions that test whether someone "
    'speaking as {name} stays true to this profile. Reply as {{"questions": ["...", ...]}}.'
)


def screening_schema(summary_chars: int) -> dict:
    return object_schema({"relevant": {"type": "boolean"}, "summary": text_field(summary_chars)})


def question_schema(question_chars: int) -> dict:
    return object_schema({"question": text_field(question_chars)})


def interview_schema(count: int, question_chars: int) -> dict:
    return object_schema(
        {
            "questions": {
                "type": "array",
                "items": text_field(question_chars),
                "minItems": count,
                "maxItems": count,
            }
        }
    )


def chat(user: str) -> tuple[tuple[str, str], ...]:
    return (("system", SYSTEM), ("user", user))


def screening_messages(trait: str, name: str, chunk: str) -> tuple[tuple[str, str], ...]:
    question = SCREEN_QUESTION[trait].format(name=name)
    return chat(SCREEN_TEMPLATE.format(name=name, chunk=chunk, question=question))


def question_messages(trait: str, name: str, summary: str) -> tuple[tuple[str, str], ...]:
    goal = QUESTION_GOAL[trait].format(name=name)
    return chat(QUESTION_TEMPLATE.format(name=name, trait=trait, summary=summary, goal=goal))


def monologue_messages(name: str, monologue: str) -> tuple[tuple[str, str], ...]:
    return chat(MONOLOGUE_TEMPLATE.format(name=name, monologue=monologue))


TRAIT_HASH = text_hash(
    "\n".join(
        [
            SYSTEM,
            SCREEN_TEMPLATE,
            QUESTION_TEMPLATE,
            *SCREEN_QUESTION.values(),
            *QUESTION_GOAL.values(),
            schema_text(screening_schema(1)),
            schema_text(question_schema(1)),
        ]
    )
)
MONOLOGUE_HASH = text_hash("\n".join([SYSTEM, MONOLOGUE_TEMPLATE, schema_text(question_schema(1))]))
PROFILE_HASH = text_hash(
    "\n".join(
        [
            PARTIAL_PROFILE_TEMPLATE,
            CONSOLIDATE_TEMPLATE,
            INTERVIEW_TEMPLATE,
            schema_text(interview_schema(1, 1)),
        ]
    )
)
