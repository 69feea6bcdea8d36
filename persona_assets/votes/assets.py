"""Votes: motions and per-agent votes from the records, vote predictions two ways, and their metrics."""

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetSpec,
    MetadataValue,
    asset,
    asset_check,
)

from partitions import AGENTS, agents_partitions
from persona_assets.agents.assets import AGENTS_BY_KEY, ensure_adapters
from resources.inputs.transcripts import alias_table
from persona_assets.common import (
    AGENT_PARTITION,
    MODEL_KINDS,
    ONE_RUN_PER_BACKFILL,
    OWNERS,
    TABLE_KINDS,
    WAREHOUSE_POOL,
    engine_metadata,
    gpu_step,
    markdown_table,
)
from persona_assets.provenance import Provenance, file_ref, result_frame, row_ref
from persona_assets.reports.plots import confusion_matrix, inline
from persona_assets.votes.prediction import (
    ANSWER_PREFIX,
    LABELS,
    METRIC_SCHEMA,
    SCORE_CANDIDATES,
    UNKNOWN,
    VOTE_HASH,
    formal_question,
    metric_rows,
    parse_final_vote,
    vote_prompt,
)
from resources.inputs.votes import Motion, read_votes, resolve_votes
from resources.artifacts import ArtifactStore
from resources.llm import GenerateRequest, ScoreRequest
from resources.llm.resource import LLMResource
from persona_assets.review import REVIEW_TABLE, reviewed
from persona_assets.statistics import interval_method, shown
from resources.sources import BoardSource
from resources.warehouse import WarehouseResource

GROUP = "votes"
VERSION = "votes-1"
PREDICTION_VERSION = f"vote-prediction-1-{VOTE_HASH}"
SHARED = dict(key_prefix=GROUP, group_name=GROUP, owners=OWNERS)

MOTION_SCHEMA = {"context": pl.String, "generated_question": pl.String, "question": pl.String, "review": pl.String,
                 "ayes": pl.List(pl.String), "nayes": pl.List(pl.String),
                 "source_file": pl.String, "source_sha256": pl.String, "source_row": pl.Int64}
REVIEWS = AssetKey([GROUP, REVIEW_TABLE])

question_reviews = AssetSpec(
    REVIEWS, group_name=GROUP, owners=OWNERS, kinds={"duckdb"},
    description="People's reviews of the generated vote questions (keep, edit, drop), written by "
                "`persona review-questions --kind votes`; motions apply them when they next materialize.",
)
RECORD_SCHEMA = {"motion_id": pl.String, "agent": pl.String, "vote": pl.String, "name_as_written": pl.String}


@asset(**SHARED, kinds=TABLE_KINDS, pool=WAREHOUSE_POOL, code_version=VERSION, deps=[REVIEWS])
def motions(context: AssetExecutionContext, board: BoardSource, warehouse: WarehouseResource) -> pl.DataFrame:
    """Each vote record's motion, with the formal yes/no question a member answers: the reviewed
    text where a person reviewed it (a dropped question leaves its motion out), else the generated one."""
    votes = read_votes(board.votes_file())
    reviews = warehouse.read_optional(GROUP, REVIEW_TABLE)
    rows, dropped = [], []
    for m in votes.motions:
        generated = formal_question(m.context)
        question, decision, review_ref = reviewed(f"votes.motions:{m.motion_id}", generated, reviews, f"votes.{REVIEW_TABLE}")
        if question is None:
            dropped.append(m.motion_id)
            continue
        rows.append({"row_id": m.motion_id, "context": m.context, "generated_question": generated, "question": question,
                     "review": decision, "ayes": list(m.ayes), "nayes": list(m.nayes), "source_file": str(votes.path),
                     "source_sha256": votes.sha256, "source_row": m.row, "partition_key": None,
                     "input_ids": [file_ref(votes.sha256, m.row)] + ([review_ref] if review_ref else [])})
    context.add_output_metadata({"reviewed": sum(r["review"] is not None for r in rows), "dropped_by_review": dropped})
    return result_frame(rows, MOTION_SCHEMA, Provenance(context.run.run_id, VERSION))


