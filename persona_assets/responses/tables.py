"""Rows of the responses tables (no Dagster here)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from persona_platform.persona_assets.columns import columns
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

_AGENT = ("agent", pl.String, "the agent the item evaluates (its partition key)")
_TASK = ("task", pl.String, "the item's task: trait, completion or monologue")

ITEM_SCHEMA = columns(
    _AGENT,
    _TASK,
    ("trait", pl.String, "belief, memory or personality for a trait item; null for the other tasks"),
    (
        "messages",
        pl.String,
        "the turns both systems answer, as JSON [role, content] pairs: an 'Interviewer: {question}' user "
        "turn, or the held-out meeting context",
    ),
    (
        "reference",
        pl.String,
        "what a response is judged against: the trait summary, what the agent said next, or the monologue",
    ),
    (
        "reference_kind",
        pl.String,
        "the reference's kind: trait summary, what the agent said next, the monologue",
    ),
)
RESPONSE_SCHEMA = columns(
    _AGENT,
    ("item_id", pl.String, "the item's row in responses.evaluation_items"),
    _TASK,
    (
        "system",
        pl.String,
        "who answered: agent (base model + the agent's adapter, no system turn) or baseline (base model "
        "told the persona profile in a system turn)",
    ),
    (
        "setting",
        pl.String,
        "sampling setting: temperature, top-p, top-k, repetition penalty, written like T0.7_P0.8_K100_R1.2",
    ),
    ("temperature", pl.Float64, "sampling temperature of the setting"),
    ("top_p", pl.Float64, "nucleus sampling top-p of the setting"),
    ("top_k", pl.Int64, "top-k of the setting"),
    ("repetition_penalty", pl.Float64, "repetition penalty of the setting"),
    ("sample", pl.Int64, "0-based sample under the setting"),
    ("seed", pl.Int64, "sampling seed: base seed + 1000 x setting index + sample, the same for both systems"),
    ("response", pl.String, "the generated response, leading and trailing whitespace stripped"),
)


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
