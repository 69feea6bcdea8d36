"""Rows of the responses tables (no Dagster here)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from persona_platform.persona_assets.provenance import row_ref
from persona_platform.persona_assets.responses.tasks import (
    AGENT,
    BASELINE,
    COMPLETION,
    MONOLOGUE,
    SYSTEMS,
    TRAIT,
    SamplingSetting,
    context_messages,
    question_messages,
    sample_seed,
    system_chat,
)
from persona_platform.resources.llm.engine import GenerateRequest

ITEM_SCHEMA = {
    "agent": pl.String,
    "task": pl.String,
    "trait": pl.String,
    "messages": pl.String,
    "reference": pl.String,
    "reference_kind": pl.String,
}
RESPONSE_SCHEMA = {
    "agent": pl.String,
    "item_id": pl.String,
    "task": pl.String,
    "system": pl.String,
    "setting": pl.String,
    "temperature": pl.Float64,
    "top_p": pl.Float64,
    "top_k": pl.Int64,
    "repetition_penalty": pl.Float64,
    "sample": pl.Int64,
    "seed": pl.Int64,
    "response": pl.String,
}


def _item(
    agent: str,
    task: str,
    source_table: str,
    source_id: str,
    messages,
    reference: str,
    reference_kind: str,
    trait: str | None = None,
) -> dict:
    return {
        "row_id": f"{task}/{source_id}",
        "agent": agent,
        "task": task,
        "trait": trait,
        "messages": json.dumps(messages),
        "reference": reference,
        "reference_kind": reference_kind,
        "input_ids": [row_ref(source_table, source_id)],
    }


def item_rows(
    agent: str,
    probes: pl.DataFrame,
    completions: pl.DataFrame,
    monologue_prompts: pl.DataFrame,
    max_per_trait: int,
    max_completions: int,
    max_monologues: int,
) -> list[dict]:
    """Items in a fixed order: probe questions (per trait, up to the cap), held-out completions, monologue
    prompts. Questions whose generation failed have no text and are not items."""
    rows = []
    own = probes.filter((pl.col("agent") == agent) & pl.col("question").is_not_null()).sort(
        "trait", "chunk_id"
    )
    for trait in sorted(own["trait"].unique()):
        for r in own.filter(pl.col("trait") == trait).head(max_per_trait).iter_rows(named=True):
            rows.append(
                _item(
                    agent,
                    TRAIT,
                    "traits.probe_questions",
                    r["row_id"],
                    question_messages(r["question"]),
                    r["summary"],
                    "trait summary",
                    trait,
                )
            )
    held_out = completions.filter((pl.col("agent") == agent) & (pl.col("split") == "test")).sort(
        "meeting_id", "turn"
    )
    for r in held_out.head(max_completions).iter_rows(named=True):
        rows.append(
            _item(
                agent,
                COMPLETION,
                "agents.completion_examples",
                r["row_id"],
                context_messages(r["context"]),
                r["target"],
                "what the agent said next",
            )
        )
    prompts = monologue_prompts.filter((pl.col("agent") == agent) & pl.col("question").is_not_null()).sort(
        "monologue_id"
    )
    for r in prompts.head(max_monologues).iter_rows(named=True):
        rows.append(
            _item(
                agent,
                MONOLOGUE,
                "traits.monologue_prompts",
                r["row_id"],
                question_messages(r["question"]),
                r["monologue"],
                "the monologue",
            )
        )
    return rows


@dataclass(frozen=True)
class PlannedResponse:
    item: dict
    system: str
    setting: SamplingSetting
    sample: int
    source: str  # the row that makes the system: the agent's adapter or its persona profile
    request: GenerateRequest


def response_plan(
    items: Sequence[dict],
    names: dict[str, str],
    profiles: dict[str, str],
    grid: Sequence[SamplingSetting],
    samples: int,
    max_new_tokens: dict[str, int],
    base_seed: int,
) -> list[PlannedResponse]:
    """Every item, by both systems, under every setting, ``samples`` times with seeds the systems share."""
    plan = []
    for item in items:
        agent = item["agent"]
        messages = tuple(tuple(m) for m in json.loads(item["messages"]))
        for system in SYSTEMS:
            if system == BASELINE and agent not in profiles:
                raise ValueError(
                    f"traits.agent_profiles has no profile for agent {agent!r}: materialize it first"
                )
            chat = system_chat(system, names[agent], profiles.get(agent, ""), messages)
            source = row_ref("agents.lora_adapters" if system == AGENT else "traits.agent_profiles", agent)
            for index, setting in enumerate(grid):
                for sample in range(samples):
                    seed = sample_seed(base_seed, index, sample)
                    plan.append(
                        PlannedResponse(
                            item,
                            system,
                            setting,
                            sample,
                            source,
                            GenerateRequest(
                                chat,
                                max_new_tokens=max_new_tokens[item["task"]],
                                temperature=setting.temperature,
                                top_p=setting.top_p,
                                top_k=setting.top_k,
                                repetition_penalty=setting.repetition_penalty,
                                seed=seed,
                                adapter=agent if system == AGENT else None,
                            ),
                        )
                    )
    return plan


def response_row(planned: PlannedResponse, response: str) -> dict:
    item, setting = planned.item, planned.setting
    return {
        "row_id": f"{item['row_id']}/{planned.system}/{setting.label}/{planned.sample}",
        "agent": item["agent"],
        "item_id": item["row_id"],
        "task": item["task"],
        "system": planned.system,
        "setting": setting.label,
        "temperature": setting.temperature,
        "top_p": setting.top_p,
        "top_k": setting.top_k,
        "repetition_penalty": setting.repetition_penalty,
        "sample": planned.sample,
        "seed": planned.request.seed,
        "response": response.strip(),
        "adapter": planned.request.adapter,
        "input_ids": [row_ref("responses.evaluation_items", item["row_id"]), planned.source],
    }