@asset(**SHARED, kinds=TABLE_KINDS, pool=WAREHOUSE_POOL, code_version=VERSION, ins={"motions": AssetIn(key=[GROUP, "motions"])})
def vote_records(context: AssetExecutionContext, motions: pl.DataFrame) -> pl.DataFrame:
    """One row per (motion, voter): the agent the name resolves to through the registry's aliases, or
    null for a name that matches no agent (kept, reported in metadata and by a check)."""
    aliases = alias_table(AGENTS)
    parsed = [Motion(r["row_id"], r["source_row"], r["context"], tuple(r["ayes"]), tuple(r["nayes"]))
              for r in motions.iter_rows(named=True)]
    votes, unknown = resolve_votes(parsed, aliases)
    vote_of = {m.motion_id: ({n: "Aye" for n in m.ayes} | {n: "Naye" for n in m.nayes}) for m in parsed}
    rows = [{"row_id": f"{v.motion_id}/{v.agent}", "motion_id": v.motion_id, "agent": v.agent, "vote": v.vote,
             "name_as_written": v.name_as_written, "partition_key": None, "input_ids": [row_ref("votes.motions", v.motion_id)]}
            for v in votes]
    rows += [{"row_id": f"{m}/unknown/{name}", "motion_id": m, "agent": None, "vote": vote_of[m][name],
              "name_as_written": name, "partition_key": None, "input_ids": [row_ref("votes.motions", m)]} for m, name in unknown]
    frame = result_frame(rows, RECORD_SCHEMA, Provenance(context.run.run_id, VERSION))
    counts = frame.filter(pl.col("agent").is_not_null()).group_by("agent", "vote").len().sort("agent", "vote")
    context.add_output_metadata({
        "unknown_names": MetadataValue.json(sorted({name for _, name in unknown})),
        "votes_per_agent": markdown_table(["agent", "vote", "motions"], counts.rows()),
    })
    return frame


@asset_check(asset=[GROUP, "vote_records"], description="Every voter name resolves to an agent of the registry.")
def unknown_voter_names(vote_records: pl.DataFrame) -> AssetCheckResult:
    unknown = sorted(set(vote_records.filter(pl.col("agent").is_null())["name_as_written"]))
    return AssetCheckResult(passed=not unknown, severity=AssetCheckSeverity.WARN,
                            metadata={"unknown_names": MetadataValue.json(unknown), "count": len(unknown)})


PREDICTION_SCHEMA = {"agent": pl.String, "motion_id": pl.String, "method": pl.String, "truth": pl.String,
                     "predicted": pl.String, "correct": pl.Boolean, "reply": pl.String,
                     "logprob_aye": pl.Float64, "logprob_naye": pl.Float64}


