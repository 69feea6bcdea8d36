"""The vote tables: schemas and row builders of motions, vote records and vote predictions."""

from collections.abc import Callable, Sequence

import polars as pl

from persona_platform.persona_assets.columns import columns
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

_MOTION_ID = (
    "motion_id",
    pl.String,
    "the motion's row in votes.motions: m + 10 hex digits of its context's sha256",
)

MOTION_SCHEMA = columns(
    ("context", pl.String, "the motion as written in the vote records' Context column, whitespace collapsed"),
    (
        "generated_question",
        pl.String,
        "the formal yes/no question generated from the context ('Should the board approve ...?')",
    ),
    (
        "question",
        pl.String,
        "the question a member answers: the reviewed text where a person reviewed it, else the generated one",
    ),
    (
        "review",
        pl.String,
        "a person's decision: keep or edit; null when not reviewed (dropped motions are no row)",
    ),
    ("ayes", pl.List(pl.String), "the names in the record's Ayes column, as written"),
    ("nayes", pl.List(pl.String), "the names in the record's Nayes column, as written"),
    ("source_file", pl.String, "path of the vote records file"),
    ("source_sha256", pl.String, "sha256 of the vote records file"),
    ("source_row", pl.Int64, "the record's row in the CSV file (the header is row 1)"),
)
RECORD_SCHEMA = columns(
    _MOTION_ID,
    (
        "agent",
        pl.String,
        "the agent the voter's name resolves to through the registry's aliases; null when it matches none",
    ),
    ("vote", pl.String, "the recorded vote: Aye or Naye"),
    ("name_as_written", pl.String, "the voter's name as written in the record"),
)
PREDICTION_SCHEMA = columns(
    ("agent", pl.String, "the agent whose adapter voted (its partition key)"),
    _MOTION_ID,
    (
        "method",
        pl.String,
        "score ('Final Vote: Aye' scored against 'Final Vote: Naye') or generate (greedy, strict parser)",
    ),
    ("truth", pl.String, "the agent's recorded vote: Aye or Naye"),
    (
        "predicted",
        pl.String,
        "the predicted vote: Aye or Naye, or Unknown for a generation without a final vote",
    ),
    ("correct", pl.Boolean, "whether predicted equals truth (Unknown is wrong)"),
    ("reply", pl.String, "the generated reply (generate); null for score"),
    (
        "logprob_aye",
        pl.Float64,
        "log-probability of 'Final Vote: Aye' after the vote prompt (score); null for generate",
    ),
    (
        "logprob_naye",
        pl.Float64,
        "log-probability of 'Final Vote: Naye' after the vote prompt (score); null for generate",
    ),
)

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
