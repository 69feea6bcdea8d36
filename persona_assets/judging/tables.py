"""Rows of the judging tables (no Dagster here)."""

from __future__ import annotations

import json

import polars as pl

from persona_platform.persona_assets.columns import columns
from persona_platform.persona_assets.judging.outcomes import combine, flatten, win_rates
from persona_platform.persona_assets.judging.rubrics import Aspect, Item
from persona_platform.persona_assets.provenance import row_ref
from persona_platform.persona_assets.responses.tasks import AGENT, BASELINE
from persona_platform.persona_assets.statistics import SEED, interval_method, mean_interval, shown
from persona_platform.persona_assets.structured_output import Parsed

ITEMS, RESPONSES = "responses.evaluation_items", "responses.task_responses"
_AGENT = ("agent", pl.String, "the agent whose evaluation item it is (its partition key)")
_ITEM_ID = ("item_id", pl.String, "the evaluation item's row in responses.evaluation_items")
_TASK = ("task", pl.String, "the item's task: trait, completion or monologue")
_TRAIT = ("trait", pl.String, "belief, memory or personality for a trait item; null for the other tasks")
_SETTING = (
    "setting",
    pl.String,
    "sampling setting: temperature, top-p, top-k, repetition penalty, written like T0.7_P0.8_K100_R1.2",
)
_SAMPLE = ("sample", pl.Int64, "0-based sample under the setting; both systems' sample i share a seed")

JUDGMENT_SCHEMA = columns(
    _AGENT,
    _ITEM_ID,
    ("response_id", pl.String, "the judged response's row in responses.task_responses"),
    _TASK,
    _TRAIT,
    (
        "system",
        pl.String,
        "who answered: agent (the agent's adapter) or baseline (the base model told the persona profile)",
    ),
    _SETTING,
    _SAMPLE,
    (
        "aspect",
        pl.String,
        "the aspect scored: alignment (trait); alignment, plausibility, tone (completion); fit, style "
        "(monologue)",
    ),
    ("score", pl.Int64, "the judge's score from 1 (poor) to 5 (excellent); null when the reply failed"),
    ("explanation", pl.String, "the judge's explanation of the score; null when the reply failed"),
    ("reply", pl.String, "the judge's reply as generated"),
    ("failure", pl.String, "why the reply is not one JSON value valid for the schema; null when it is"),
)
COMPARISON_SCHEMA = columns(
    _AGENT,
    _ITEM_ID,
    _TASK,
    _TRAIT,
    _SETTING,
    _SAMPLE,
    ("agent_response_id", pl.String, "the agent's response (sample i) in responses.task_responses"),
    ("baseline_response_id", pl.String, "the baseline's response of the same item, setting and sample"),
    (
        "verdict_agent_first",
        pl.String,
        "the winner with the agent's response as A: agent, baseline or tie; null when the reply failed",
    ),
    (
        "verdict_baseline_first",
        pl.String,
        "the winner with the baseline's response as A: agent, baseline or tie; null when the reply failed",
    ),
    (
        "outcome",
        pl.String,
        "agent, baseline or tie when both orders agree; inconsistent when they differ; failed when either "
        "reply failed",
    ),
    ("reply_agent_first", pl.String, "the judge's reply with the agent's response as A"),
    ("reply_baseline_first", pl.String, "the judge's reply with the baseline's response as A"),
    ("failure_agent_first", pl.String, "why the agent-first reply is not valid; null when it is"),
    ("failure_baseline_first", pl.String, "why the baseline-first reply is not valid; null when it is"),
)


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


_UNDEFINED = "null where undefined (under 2 items, or every item alike)"


def _interval(low: str, high: str, of: str) -> list[tuple]:
    """The two bound columns of an estimate's 95% cluster-bootstrap interval over evaluation items."""
    return [
        (low, pl.Float64, f"lower bound of the 95% BCa cluster-bootstrap interval of {of}; {_UNDEFINED}"),
        (high, pl.Float64, f"upper bound of the 95% BCa cluster-bootstrap interval of {of}; {_UNDEFINED}"),
    ]


