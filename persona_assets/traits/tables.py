"""Rows of the traits tables (no Dagster here)."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from persona_platform.persona_assets.provenance import row_ref
from persona_platform.persona_assets.review import REVIEW_TABLE, reviewed
from persona_platform.persona_assets.structured_output import Parsed
from persona_platform.persona_assets.traits.extraction import Profile, Screening

SCREENING_SCHEMA = {
    "agent": pl.String,
    "trait": pl.String,
    "chunk_id": pl.String,
    "monologue_id": pl.String,
    "chunk": pl.String,
    "relevant": pl.Boolean,
    "kept": pl.Boolean,
    "summary": pl.String,
    "reply": pl.String,
    "failure": pl.String,
}
# A generated question and the text downstream assets use: the reviewed one where a person reviewed it.
QUESTION_COLUMNS = {
    "generated_question": pl.String,
    "question": pl.String,
    "review": pl.String,
    "reply": pl.String,
    "failure": pl.String,
}
PROBE_SCHEMA = {
    "agent": pl.String,
    "trait": pl.String,
    "chunk_id": pl.String,
    "summary": pl.String,
    **QUESTION_COLUMNS,
}
MONOLOGUE_PROMPT_SCHEMA = {
    "agent": pl.String,
    "monologue_id": pl.String,
    "monologue": pl.String,
    **QUESTION_COLUMNS,
}
PROFILE_SCHEMA = {
    "agent": pl.String,
    "profile": pl.String,
    "partial_profiles": pl.List(pl.String),
    "interview_questions": pl.List(pl.String),
    "monologues_used": pl.Int64,
    "failure": pl.String,
}
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
        schema = table.split(".")[0]
        question, decision, review_ref = reviewed(
            f"{table}:{row_id}", generated, reviews, f"{schema}.{REVIEW_TABLE}"
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
        "dropped_by_review": dropped,
    }
