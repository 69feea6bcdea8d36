"""Judging: absolute 1-5 scores per aspect, pairwise comparisons in both orders, and their summary."""

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetIn,
    Config,
    MetadataValue,
    asset,
    asset_check,
)
from pydantic import Field

from partitions import agents_partitions
from persona_assets.agents.assets import AGENTS_BY_KEY
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
from persona_assets.judging.judge import compare_pairs, score_responses
from persona_assets.judging.outcomes import win_rates
from persona_assets.judging.rubrics import JUDGE_HASH, PAIRWISE_HASH
from persona_assets.judging.tables import COMPARISON_SCHEMA, JUDGMENT_SCHEMA, judge_items
from persona_assets.provenance import Provenance, result_frame, row_ref
from persona_assets.reports.plots import inline, score_violins, win_rate_bars
from persona_assets.responses.tasks import AGENT, BASELINE
from persona_assets.settings import load_settings
from resources.artifacts import ArtifactStore
from resources.llm import LLMResource

GROUP = "judging"
SHARED = dict(key_prefix=GROUP, group_name=GROUP, owners=OWNERS, kinds=MODEL_KINDS, **gpu_step(),
              partitions_def=agents_partitions, metadata=AGENT_PARTITION, backfill_policy=ONE_RUN_PER_BACKFILL)
RESPONSES_IN = {"evaluation_items": AssetIn(key=["responses", "evaluation_items"]),
                "task_responses": AssetIn(key=["responses", "task_responses"])}
JUDGMENTS_VERSION = f"judgments-1-{JUDGE_HASH}"
COMPARISONS_VERSION = f"comparisons-1-{PAIRWISE_HASH}"


class JudgeConfig(Config):
    explanation_chars: int = Field(default=300, description="Longest explanation or justification a reply may hold.")
    temperature: float = Field(default=0.0, description="0: greedy judging.")
    seed: int = Field(default=0)


def _speakers() -> dict[str, str]:
    return {key: agent.display_name for key, agent in AGENTS_BY_KEY.items()}


def _failure_metadata(frame: pl.DataFrame, failure_columns: list[str]) -> dict:
    failed = frame.select(pl.any_horizontal([pl.col(c).is_not_null() for c in failure_columns]).alias("f"))["f"]
    return {"judge_failures": int(failed.sum()), "judge_failure_rate": float(failed.mean()) if frame.height else 0.0}


@asset(**SHARED, ins=RESPONSES_IN, code_version=JUDGMENTS_VERSION)
def judgments(context: AssetExecutionContext, config: JudgeConfig, judge_llm: LLMResource, evaluation_items: pl.DataFrame,
              task_responses: pl.DataFrame) -> pl.DataFrame:
    """Every response of both systems scored 1-5 per aspect of its task (trait: alignment with the trait; completion:
    alignment, plausibility, tone; monologue: fit, style) by the judge model, as JSON-schema constrained output read
    by a strict parser of the reply alone. A reply that still fails is a row with a `failure` and no score."""
    items = judge_items(evaluation_items, _speakers())
    with judge_llm.metered() as (engine, meter):
        rows = score_responses(engine, items, task_responses.sort("row_id").to_dicts(), config.explanation_chars,
                               config.temperature, config.seed)
    frame = result_frame(rows, JUDGMENT_SCHEMA, Provenance(context.run.run_id, JUDGMENTS_VERSION, model_id=engine.model_id,
                                                           prompt_hash=JUDGE_HASH))
    context.add_output_metadata({**engine_metadata(meter, engine.model_id), **_failure_metadata(frame, ["failure"])})
    return frame


