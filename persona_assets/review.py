"""`persona review-questions`: a person keeps, edits or drops each generated question.

Reviews are written to the warehouse as soon as they are made, so a session can
stop at any question and the next one resumes where it left off. The assets that
generate questions apply the reviews when they next materialize: the reviewed
text replaces the generated one, a dropped question is left out, and the review
row joins the question's lineage.
"""

from __future__ import annotations

import getpass
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl

from persona_platform.persona_assets.columns import columns
from persona_platform.persona_assets.provenance import Provenance, result_frame

KEEP, EDIT, DROP = "keep", "edit", "drop"
REVIEW_TABLE = "question_reviews"
REVIEW_VERSION = "review-1"
REVIEW_SCHEMA = columns(
    (
        "question_ref",
        pl.String,
        "the reviewed question's row, schema.table:row_id (votes.motions, or an experiment's "
        "{experiment}__traits.probe_questions or {experiment}__traits.monologue_prompts)",
    ),
    ("original", pl.String, "the question as generated, as the reviewer saw it"),
    ("decision", pl.String, "keep, edit or drop"),
    ("text", pl.String, "the text to use: the edited text for edit, the original for keep and drop"),
    ("reviewer", pl.String, "the reviewer's login name"),
    ("reviewed_at", pl.String, "when the decision was made: UTC, ISO 8601 to the second"),
)
# Which questions each kind reviews: (schema, table, column of the generated text, order column). Motions
# are shared; probe questions and monologue prompts are an experiment's (its generator wrote them), so
# their rows are in the experiment's schema and a review names the experiment's row. The reviews of a kind
# are in its schema's question_reviews table, one for every experiment.
SOURCES = {
    "votes": ("votes", "motions", "generated_question", "source_row"),
    "traits": ("traits", "probe_questions", "generated_question", "row_id"),
    "monologues": ("traits", "monologue_prompts", "generated_question", "row_id"),
}
PER_EXPERIMENT = frozenset({"traits", "monologues"})


def questions_of(frame: pl.DataFrame, schema: str, table: str, column: str) -> list[Question]:
    """The questions to review; a generation that failed has no text to review."""
    return [
        Question(f"{schema}.{table}:{r['row_id']}", r[column], tuple(r["input_ids"]))
        for r in frame.iter_rows(named=True)
        if r[column] is not None
    ]


@dataclass(frozen=True)
class Question:
    ref: str  # "schema.table:row_id" of the row that holds the question
    text: str
    inputs: tuple[str, ...] = ()  # what the question was generated from; the review's lineage


def pending(questions: list[Question], reviews: pl.DataFrame | None) -> list[Question]:
    done = set() if reviews is None else set(reviews["question_ref"])
    return [q for q in questions if q.ref not in done]


def review_row(question: Question, decision: str, text: str, reviewer: str) -> dict:
    return {
        "row_id": question.ref,
        "question_ref": question.ref,
        "original": question.text,
        "decision": decision,
        "text": text,
        "reviewer": reviewer,
        "reviewed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "partition_key": None,
        "input_ids": list(question.inputs),
    }


def run_review(
    questions: list[Question],
    reviews: pl.DataFrame | None,
    save: Callable[[pl.DataFrame], None],
    ask: Callable[[str], str] = input,
    say: Callable[[str], None] = print,
) -> int:
    """Review what is pending; each decision is saved at once. Returns how many were reviewed."""
    todo = pending(questions, reviews)
    already = len(questions) - len(todo)
    say(
        f"{len(questions)} questions, {already} reviewed before, {len(todo)} to go. "
        "[k]eep, [e]dit, [d]rop, [s]kip for now, [q]uit."
    )
    provenance = Provenance(f"review-{uuid.uuid4().hex[:12]}", REVIEW_VERSION)
    rows = [] if reviews is None else reviews.to_dicts()
    reviewer = getpass.getuser()
    made = 0
    for index, question in enumerate(todo, start=already + 1):
        say(f"\n[{index}/{len(questions)}] {question.text}")
        while True:
            try:
                answer = ask("keep/edit/drop/skip/quit> ").strip().lower()[:1]
            except EOFError:
                answer = "q"
            if answer in ("k", "e", "d", "s", "q"):
                break
            say("please answer k, e, d, s or q")
        if answer == "q":
            break
        if answer == "s":
            continue
        decision, text = {"k": (KEEP, question.text), "d": (DROP, question.text)}.get(answer, (EDIT, None))
        if decision == EDIT:
            text = ask("new text> ").strip() or question.text
        rows = [r for r in rows if r["question_ref"] != question.ref] + [
            review_row(question, decision, text, reviewer)
        ]
        save(result_frame(rows, REVIEW_SCHEMA, provenance))  # earlier rows keep their own run id
        made += 1
    say(
        f"\n{made} reviewed in this session. "
        "Rematerialize the questions' assets (and downstream) to use them."
    )
    return made


def reviewed(
    ref: str, generated: str, reviews: pl.DataFrame | None, review_table: str
) -> tuple[str | None, str | None, str | None]:
    """(text to use, or None when dropped; the decision or None; the review's row ref or None)."""
    if reviews is None:
        return generated, None, None
    match = reviews.filter(pl.col("question_ref") == ref)
    if match.height == 0:
        return generated, None, None
    review = match.row(0, named=True)
    text = None if review["decision"] == DROP else review["text"]
    return text, review["decision"], f"{review_table}:{review['row_id']}"
