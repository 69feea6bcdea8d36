"""Rows of the traits tables (no Dagster here)."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from persona_platform.persona_assets.columns import columns
from persona_platform.persona_assets.provenance import row_ref
from persona_platform.persona_assets.review import REVIEW_TABLE, reviewed
from persona_platform.persona_assets.structured_output import Parsed
from persona_platform.persona_assets.traits.extraction import Profile, Screening

_AGENT = ("agent", pl.String, "the agent (its partition key)")
_TRAIT = ("trait", pl.String, "the trait: belief, memory or personality")
_REPLY = ("reply", pl.String, "the model's reply as generated")
_FAILURE = ("failure", pl.String, "why the reply is not one JSON value valid for its schema; null when it is")

SCREENING_SCHEMA = columns(
    _AGENT,
    _TRAIT,
    ("chunk_id", pl.String, "the chunk: {monologue row id}#{0-based chunk index}"),
    ("monologue_id", pl.String, "the chunk's monologue in agents.monologues"),
    ("chunk", pl.String, "the chunk's text: up to 200 words (by default) of the monologue"),
    (
        "relevant",
        pl.Boolean,
        "the model's verdict: whether the chunk shows the trait; null when the reply failed",
    ),
    (
        "kept",
        pl.Boolean,
        "true for the agent's first relevant chunks of the trait, up to the cap (25 by default): probe items",
    ),
    (
        "summary",
        pl.String,
        "the model's summary of what the chunk shows of the trait; null when the reply failed",
    ),
    _REPLY,
    _FAILURE,
)
# A generated question and the text downstream assets use: the reviewed one where a person reviewed it.
QUESTION_COLUMNS = columns(
    ("generated_question", pl.String, "the question as the model generated it; null when the reply failed"),
    (
        "question",
        pl.String,
        "the question downstream assets use: the reviewed text where a person reviewed it, else the "
        "generated one",
    ),
    (
        "review",
        pl.String,
        "a person's decision: keep or edit; null when not reviewed (dropped ones are no row)",
    ),
    _REPLY,
    _FAILURE,
)
PROBE_SCHEMA = columns(
    _AGENT,
    _TRAIT,
    (
        "chunk_id",
        pl.String,
        "the kept chunk the question probes (traits.trait_screenings row {trait}/{chunk_id})",
    ),
    ("summary", pl.String, "the screening's summary of the trait item: the question's source and reference"),
    QUESTION_COLUMNS,
)
MONOLOGUE_PROMPT_SCHEMA = columns(
    _AGENT,
    ("monologue_id", pl.String, "the monologue's row in agents.monologues"),
    ("monologue", pl.String, "the monologue's text: what the question should draw out, the task's reference"),
    QUESTION_COLUMNS,
)
PROFILE_SCHEMA = columns(
    _AGENT,
    ("profile", pl.String, "the consolidated persona profile the baseline is told; empty without monologues"),
    (
        "partial_profiles",
        pl.List(pl.String),
        "a partial profile per packed block of monologues, merged into it",
    ),
    (
        "interview_questions",
        pl.List(pl.String),
        "questions that test adherence to the profile; empty when their reply failed",
    ),
    (
        "monologues_used",
        pl.Int64,
        "the agent's longest monologues read for the profile (20 at most by default)",
    ),
    (
        "failure",
        pl.String,
        "why the interview questions' reply is not valid, or 'no monologues'; null otherwise",
    ),
)
MONOLOGUES = "agents.monologues"


def screening_id(screening: Screening) -> str:
    return (
        f"{screening.trait}/{screening.chunk.chunk_id}"  # chunk ids start with the agent's monologue row id
    )


def screening_rows(agent: str, screenings: Sequence[Screening], kept_ids: set[str]) -> list[dict]:
    rows = []
    for s in screenings:
        row_id = screening_id(s)
        rows.append(
            {
                "row_id": row_id,
                "agent": agent,
                "trait": s.trait,
                "chunk_id": s.chunk.chunk_id,
                "monologue_id": s.chunk.monologue_id,
                "chunk": s.chunk.text,
                "relevant": bool(s.parsed.value["relevant"]) if s.parsed.ok else None,
                "kept": row_id in kept_ids,
                "summary": s.parsed.value["summary"] if s.parsed.ok else None,
                "reply": s.reply,
                "failure": s.parsed.failure,
                "input_ids": [row_ref(MONOLOGUES, s.chunk.monologue_id)],
            }
        )
    return rows


def question_row(
    row_id: str, table: str, reply: str, parsed: Parsed, reviews: pl.DataFrame | None, inputs: list[str]
) -> dict | None:
    """The question columns of one generated question; None when a review dropped it."""
    generated = parsed.value["question"] if parsed.ok else None
    question, decision, review_ref = (None, None, None)
    if generated is not None:
        question, decision, review_ref = reviewed(
            f"{table}:{row_id}", generated, reviews, f"traits.{REVIEW_TABLE}"
        )
        if question is None:
            return None
    return {
        "row_id": row_id,
        "generated_question": generated,
        "question": question,
        "review": decision,
        "reply": reply,
        "failure": parsed.failure,
        "input_ids": inputs + ([review_ref] if review_ref else []),
    }


def profile_row(agent: str, profile: Profile, monologue_ids: list[str]) -> dict:
    return {
        "row_id": agent,
        "agent": agent,
        "profile": profile.text,
        "partial_profiles": list(profile.partials),
        "interview_questions": list(profile.interview_questions),
        "monologues_used": len(monologue_ids),
        "failure": profile.failure,
        "input_ids": [row_ref(MONOLOGUES, mid) for mid in monologue_ids],
    }


def monologues_of(monologues: pl.DataFrame, agent: str) -> list[tuple[str, str]]:
    """The agent's monologues as (row id, text), in meeting order."""
    part = monologues.filter(pl.col("agent") == agent).sort("meeting_id", "turn")
    return list(zip(part["row_id"], part["text"], strict=True))


