"""Model loads for a full materialization of the sample graph vs the upstream pattern.

Ours: `persona run` of every asset of the sample graph, in a fresh process and home,
with the embedded run profile; the engine counts its loads and the run prints them.
Upstream: one model load per agent x stage x sampling setting (and per country
or agent x country for the survey stages), counted on the same graph: every asset
that computes with a model (pool ``gpu``) costs one load per partition it covers,
times the sampling settings for the stages that run per setting.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUMMARY = re.compile(r"(?P<runs>\d+) of \d+ runs succeeded .*?model loads (?P<loads>\d+)")

# The stages upstream ran once per sampling setting (responses, judging); perplexity loaded every model it
# compared.
PER_SETTING_STAGES = {"responses__task_responses", "judging__judgments", "judging__pairwise_comparisons"}
PER_MODEL_STAGES = {"agents__perplexity_matrix"}


def upstream_loads(defs, settings: int, agents: int) -> dict[str, int]:
    """Loads per step (op) that computes with a model: one per partition, times the settings where it ran
    per setting."""
    graph = defs.resolve_asset_graph()
    loads = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if not node.is_materializable or "gpu" not in (node.pools or ()):
            continue
        op = graph.assets_def_for_key(key).op.name  # a multi-asset's outputs share one step
        stage = op.split("__", 1)[1] if len(key.path) == 3 else op  # an experiment's step, as every one's
        partitions = len(node.partitions_def.get_partition_keys()) if node.partitions_def else 1
        if stage in PER_MODEL_STAGES:
            partitions = agents + 1  # the base model and every agent's
        loads[op] = partitions * (settings if stage in PER_SETTING_STAGES else 1)
    return loads


def run() -> dict:
    """`persona run` of the whole sample graph in a fresh process and home, as a user runs it."""
    home = Path(tempfile.mkdtemp(prefix="persona-bench-loads-"))
    persona = Path(sys.executable).with_name("persona")
    started = time.perf_counter()
    result = subprocess.run(
        [str(persona), "run"],
        env={**os.environ, "PERSONA_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    seconds = time.perf_counter() - started
    summary = SUMMARY.search(result.stdout)
    if result.returncode != 0 or summary is None:
        raise RuntimeError(f"persona run failed: {(result.stderr or result.stdout)[-2000:]}")
    from persona_platform.partitions import AGENTS
    from persona_platform.persona_assets.definitions import defs
    from persona_platform.persona_assets.instance import EMBEDDED_PROFILE, load_op_config

    grid = (
        load_op_config(EMBEDDED_PROFILE).get("responses__task_responses", {}).get("config", {}).get("grid")
        or [None] * 4
    )
    upstream = upstream_loads(defs, len(grid), len(AGENTS))
    ours = int(summary["loads"])
    return {
        "benchmark": "model_loads",
        "runs": int(summary["runs"]),
        "seconds": round(seconds, 1),
        "sampling_settings": len(grid),
        "model_loads_ours": ours,
        "model_loads_upstream_pattern": sum(upstream.values()),
        "ratio_ours_vs_upstream": round(ours / sum(upstream.values()), 4),
        "upstream_by_step": dict(sorted(upstream.items())),
    }


def markdown(report: dict) -> str:
    lines = [
        f"### Model loads, whole sample graph ({report['runs']} runs, {report['seconds']} s)",
        "",
        "| | model loads |",
        "|---|---|",
        f"| this platform (one process, adapters on one base model) | {report['model_loads_ours']} |",
        "| upstream pattern (one per agent x stage x sampling setting) "
        f"| {report['model_loads_upstream_pattern']} |",
        f"| ratio | {report['ratio_ours_vs_upstream']} |",
        "",
        "Upstream loads by step:",
        "",
    ]
    lines += [f"- `{k}`: {v}" for k, v in report["upstream_by_step"].items()]
    return "\n".join(lines)
