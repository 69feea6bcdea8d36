"""Rows of the judging tables (no Dagster here)."""

from __future__ import annotations

import json

import polars as pl

from persona_platform.persona_assets.judging.outcomes import combine, flatten, win_rates
from persona_platform.persona_assets.judging.rubrics import Aspect, Item
from persona_platform.persona_assets.provenance import row_ref
from persona_platform.persona_assets.responses.tasks import AGENT, BASELINE
from persona_platform.persona_assets.statistics import SEED, interval_method, mean_interval, shown
from persona_platform.persona_assets.structured_output import Parsed

ITEMS, RESPONSES = "responses.evaluation_items", "responses.task_responses"
JUDGMENT_SCHEMA = {
    "agent": pl.String,
    "item_id": pl.String,
    "response_id": pl.String,
    "task": pl.String,
    "trait": pl.String,
    "system": pl.String,
    "setting": pl.String,
    "sample": pl.Int64,
    "aspect": pl.String,
    "score": pl.Int64,
    "explanation": pl.String,
    "reply": pl.String,
    "failure": pl.String,
}
COMPARISON_SCHEMA = {
    "agent": pl.String,
    "item_id": pl.String,
    "task": pl.String,
    "trait": pl.String,
    "setting": pl.String,
    "sample": pl.Int64,
    "agent_response_id": pl.String,
    "baseline_response_id": pl.String,
    "verdict_agent_first": pl.String,
    "verdict_baseline_first": pl.String,
    "outcome": pl.String,
    "reply_agent_first": pl.String,
    "reply_baseline_first": pl.String,
    "failure_agent_first": pl.String,
    "failure_baseline_first": pl.String,
}


def judge_items(items: pl.DataFrame, speaker_of: dict[str, str]) -> dict[str, Item]:
    """Evaluation items as the judge reads them, by row id;
    ``speaker_of`` maps agent keys to display names."""
    return {
        r["row_id"]: Item(
            r["row_id"],
            r["task"],
            r["trait"],
            flatten(json.loads(r["messages"]), speaker_of[r["agent"]]),
            r["reference"],
            r["reference_kind"],
        )
        for r in items.iter_rows(named=True)
    }


def judgment_row(response: dict, item: Item, aspect: Aspect, reply: str, parsed: Parsed) -> dict:
    return {
        "row_id": f"{response['row_id']}/{aspect.name}",
        "agent": response["agent"],
        "item_id": response["item_id"],
        "response_id": response["row_id"],
        "task": response["task"],
        "trait": item.trait,
        "system": response["system"],
        "setting": response["setting"],
        "sample": response["sample"],
        "aspect": aspect.name,
        "score": int(parsed.value["score"]) if parsed.ok else None,
        "explanation": parsed.value["explanation"] if parsed.ok else None,
        "reply": reply,
        "failure": parsed.failure,
        "input_ids": [row_ref(RESPONSES, response["row_id"]), row_ref(ITEMS, response["item_id"])],
    }


def comparison_row(
    item: Item,
    agent_response: dict,
    baseline_response: dict,
    verdicts: dict[str, str | None],
    replies: dict[str, tuple[str, Parsed]],
) -> dict:
    a = agent_response
    (reply_af, parsed_af), (reply_bf, parsed_bf) = replies["agent_first"], replies["baseline_first"]
    return {
        "row_id": f"{a['item_id']}/{a['setting']}/{a['sample']}",
        "agent": a["agent"],
        "item_id": a["item_id"],
        "task": a["task"],
        "trait": item.trait,
        "setting": a["setting"],
        "sample": a["sample"],
        "agent_response_id": a["row_id"],
        "baseline_response_id": baseline_response["row_id"],
        "verdict_agent_first": verdicts["agent_first"],
        "verdict_baseline_first": verdicts["baseline_first"],
        "outcome": combine(verdicts["agent_first"], verdicts["baseline_first"]),
        "reply_agent_first": reply_af,
        "reply_baseline_first": reply_bf,
        "failure_agent_first": parsed_af.failure,
        "failure_baseline_first": parsed_bf.failure,
        "input_ids": [
            row_ref(RESPONSES, a["row_id"]),
            row_ref(RESPONSES, baseline_response["row_id"]),
            row_ref(ITEMS, a["item_id"]),
        ],
    }


