"""Rows of the judging tables (no Dagster here)."""

from __future__ import annotations

import json

import polars as pl

from persona_assets.judging.outcomes import combine, flatten
from persona_assets.judging.rubrics import Aspect, Item
from persona_assets.provenance import row_ref
from persona_assets.structured_output import Parsed

ITEMS, RESPONSES = "responses.evaluation_items", "responses.task_responses"
JUDGMENT_SCHEMA = {"agent": pl.String, "item_id": pl.String, "response_id": pl.String, "task": pl.String,
                   "trait": pl.String, "system": pl.String, "setting": pl.String, "sample": pl.Int64,
                   "aspect": pl.String, "score": pl.Int64, "explanation": pl.String, "reply": pl.String,
                   "failure": pl.String}
COMPARISON_SCHEMA = {"agent": pl.String, "item_id": pl.String, "task": pl.String, "trait": pl.String,
                     "setting": pl.String, "sample": pl.Int64, "agent_response_id": pl.String,
                     "baseline_response_id": pl.String, "verdict_agent_first": pl.String,
                     "verdict_baseline_first": pl.String, "outcome": pl.String, "reply_agent_first": pl.String,
                     "reply_baseline_first": pl.String, "failure_agent_first": pl.String,
                     "failure_baseline_first": pl.String}


def judge_items(items: pl.DataFrame, speaker_of: dict[str, str]) -> dict[str, Item]:
    """Evaluation items as the judge reads them, by row id; ``speaker_of`` maps agent keys to display names."""
    return {r["row_id"]: Item(r["row_id"], r["task"], r["trait"], flatten(json.loads(r["messages"]), speaker_of[r["agent"]]),
                              r["reference"], r["reference_kind"])
            for r in items.iter_rows(named=True)}


def judgment_row(response: dict, item: Item, aspect: Aspect, reply: str, parsed: Parsed) -> dict:
    return {"row_id": f"{response['row_id']}/{aspect.name}", "agent": response["agent"], "item_id": response["item_id"],
            "response_id": response["row_id"], "task": response["task"], "trait": item.trait, "system": response["system"],
            "setting": response["setting"], "sample": response["sample"], "aspect": aspect.name,
            "score": int(parsed.value["score"]) if parsed.ok else None,
            "explanation": parsed.value["explanation"] if parsed.ok else None, "reply": reply, "failure": parsed.failure,
            "partition_key": response["agent"],
            "input_ids": [row_ref(RESPONSES, response["row_id"]), row_ref(ITEMS, response["item_id"])]}


def comparison_row(item: Item, agent_response: dict, baseline_response: dict, verdicts: dict[str, str | None],
                   replies: dict[str, tuple[str, Parsed]]) -> dict:
    a = agent_response
    (reply_af, parsed_af), (reply_bf, parsed_bf) = replies["agent_first"], replies["baseline_first"]
    return {"row_id": f"{a['item_id']}/{a['setting']}/{a['sample']}", "agent": a["agent"], "item_id": a["item_id"],
            "task": a["task"], "trait": item.trait, "setting": a["setting"], "sample": a["sample"],
            "agent_response_id": a["row_id"], "baseline_response_id": baseline_response["row_id"],
            "verdict_agent_first": verdicts["agent_first"], "verdict_baseline_first": verdicts["baseline_first"],
            "outcome": combine(verdicts["agent_first"], verdicts["baseline_first"]),
            "reply_agent_first": reply_af, "reply_baseline_first": reply_bf,
            "failure_agent_first": parsed_af.failure, "failure_baseline_first": parsed_bf.failure,
            "partition_key": a["agent"],
            "input_ids": [row_ref(RESPONSES, a["row_id"]), row_ref(RESPONSES, baseline_response["row_id"]),
                          row_ref(ITEMS, a["item_id"])]}