SUMMARY_SCHEMA = columns(
    ("scope", pl.String, "what the row pools: agent x task x setting, agent x task, or task"),
    ("agent", pl.String, "the agent; all in a task scope"),
    ("task", pl.String, "the task: trait, completion or monologue"),
    ("setting", pl.String, "the sampling setting; all in the agent x task and task scopes"),
    ("items", pl.Int64, "evaluation items the pairs come from (the intervals' resampling unit)"),
    ("pairs", pl.Int64, "agent-baseline pairs compared"),
    ("judged", pl.Int64, "pairs whose two orders both parsed"),
    ("agent_wins", pl.Int64, "pairs both orders gave the agent"),
    ("baseline_wins", pl.Int64, "pairs both orders gave the baseline"),
    ("ties", pl.Int64, "pairs both orders called a tie"),
    ("inconsistent", pl.Int64, "judged pairs whose two orders disagree"),
    ("failed", pl.Int64, "pairs with a failed reply in either order"),
    (
        "consistent_rate",
        pl.Float64,
        "order-consistent win rate: agent_wins / judged (ties, inconsistent pairs count as not won); null "
        "with none judged",
    ),
    *_interval("consistent_low", "consistent_high", "consistent_rate"),
    ("raw_verdicts", pl.Int64, "single-order verdicts that parsed (two per pair at most)"),
    (
        "raw_rate",
        pl.Float64,
        "raw win rate: single-order verdicts naming the agent / raw_verdicts; null without verdicts",
    ),
    *_interval("raw_low", "raw_high", "raw_rate"),
    ("agent_scores", pl.Int64, "the agent's judgments with a score"),
    (
        "agent_mean_score",
        pl.Float64,
        "mean judge score (1-5) of the agent's responses, over agent_scores; null without any",
    ),
    *_interval("agent_score_low", "agent_score_high", "agent_mean_score"),
    ("baseline_scores", pl.Int64, "the baseline's judgments with a score"),
    (
        "baseline_mean_score",
        pl.Float64,
        "mean judge score (1-5) of the baseline's responses, over baseline_scores; null without any",
    ),
    *_interval("baseline_score_low", "baseline_score_high", "baseline_mean_score"),
    ("score_pairs", pl.Int64, "(item, setting, sample, aspect) that both systems have a score for"),
    (
        "score_difference",
        pl.Float64,
        "mean paired score difference agent - baseline over score_pairs; null without any",
    ),
    *_interval("score_difference_low", "score_difference_high", "score_difference"),
    ("interval_method", pl.String, "how the intervals were computed: method, unit, resamples and seed"),
)
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
        "agent wins",
        "baseline wins",
        "ties",
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


def decided_and_tied(summary: pl.DataFrame) -> tuple[int, int]:
    """Judged pairs over every agent and task: decided (both orders named the same winner), and not (a tie
    or the orders disagree)."""
    scopes = summary.filter(pl.col("scope") == "agent x task")
    decided = int(scopes["agent_wins"].sum() + scopes["baseline_wins"].sum())
    return decided, int(scopes["ties"].sum() + scopes["inconsistent"].sum())


def agent_task_win_rates(summary: pl.DataFrame) -> dict:
    """The agent x task scopes of the summary as ``win_rate_bars`` arguments: labels ('agent/task'),
    order-consistent win rates as (rate, low, high), judged pairs and ties."""
    per_agent = summary.filter(pl.col("scope") == "agent x task").rows(named=True)
    return {
        "labels": [f"{r['agent']}/{r['task']}" for r in per_agent],
        "rates": [(r["consistent_rate"], r["consistent_low"], r["consistent_high"]) for r in per_agent],
        "counts": [r["judged"] for r in per_agent],
        "ties": [r["ties"] for r in per_agent],
    }


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
