"""The vote tables: schemas and row builders of motions, vote records and vote predictions."""

from collections.abc import Callable, Sequence

import polars as pl

from persona_platform.persona_assets.provenance import file_ref, row_ref
from persona_platform.persona_assets.statistics import shown
from persona_platform.persona_assets.votes.prediction import (
    LABELS,
    SCORE_CANDIDATES,
    parse_final_vote,
    vote_prompt,
)
from persona_platform.resources.inputs.votes import Motion, VoteFile, resolve_votes
from persona_platform.resources.llm import Engine, GenerateRequest, ScoreRequest

MOTION_SCHEMA = {
    "context": pl.String,
    "generated_question": pl.String,
    "question": pl.String,
    "review": pl.String,
    "ayes": pl.List(pl.String),
    "nayes": pl.List(pl.String),
    "source_file": pl.String,
    "source_sha256": pl.String,
    "source_row": pl.Int64,
}
RECORD_SCHEMA = {"motion_id": pl.String, "agent": pl.String, "vote": pl.String, "name_as_written": pl.String}
PREDICTION_SCHEMA = {
    "agent": pl.String,
    "motion_id": pl.String,
    "method": pl.String,
    "truth": pl.String,
    "predicted": pl.String,
    "correct": pl.Boolean,
    "reply": pl.String,
    "logprob_aye": pl.Float64,
    "logprob_naye": pl.Float64,
}

# (motion, question as generated) ->
# (question to ask or None when dropped, review decision, the review's row ref)
Review = Callable[[Motion, str], tuple[str | None, str | None, str | None]]


def motion_rows(
    votes: VoteFile, generate_question: Callable[[str], str], review: Review
) -> tuple[list[dict], list[str]]:
    """A row per motion with the question a member answers; the ids of motions a review dropped."""
    rows, dropped = [], []
    for m in votes.motions:
        generated = generate_question(m.context)
        question, decision, review_ref = review(m, generated)
        if question is None:
            dropped.append(m.motion_id)
            continue
        rows.append(
            {
                "row_id": m.motion_id,
                "context": m.context,
                "generated_question": generated,
                "question": question,
                "review": decision,
                "ayes": list(m.ayes),
                "nayes": list(m.nayes),
                "source_file": str(votes.path),
                "source_sha256": votes.sha256,
                "source_row": m.row,
                "input_ids": [file_ref(votes.sha256, m.row)] + ([review_ref] if review_ref else []),
            }
        )
    return rows, dropped


def record_rows(motions: pl.DataFrame, aliases: dict[str, str]) -> tuple[list[dict], list[tuple[str, str]]]:
    """One row per (motion, voter), the voter resolved to an agent or null;
    the (motion, name) pairs not resolved."""
    parsed = [
        Motion(r["row_id"], r["source_row"], r["context"], tuple(r["ayes"]), tuple(r["nayes"]))
        for r in motions.iter_rows(named=True)
    ]
    votes, unknown = resolve_votes(parsed, aliases)
    vote_of = {m.motion_id: ({n: "Aye" for n in m.ayes} | {n: "Naye" for n in m.nayes}) for m in parsed}
    rows = [
        {
            "row_id": f"{v.motion_id}/{v.agent}",
            "motion_id": v.motion_id,
            "agent": v.agent,
            "vote": v.vote,
            "name_as_written": v.name_as_written,
            "input_ids": [row_ref("votes.motions", v.motion_id)],
        }
        for v in votes
    ]
    rows += [
        {
            "row_id": f"{m}/unknown/{name}",
            "motion_id": m,
            "agent": None,
            "vote": vote_of[m][name],
            "name_as_written": name,
            "input_ids": [row_ref("votes.motions", m)],
        }
        for m, name in unknown
    ]
    return rows, unknown


def prediction_rows(
    engine: Engine,
    agents: Sequence[str],
    display_names: dict[str, str],
    questions: dict[str, str],
    vote_records: pl.DataFrame,
) -> list[dict]:
    """Each agent's adapter votes on the motions it voted on: by score (Aye vs Naye)
    and by greedy generation."""
    rows = []
    for agent in agents:
        records = vote_records.filter(pl.col("agent") == agent).sort("motion_id")
        prompts = [vote_prompt(display_names[agent], questions[m]) for m in records["motion_id"]]
        scores = engine.score([ScoreRequest(p, SCORE_CANDIDATES, adapter=agent) for p in prompts])
        replies = engine.generate([GenerateRequest(p, max_new_tokens=48, adapter=agent) for p in prompts])
        for r, (aye, naye), reply in zip(records.iter_rows(named=True), scores, replies, strict=True):
            base = {
                "agent": agent,
                "adapter": agent,
                "motion_id": r["motion_id"],
                "truth": r["vote"],
                "input_ids": [
                    row_ref("votes.vote_records", r["row_id"]),
                    row_ref("agents.lora_adapters", agent),
                ],
            }
            scored = LABELS[0] if aye > naye else LABELS[1]
            parsed = parse_final_vote(reply)
            rows.append(
                {
                    **base,
                    "row_id": f"score/{r['row_id']}",
                    "method": "score",
                    "predicted": scored,
                    "correct": scored == r["vote"],
                    "reply": None,
                    "logprob_aye": aye,
                    "logprob_naye": naye,
                }
            )
            rows.append(
                {
                    **base,
                    "row_id": f"generate/{r['row_id']}",
                    "method": "generate",
                    "predicted": parsed,
                    "correct": parsed == r["vote"],
                    "reply": reply,
                    "logprob_aye": None,
                    "logprob_naye": None,
                }
            )
    return rows


def metric_table(metrics: Sequence[dict]) -> tuple[list[str], list[list]]:
    """Header and rows of the vote metrics summary as a report shows it: each metric with its interval."""

    def metric(r, name):
        return shown(r[name], r[f"{name}_low"], r[f"{name}_high"])

    header = [
        "method",
        "scope",
        "n",
        "motions",
        "accuracy",
        "balanced",
        "macro-F1",
        "majority",
        "majority class",
        "unknown",
    ]
    rows = [
        [
            r["method"],
            r["scope"],
            r["n"],
            r["motions"],
            metric(r, "accuracy"),
            metric(r, "balanced_accuracy"),
            metric(r, "macro_f1"),
            metric(r, "majority_baseline"),
            r["majority_class"],
            "n/a" if r["unknown_rate"] is None else f"{r['unknown_rate']:.2f}",
        ]
        for r in metrics
    ]
    return header, rows