@asset(
    **SHARED, kinds=MODEL_KINDS, **gpu_step(), code_version=PREDICTION_VERSION, partitions_def=agents_partitions,
    metadata=AGENT_PARTITION, backfill_policy=ONE_RUN_PER_BACKFILL,
    ins={"motions": AssetIn(key=[GROUP, "motions"]), "vote_records": AssetIn(key=[GROUP, "vote_records"]),
         "lora_adapters": AssetIn(key=["agents", "lora_adapters"])},
)
def vote_predictions(
    context: AssetExecutionContext, llm: LLMResource, motions: pl.DataFrame, vote_records: pl.DataFrame,
    lora_adapters: pl.DataFrame,
) -> pl.DataFrame:
    """Each agent's adapter votes on the motions it voted on, two ways: by scoring 'Final Vote: Aye'
    against 'Final Vote: Naye' (no sampling), and by greedy generation read by a strict parser (the
    last explicit final vote wins; anything else is Unknown)."""
    question = dict(zip(motions["row_id"], motions["question"], strict=True))
    rows = []
    with llm.metered() as (engine, meter):
        ensure_adapters(engine, lora_adapters)
        for agent in context.partition_keys:
            records = vote_records.filter(pl.col("agent") == agent).sort("motion_id")
            prompts = [vote_prompt(AGENTS_BY_KEY[agent].display_name, question[m]) for m in records["motion_id"]]
            scores = engine.score([ScoreRequest(p, SCORE_CANDIDATES, adapter=agent) for p in prompts])
            replies = engine.generate([GenerateRequest(p, max_new_tokens=48, adapter=agent) for p in prompts])
            for r, (aye, naye), reply in zip(records.iter_rows(named=True), scores, replies, strict=True):
                base = {"agent": agent, "adapter": agent, "motion_id": r["motion_id"], "truth": r["vote"], "partition_key": agent,
                        "input_ids": [row_ref("votes.vote_records", r["row_id"]), row_ref("agents.lora_adapters", agent)]}
                scored = LABELS[0] if aye > naye else LABELS[1]
                parsed = parse_final_vote(reply)
                rows.append({**base, "row_id": f"score/{r['row_id']}", "method": "score", "predicted": scored,
                             "correct": scored == r["vote"], "reply": None, "logprob_aye": aye, "logprob_naye": naye})
                rows.append({**base, "row_id": f"generate/{r['row_id']}", "method": "generate", "predicted": parsed,
                             "correct": parsed == r["vote"], "reply": reply, "logprob_aye": None, "logprob_naye": None})
    frame = result_frame(rows, PREDICTION_SCHEMA, Provenance(context.run.run_id, PREDICTION_VERSION, model_id=engine.model_id,
                                                             prompt_hash=VOTE_HASH))
    context.add_output_metadata({**engine_metadata(meter, engine.model_id), "answer_prefix": ANSWER_PREFIX,
                                 "unknown_generations": int((frame["predicted"] == UNKNOWN).sum())})
    return frame


METRICS_VERSION = "vote-metrics-2"


@asset(key_prefix=GROUP, group_name="reports", owners=OWNERS, kinds=TABLE_KINDS | {"matplotlib"}, pool=WAREHOUSE_POOL,
       code_version=METRICS_VERSION, ins={"vote_predictions": AssetIn(key=[GROUP, "vote_predictions"])})
def vote_metrics_summary(context: AssetExecutionContext, artifacts: ArtifactStore, vote_predictions: pl.DataFrame) -> pl.DataFrame:
    """Accuracy, balanced accuracy, macro-F1 and, beside them, the majority-class baseline, each with a 95% BCa
    cluster-bootstrap interval over motions (null where undefined), the Unknown rate, n votes and motions, per
    method, per agent and overall, with confusion matrices."""
    rows, sections = metric_rows(vote_predictions), []
    for method in sorted(vote_predictions["method"].unique()):
        part = vote_predictions.filter(pl.col("method") == method)
        png = confusion_matrix(f"Vote prediction ({method})", part["truth"].to_list(), part["predicted"].to_list(),
                               list(LABELS), [*LABELS, UNKNOWN])
        path, sha = artifacts.write(png, "plots", "votes", f"confusion-{method}.png")
        sections.append(f"### {method}\n`{path}` sha256 {sha[:12]}\n\n{inline(png, method)}")
    frame = result_frame(rows, METRIC_SCHEMA, Provenance(context.run.run_id, METRICS_VERSION))

    def metric(r, name):
        return shown(r[name], r[f"{name}_low"], r[f"{name}_high"])

    context.add_output_metadata({
        "metrics": markdown_table(["method", "scope", "n", "motions", "accuracy", "balanced", "macro-F1", "majority",
                                   "majority class", "unknown"],
                                  [[r["method"], r["scope"], r["n"], r["motions"], metric(r, "accuracy"),
                                    metric(r, "balanced_accuracy"), metric(r, "macro_f1"), metric(r, "majority_baseline"),
                                    r["majority_class"], "n/a" if r["unknown_rate"] is None else f"{r['unknown_rate']:.2f}"]
                                   for r in rows]),
        "interval_method": interval_method("motions"),
        "confusion_matrices": MetadataValue.md("\n\n".join(sections)),
    })
    return frame