SUMMARY_SCHEMA = {
    "scope": pl.String,
    "agent": pl.String,
    "task": pl.String,
    "setting": pl.String,
    "items": pl.Int64,
    "pairs": pl.Int64,
    "judged": pl.Int64,
    "agent_wins": pl.Int64,
    "baseline_wins": pl.Int64,
    "ties": pl.Int64,
    "inconsistent": pl.Int64,
    "failed": pl.Int64,
    "consistent_rate": pl.Float64,
    "consistent_low": pl.Float64,
    "consistent_high": pl.Float64,
    "raw_verdicts": pl.Int64,
    "raw_rate": pl.Float64,
    "raw_low": pl.Float64,
    "raw_high": pl.Float64,
    "agent_scores": pl.Int64,
    "agent_mean_score": pl.Float64,
    "agent_score_low": pl.Float64,
    "agent_score_high": pl.Float64,
    "baseline_scores": pl.Int64,
    "baseline_mean_score": pl.Float64,
    "baseline_score_low": pl.Float64,
    "baseline_score_high": pl.Float64,
    "score_pairs": pl.Int64,
    "score_difference": pl.Float64,
    "score_difference_low": pl.Float64,
    "score_difference_high": pl.Float64,
    "interval_method": pl.String,
}
PAIRED_SCORE = [
    "item_id",
    "setting",
    "sample",
    "aspect",
]  # the agent's and the baseline's judgment of the same sample


def score_means(scored: pl.DataFrame, seed: int = SEED) -> dict:
    """Mean judge score of each system over its scored judgments, and the mean paired difference
    agent - baseline over (item, setting, sample, aspect) that both systems have a score for; counts and
    cluster-bootstrap intervals over items (the aspects, samples and settings of one item are judgments
    of answers to the same prompt)."""
    columns = {}
    for system in (AGENT, BASELINE):
        rows = scored.filter(pl.col("system") == system)
        mean = mean_interval(rows["item_id"].to_list(), rows["score"].to_list(), seed)
        columns |= {
            f"{system}_scores": rows.height,
            f"{system}_mean_score": mean.estimate,
            f"{system}_score_low": mean.low,
            f"{system}_score_high": mean.high,
        }
    paired = (
        scored.filter(pl.col("system") == AGENT)
        .select(*PAIRED_SCORE, pl.col("score").alias("agent_score"))
        .join(
            scored.filter(pl.col("system") == BASELINE).select(
                *PAIRED_SCORE, pl.col("score").alias("baseline_score")
            ),
            on=PAIRED_SCORE,
        )
    )
    difference = mean_interval(
        paired["item_id"].to_list(), (paired["agent_score"] - paired["baseline_score"]).to_list(), seed
    )
    return columns | {
        "score_pairs": paired.height,
        "score_difference": difference.estimate,
        "score_difference_low": difference.low,
        "score_difference_high": difference.high,
    }


def _scopes(frame: pl.DataFrame) -> list[tuple[str, str, str, str, pl.Expr]]:
    """(scope, agent, task, setting, filter): each agent x task x setting, each agent x task, each task."""
    scopes = []
    for agent, task, setting in (
        frame.select("agent", "task", "setting").unique().sort("agent", "task", "setting").rows()
    ):
        scopes.append(
            (
                "agent x task x setting",
                agent,
                task,
                setting,
                (pl.col("agent") == agent) & (pl.col("task") == task) & (pl.col("setting") == setting),
            )
        )
    for agent, task in frame.select("agent", "task").unique().sort("agent", "task").rows():
        scopes.append(
            ("agent x task", agent, task, "all", (pl.col("agent") == agent) & (pl.col("task") == task))
        )
    for (task,) in frame.select("task").unique().sort("task").rows():
        scopes.append(("task", "all", task, "all", pl.col("task") == task))
    return scopes


def summary_rows(judgments: pl.DataFrame, comparisons: pl.DataFrame, seed: int = SEED) -> list[dict]:
    """Per scope: pair outcomes, consistent and raw agent win rates, both systems' mean scores and their
    paired difference, each with its n and a 95% cluster-bootstrap interval over evaluation items."""
    rows = []
    scored = judgments.filter(pl.col("score").is_not_null())
    for scope, agent, task, setting, where in _scopes(comparisons):
        pairs = comparisons.filter(where)
        rates = win_rates(
            pairs["item_id"].to_list(),
            pairs["outcome"].to_list(),
            pairs["verdict_agent_first"].to_list(),
            pairs["verdict_baseline_first"].to_list(),
            seed,
        )
        rows.append(
            {
                "row_id": f"{agent}/{task}/{setting}",
                "scope": scope,
                "agent": agent,
                "task": task,
                "setting": setting,
                **{k: v for k, v in vars(rates).items() if k != "raw_agent_wins"},
                **score_means(scored.filter(where), seed),
                "interval_method": interval_method("evaluation items", seed),
                "partition_key": None,
                "input_ids": [row_ref("judging.pairwise_comparisons", i) for i in pairs["row_id"]],
            }
        )
    return rows