@asset(**SHARED, ins=RESPONSES_IN, code_version=COMPARISONS_VERSION)
def pairwise_comparisons(context: AssetExecutionContext, config: JudgeConfig, judge_llm: LLMResource,
                         evaluation_items: pl.DataFrame, task_responses: pl.DataFrame) -> pl.DataFrame:
    """The agent's sample i against the baseline's sample i of the same item and setting (no best-of-n), judged
    against the reference in both orders (agent as A, then baseline as A). `outcome` is the winner when both orders
    agree, `tie`, `inconsistent` when they disagree, or `failed` when either reply did not parse."""
    items = judge_items(evaluation_items, _speakers())
    with judge_llm.metered() as (engine, meter):
        rows = compare_pairs(engine, items, task_responses.to_dicts(), config.explanation_chars, config.temperature,
                             config.seed)
    frame = result_frame(rows, COMPARISON_SCHEMA, Provenance(context.run.run_id, COMPARISONS_VERSION,
                                                             model_id=engine.model_id, prompt_hash=PAIRWISE_HASH))
    outcomes = frame.group_by("outcome").len().sort("outcome")
    context.add_output_metadata({**engine_metadata(meter, engine.model_id),
                                 **_failure_metadata(frame, ["failure_agent_first", "failure_baseline_first"]),
                                 "outcomes": markdown_table(["outcome", "pairs"], outcomes.rows())})
    return frame


def _check_failure_rate(frame: pl.DataFrame, failure_columns: list[str]) -> AssetCheckResult:
    limit = load_settings().judge_max_failure_rate
    metadata = _failure_metadata(frame, failure_columns)
    return AssetCheckResult(passed=metadata["judge_failure_rate"] <= limit, severity=AssetCheckSeverity.ERROR,
                            metadata={**metadata, "threshold (PERSONA_JUDGE_MAX_FAILURE_RATE)": limit, "rows": frame.height})


@asset_check(asset=[GROUP, "judgments"], blocking=True,
             description="The share of judgments whose reply failed to parse is at most PERSONA_JUDGE_MAX_FAILURE_RATE.")
def judgments_failure_rate(judgments: pl.DataFrame) -> AssetCheckResult:
    return _check_failure_rate(judgments, ["failure"])


@asset_check(asset=[GROUP, "pairwise_comparisons"], blocking=True,
             description="The share of pairs with a failed verdict is at most PERSONA_JUDGE_MAX_FAILURE_RATE.")
def pairwise_failure_rate(pairwise_comparisons: pl.DataFrame) -> AssetCheckResult:
    return _check_failure_rate(pairwise_comparisons, ["failure_agent_first", "failure_baseline_first"])


SUMMARY_SCHEMA = {"scope": pl.String, "agent": pl.String, "task": pl.String, "setting": pl.String, "pairs": pl.Int64,
                  "judged": pl.Int64, "agent_wins": pl.Int64, "baseline_wins": pl.Int64, "ties": pl.Int64,
                  "inconsistent": pl.Int64, "failed": pl.Int64, "consistent_rate": pl.Float64, "consistent_low": pl.Float64,
                  "consistent_high": pl.Float64, "raw_rate": pl.Float64, "raw_low": pl.Float64, "raw_high": pl.Float64,
                  "agent_mean_score": pl.Float64, "baseline_mean_score": pl.Float64}


def _scopes(frame: pl.DataFrame) -> list[tuple[str, str, str, str, pl.Expr]]:
    """(scope, agent, task, setting, filter): each agent x task x setting, each agent x task, each task."""
    scopes = []
    for agent, task, setting in frame.select("agent", "task", "setting").unique().sort("agent", "task", "setting").rows():
        scopes.append(("agent x task x setting", agent, task, setting,
                       (pl.col("agent") == agent) & (pl.col("task") == task) & (pl.col("setting") == setting)))
    for agent, task in frame.select("agent", "task").unique().sort("agent", "task").rows():
        scopes.append(("agent x task", agent, task, "all", (pl.col("agent") == agent) & (pl.col("task") == task)))
    for (task,) in frame.select("task").unique().sort("task").rows():
        scopes.append(("task", "all", task, "all", pl.col("task") == task))
    return scopes


@asset(key_prefix=GROUP, group_name="reports", owners=OWNERS, kinds=TABLE_KINDS | {"matplotlib"}, pool=WAREHOUSE_POOL,
       code_version="judging-summary-1",
       ins={"judgments": AssetIn(key=[GROUP, "judgments"]), "pairwise_comparisons": AssetIn(key=[GROUP, "pairwise_comparisons"])})