def probe_rows(
    items: pl.DataFrame, answers: Sequence[tuple[str, Parsed]], reviews: pl.DataFrame | None, table: str
) -> tuple[list[dict], int]:
    """A probe question row per kept trait item (its reply parsed); and how many a review dropped."""
    rows, dropped = [], 0
    screenings = table.split(".")[0] + ".trait_screenings"
    for item, (reply, parsed) in zip(items.iter_rows(named=True), answers, strict=True):
        row = question_row(
            item["row_id"], table, reply, parsed, reviews, [row_ref(screenings, item["row_id"])]
        )
        if row is None:
            dropped += 1
            continue
        rows.append(
            {
                **row,
                "agent": item["agent"],
                "trait": item["trait"],
                "chunk_id": item["chunk_id"],
                "summary": item["summary"],
            }
        )
    return rows, dropped


def monologue_prompt_rows(
    items: Sequence[tuple[str, str, str]],
    answers: Sequence[tuple[str, Parsed]],
    reviews: pl.DataFrame | None,
    table: str,
) -> tuple[list[dict], int]:
    """A prompt row per (agent, monologue id, monologue); and how many a review dropped."""
    rows, dropped = [], 0
    for (agent, mid, text), (reply, parsed) in zip(items, answers, strict=True):
        row = question_row(mid, table, reply, parsed, reviews, [row_ref(MONOLOGUES, mid)])
        if row is None:
            dropped += 1
            continue
        rows.append({**row, "agent": agent, "monologue_id": mid, "monologue": text})
    return rows, dropped


def screening_table(frame: pl.DataFrame) -> tuple[list[str], list[tuple]]:
    """Header and rows of the screenings per agent and trait: screened, relevant, kept and failed."""
    counts = (
        frame.group_by("agent", "trait")
        .agg(
            pl.len().alias("screened"),
            pl.col("relevant").sum().alias("relevant"),
            pl.col("kept").sum().alias("kept"),
            pl.col("failure").is_not_null().sum().alias("failed"),
        )
        .sort("agent", "trait")
    )
    return counts.columns, counts.rows()


def question_metadata(frame: pl.DataFrame, dropped: int) -> dict:
    return {
        "failures": int(frame["failure"].is_not_null().sum()),
        "reviewed": int(frame["review"].is_not_null().sum()),
        "dropped_by_review_in_step": dropped,
    }