def win_rate_table(summary: pl.DataFrame) -> tuple[list[str], list[list]]:
    """Header and rows of the judging summary as a report shows it: counts, win rates in percent and mean
    scores, each estimate with its interval."""
    header = [
        "agent",
        "task",
        "setting",
        "items",
        "pairs",
        "agent",
        "baseline",
        "tie",
        "inconsistent",
        "failed",
        "consistent win %",
        "raw win %",
        "score pairs",
        "agent score",
        "baseline score",
        "agent - baseline",
    ]
    rows = [
        [
            r["agent"],
            r["task"],
            r["setting"],
            r["items"],
            r["pairs"],
            r["agent_wins"],
            r["baseline_wins"],
            r["ties"],
            r["inconsistent"],
            r["failed"],
            shown(r["consistent_rate"], r["consistent_low"], r["consistent_high"], 100, 0),
            shown(r["raw_rate"], r["raw_low"], r["raw_high"], 100, 0),
            r["score_pairs"],
            shown(r["agent_mean_score"], r["agent_score_low"], r["agent_score_high"]),
            shown(r["baseline_mean_score"], r["baseline_score_low"], r["baseline_score_high"]),
            shown(r["score_difference"], r["score_difference_low"], r["score_difference_high"]),
        ]
        for r in summary.iter_rows(named=True)
    ]
    return header, rows


def agent_task_win_rates(summary: pl.DataFrame) -> tuple[list[str], list[tuple]]:
    """The agent x task scopes of the summary: their labels ('agent/task') and their order-consistent win
    rates as (rate, low, high)."""
    per_agent = summary.filter(pl.col("scope") == "agent x task").rows(named=True)
    labels = [f"{r['agent']}/{r['task']}" for r in per_agent]
    rates = [(r["consistent_rate"], r["consistent_low"], r["consistent_high"]) for r in per_agent]
    return labels, rates


def score_groups(judgments: pl.DataFrame) -> list[tuple[str, list[float], list[float]]]:
    """(task/aspect, agent scores, baseline scores) over every sample that has a score."""
    scored = judgments.filter(pl.col("score").is_not_null())
    return [
        (
            f"{task}/{aspect}",
            *(
                scored.filter(
                    (pl.col("task") == task) & (pl.col("aspect") == aspect) & (pl.col("system") == s)
                )["score"].to_list()
                for s in (AGENT, BASELINE)
            ),
        )
        for task, aspect in scored.select("task", "aspect").unique().sort("task", "aspect").rows()
    ]


JUDGMENT_FAILURES = ["failure"]
COMPARISON_FAILURES = ["failure_agent_first", "failure_baseline_first"]  # a pair fails when either order did


def failure_rate(frame: pl.DataFrame, failure_columns: list[str]) -> tuple[int, float]:
    """Rows with a failure in any of the columns, and their share (0 for an empty table)."""
    failed = frame.select(pl.any_horizontal([pl.col(c).is_not_null() for c in failure_columns]).alias("f"))[
        "f"
    ]
    return int(failed.sum()), float(failed.mean()) if frame.height else 0.0


def failure_metadata(frame: pl.DataFrame, failure_columns: list[str]) -> dict:
    failed, rate = failure_rate(frame, failure_columns)
    return {"judge_failures": failed, "judge_failure_rate": rate}


def failure_rate_table(judgments: pl.DataFrame, comparisons: pl.DataFrame) -> tuple[list[str], list[list]]:
    """Header and rows of the judge's failure rate in each judging table."""
    tables = [
        ("judging.judgments", judgments, JUDGMENT_FAILURES),
        ("judging.pairwise_comparisons", comparisons, COMPARISON_FAILURES),
    ]
    rows = [[name, frame.height, f"{failure_rate(frame, columns)[1]:.3f}"] for name, frame, columns in tables]
    return ["table", "rows", "failure rate"], rows