def judging_summary(context: AssetExecutionContext, artifacts: ArtifactStore, judgments: pl.DataFrame,
                    pairwise_comparisons: pl.DataFrame) -> pl.DataFrame:
    """Win rates of agent over baseline with Wilson 95% intervals (order-consistent and raw) per agent, task and
    sampling setting; mean judge scores of both systems over all samples; score violins and judge failure rates."""
    rows = []
    scored = judgments.filter(pl.col("score").is_not_null())
    for scope, agent, task, setting, where in _scopes(pairwise_comparisons):
        pairs = pairwise_comparisons.filter(where)
        verdicts = pairs["verdict_agent_first"].to_list() + pairs["verdict_baseline_first"].to_list()
        rates = win_rates(pairs["outcome"].to_list(), verdicts)
        scores = scored.filter(where)
        mean = {s: scores.filter(pl.col("system") == s)["score"].mean() for s in (AGENT, BASELINE)}
        rows.append({"row_id": f"{agent}/{task}/{setting}", "scope": scope, "agent": agent, "task": task, "setting": setting,
                     **{k: v for k, v in vars(rates).items() if k not in ("raw_agent_wins", "raw_verdicts")},
                     "agent_mean_score": mean[AGENT], "baseline_mean_score": mean[BASELINE], "partition_key": None,
                     "input_ids": [row_ref("judging.pairwise_comparisons", i) for i in pairs["row_id"]]})
    frame = result_frame(rows, SUMMARY_SCHEMA, Provenance(context.run.run_id, "judging-summary-1"))

    violin_groups = [(f"{task}/{aspect}", *(scored.filter((pl.col("task") == task) & (pl.col("aspect") == aspect)
                                                          & (pl.col("system") == s))["score"].to_list() for s in (AGENT, BASELINE)))
                     for task, aspect in scored.select("task", "aspect").unique().sort("task", "aspect").rows()]
    violins = score_violins("Judge scores, every sample (no best-of-n)", violin_groups)
    per_agent = frame.filter(pl.col("scope") == "agent x task")
    bars = win_rate_bars("Agent vs persona baseline, order-consistent wins",
                         [f"{r['agent']}/{r['task']}" for r in per_agent.iter_rows(named=True)],
                         [(r["consistent_rate"], r["consistent_low"], r["consistent_high"]) for r in per_agent.iter_rows(named=True)])
    plots = []
    for name, png in (("score-violins", violins), ("win-rates", bars)):
        path, sha = artifacts.write(png, "plots", "judging", f"{name}.png")
        plots.append(f"`{path}` sha256 {sha[:12]}\n\n{inline(png, name)}")
    failure_rates = [["judging.judgments", judgments.height, _failure_metadata(judgments, ["failure"])["judge_failure_rate"]],
                     ["judging.pairwise_comparisons", pairwise_comparisons.height,
                      _failure_metadata(pairwise_comparisons, ["failure_agent_first", "failure_baseline_first"])["judge_failure_rate"]]]

    def pct(rate, low, high):
        return "n/a" if rate != rate else f"{100 * rate:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"

    context.add_output_metadata({
        "win_rates": markdown_table(
            ["agent", "task", "setting", "pairs", "agent", "baseline", "tie", "inconsistent", "failed", "consistent win", "raw win"],
            [[r["agent"], r["task"], r["setting"], r["pairs"], r["agent_wins"], r["baseline_wins"], r["ties"], r["inconsistent"],
              r["failed"], pct(r["consistent_rate"], r["consistent_low"], r["consistent_high"]),
              pct(r["raw_rate"], r["raw_low"], r["raw_high"])] for r in frame.iter_rows(named=True)]),
        "judge_failure_rates": markdown_table(["table", "rows", "failure rate"], [[t, n, f"{rate:.3f}"] for t, n, rate in failure_rates]),
        "plots": MetadataValue.md("\n\n".join(plots)),
    })
    return frame
