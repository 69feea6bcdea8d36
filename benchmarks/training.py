"""The agent chain on the embedded model: LoRA training throughput and model loads per process.

Runs every agent asset for the sample board in this process, in a fresh home,
with the embedded run profile, and reports training tokens per second per agent
and the model loads the whole chain needed (the goal is one).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import duckdb


def run() -> dict:
    home = Path(tempfile.mkdtemp(prefix="persona-bench-training-"))
    os.environ["PERSONA_HOME"] = str(home)  # before the code location reads its settings
    from dagster import AssetSelection

    from persona_platform.persona_assets.definitions import defs, settings
    from persona_platform.persona_assets.instance import EMBEDDED_PROFILE, load_op_config, prepare_instance
    from persona_platform.persona_assets.runner import execute_plan, plan_runs
    from persona_platform.resources.llm.resource import process_usage

    before = process_usage()
    started = time.perf_counter()
    runs = plan_runs(defs, AssetSelection.groups("agents"))
    outcomes = execute_plan(
        defs, runs, prepare_instance(settings), load_op_config(EMBEDDED_PROFILE), log=lambda *a, **k: None
    )
    seconds = time.perf_counter() - started
    failed = [o.error for o in outcomes if not o.success]
    if failed:
        raise RuntimeError(f"the agent chain failed: {failed[0]}")
    used = process_usage().since(before)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        agents = con.execute(
            "select agent, steps, tokens_trained, seconds from agents.lora_adapters order by agent"
        ).fetchall()
    tokens = sum(a[2] for a in agents)
    training_seconds = sum(a[3] for a in agents)
    return {
        "benchmark": "lora_training",
        "model": settings.llm.model,
        "chain_seconds": round(seconds, 2),
        "model_loads_for_chain": used.model_loads,
        "targets": {"one model load for the whole agent chain": used.model_loads == 1},
        "training_tokens_per_second": round(tokens / training_seconds, 1),
        "agents": [
            {
                "agent": a,
                "steps": s,
                "tokens_trained": t,
                "seconds": round(sec, 2),
                "tokens_per_second": round(t / sec, 1),
            }
            for a, s, t, sec in agents
        ],
    }


def markdown(report: dict) -> str:
    lines = [
        f"LoRA training on `{report['model']}` (agent chain: corpora, adapters, merged models, perplexity, "
        f"{report['chain_seconds']} s; model loads: {report['model_loads_for_chain']}).",
        "",
        "| agent | steps | tokens trained | seconds | tokens/s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {a['agent']} | {a['steps']} | {a['tokens_trained']:,} | {a['seconds']} "
        f"| {a['tokens_per_second']} |"
        for a in report["agents"]
    ]
    lines += [
        "",
        f"Overall: {report['training_tokens_per_second']} training tokens/s. Targets: "
        + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in report["targets"].items()),
    ]
    return "\n".join(lines)
