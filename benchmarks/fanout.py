"""A backfill fanned out over parallel runs: the sample on this machine, and the plan for 130 countries.

Measured: `persona run` of the sample's country-partitioned model steps other than ICM (zero-shot base and
chat predictions, base opinions; one ICM country takes minutes on these cores), with their upstream, in a
fresh process and home, once as one run per stage in one process (the default) and once with
`--parallel 2` (each stage's 4 countries as 2 runs of 2, in 2 worker processes). The model steps' wall time
comes from the instance's step records; model loads from the command's summary.

Planned: 130 countries over N GPUs, the way a Dagster backfill cuts them (BackfillPolicy.multi_run with
`persona_assets.common.partitions_per_model_run`: contiguous runs of at most ceil(130 / N)) and the way
`persona run --parallel N` does (`runner.balanced_chunks`: N contiguous runs of about equal claims), each
run loading the model once. Expected hours per GPU: the heaviest run's countries times a country's cost,
measured here (the tiny model on these CPUs: a country's model steps in one process, best round) and at
the upstream fork's ~1.5 GPU-hours per country for a 70B model. With equal claims per country both cuts
are the same; with uneven claims (a seeded synthetic spread, not survey data) the heaviest contiguous run
of Dagster's equal-count chunks outweighs the mean.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SELECTION = (
    '+key:"elicitation/zero_shot_base_predictions" or +key:"elicitation/zero_shot_chat_predictions" '
    'or +key:"alignment/base_opinions"'
)
SUMMARY = re.compile(r"(?P<runs>\d+) of (?P<planned>\d+) runs succeeded .*?model loads (?P<loads>\d+)")
COUNTRIES = 130
GPUS = (1, 4, 8, 13, 16, 32)
UPSTREAM_GPU_HOURS_PER_COUNTRY = 1.5  # the upstream fork, 70B model, tree-ordered ICM (issue 21)
SKEW_SEED, SKEW_SIGMA = 21, 0.75


def _persona_run(home: Path, *extra: str) -> tuple[float, dict]:
    persona = Path(sys.executable).with_name("persona")
    started = time.perf_counter()
    result = subprocess.run(
        [str(persona), "run", "--select", SELECTION, *extra],
        env={**os.environ, "PERSONA_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    seconds = time.perf_counter() - started
    summary = SUMMARY.search(result.stdout)
    if result.returncode != 0 or summary is None:
        raise RuntimeError(
            f"persona run {' '.join(extra)} failed: {(result.stderr or result.stdout)[-2000:]}"
        )
    return seconds, {k: int(v) for k, v in summary.groupdict().items()}


def model_step_walls(home: Path) -> tuple[dict[str, float], dict[str, float], int]:
    """Per model step (op): its wall time from the first of its runs' starts to the last one's end, and the
    sum of its runs' durations; and how many partitions its runs covered."""
    from dagster import DagsterInstance

    from persona_platform.persona_assets.common import GPU_POOL
    from persona_platform.persona_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    model_ops = {
        graph.assets_def_for_key(k).op.name
        for k in graph.get_all_asset_keys()
        if graph.get(k).is_materializable and GPU_POOL in (graph.get(k).pools or ())
    }
    spans: dict[str, list[tuple[float, float]]] = {}
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        for record in instance.get_run_records():
            for stats in instance.get_run_step_stats(record.dagster_run.run_id):
                if stats.step_key in model_ops and stats.start_time and stats.end_time:
                    spans.setdefault(stats.step_key, []).append((stats.start_time, stats.end_time))
    walls = {op: max(e for _, e in s) - min(b for b, _ in s) for op, s in spans.items()}
    busy = {op: sum(e - b for b, e in s) for op, s in spans.items()}
    return walls, busy, len(spans)


ROUNDS = 2  # alternating, so that load from other work on a shared machine falls on both sides
LABELS = {"one process (default)": (), "--parallel 2": ("--parallel", "2")}


def measure_sample() -> dict:
    from persona_platform.partitions import COUNTRIES as SAMPLE_COUNTRIES

    root = Path(tempfile.mkdtemp(prefix="persona-bench-fanout-"))
    measured: dict[str, list[dict]] = {label: [] for label in LABELS}
    for round_ in range(ROUNDS):
        for label, extra in LABELS.items():
            home = root / f"{round_}-{'parallel' if extra else 'one'}"
            seconds, summary = _persona_run(home, *extra)
            walls, busy, _ = model_step_walls(home)
            measured[label].append(
                {
                    "command_seconds": round(seconds, 1),
                    "runs": summary["runs"],
                    "model_loads": summary["loads"],
                    "model_steps_wall_seconds": round(sum(walls.values()), 1),
                    "model_steps_run_seconds": round(sum(busy.values()), 1),
                    "model_steps": {op: round(w, 1) for op, w in sorted(walls.items())},
                }
            )
    rows = {
        label: min(rounds, key=lambda r: r["model_steps_wall_seconds"]) for label, rounds in measured.items()
    }
    for label, rounds in measured.items():
        rows[label] = {
            **rows[label],
            "command_seconds_range": [
                min(r["command_seconds"] for r in rounds),
                max(r["command_seconds"] for r in rounds),
            ],
            "model_steps_wall_seconds_range": [
                min(r["model_steps_wall_seconds"] for r in rounds),
                max(r["model_steps_wall_seconds"] for r in rounds),
            ],
        }
    one, two = rows["one process (default)"], rows["--parallel 2"]
    best = {label: row["model_steps_wall_seconds_range"][0] for label, row in rows.items()}
    commands = {label: row["command_seconds_range"][0] for label, row in rows.items()}
    return {
        "countries": len(SAMPLE_COUNTRIES),
        "selection": SELECTION,
        "rounds": ROUNDS,
        "rows": rows,
        "model_steps_wall_ratio": round(best["one process (default)"] / best["--parallel 2"], 2),
        "command_wall_ratio": round(commands["one process (default)"] / commands["--parallel 2"], 2),
        "seconds_per_country": round(one["model_steps_wall_seconds"] / len(SAMPLE_COUNTRIES), 2),
        "loads": {"one process (default)": one["model_loads"], "--parallel 2": two["model_loads"]},
    }


def _dagster_chunks(weights: list[float], per_run: int | None) -> list[tuple[int, int]]:
    """What a Dagster backfill makes of one contiguous range with multi_run(per_run): runs of per_run keys
    from the first (automation_tick_evaluation_context._build_run_requests_for_partition_key_range)."""
    n = len(weights)
    per_run = per_run or n
    return [(start, min(start + per_run, n) - 1) for start in range(0, n, per_run)]


def plan(seconds_per_country: float) -> dict:
    from persona_platform.persona_assets.common import partitions_per_model_run
    from persona_platform.persona_assets.runner import balanced_chunks, chunk_count
    from persona_platform.resources.settings import Deployment

    rng = random.Random(SKEW_SEED)
    spreads = {
        "equal claims": [1.0] * COUNTRIES,
        "uneven claims": [rng.lognormvariate(0, SKEW_SIGMA) for _ in range(COUNTRIES)],
    }
    rows = []
    for spread, weights in spreads.items():
        mean = sum(weights) / len(weights)
        for gpus in GPUS:
            per_run = partitions_per_model_run(COUNTRIES, Deployment(gpus=gpus))
            dagster = _dagster_chunks(weights, per_run)
            ours = balanced_chunks(weights, chunk_count(COUNTRIES, gpus, None))

            def heaviest(chunks, weights=weights, mean=mean):
                return max(sum(weights[a : b + 1]) for a, b in chunks) / mean  # in mean countries

            rows.append(
                {
                    "spread": spread,
                    "gpus": gpus,
                    "partitions_per_run": per_run or COUNTRIES,
                    "backfill_runs": len(dagster),
                    "backfill_heaviest_countries": round(heaviest(dagster), 2),
                    "backfill_hours_per_gpu": round(heaviest(dagster) * UPSTREAM_GPU_HOURS_PER_COUNTRY, 1),
                    "parallel_runs": len(ours),
                    "parallel_heaviest_countries": round(heaviest(ours), 2),
                    "parallel_hours_per_gpu": round(heaviest(ours) * UPSTREAM_GPU_HOURS_PER_COUNTRY, 1),
                    "ideal_hours_per_gpu": round(
                        COUNTRIES * UPSTREAM_GPU_HOURS_PER_COUNTRY / min(gpus, COUNTRIES), 1
                    ),
                    "measured_seconds_per_gpu": round(heaviest(ours) * seconds_per_country, 1),
                    "model_loads": len(dagster),
                }
            )
    return {
        "countries": COUNTRIES,
        "gpu_hours_per_country": UPSTREAM_GPU_HOURS_PER_COUNTRY,
        "measured_seconds_per_country": seconds_per_country,
        "rows": rows,
    }


def run() -> dict:
    sample = measure_sample()
    return {"benchmark": "fanout", "sample": sample, "plan": plan(sample["seconds_per_country"])}


def markdown(report: dict) -> str:
    sample, planned = report["sample"], report["plan"]
    lines = [
        f"### Fan-out: the sample's country model steps (no ICM), {sample['countries']} countries, "
        f"best and range of {sample['rounds']} alternating rounds",
        "",
        "| | command s | runs | model loads | model steps wall s | model steps run s |",
        "|---|---|---|---|---|---|",
    ]
    for label, row in sample["rows"].items():
        command, wall = row["command_seconds_range"], row["model_steps_wall_seconds_range"]
        lines.append(
            f"| {label} | {command[0]}–{command[1]} | {row['runs']} | {row['model_loads']} "
            f"| {wall[0]}–{wall[1]} | {row['model_steps_run_seconds']} |"
        )
    lines += [
        "",
        "Wall ratio, one process / `--parallel 2` (best of each): "
        f"model steps {sample['model_steps_wall_ratio']}, whole command {sample['command_wall_ratio']}; "
        f"measured cost {sample['seconds_per_country']} s per country (model steps, one process, best).",
        "",
        f"### Plan: {planned['countries']} countries over N GPUs "
        f"(at {planned['gpu_hours_per_country']} GPU-h per country)",
        "",
        "| claims | GPUs | partitions per run | backfill runs | heaviest run, countries | hours per GPU "
        "| `--parallel N` heaviest | hours per GPU | ideal | measured here, s per GPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in planned["rows"]:
        lines.append(
            f"| {r['spread']} | {r['gpus']} | {r['partitions_per_run']} | {r['backfill_runs']} "
            f"| {r['backfill_heaviest_countries']} | {r['backfill_hours_per_gpu']} "
            f"| {r['parallel_heaviest_countries']} | {r['parallel_hours_per_gpu']} "
            f"| {r['ideal_hours_per_gpu']} | {r['measured_seconds_per_gpu']} |"
        )
    return "\n".join(lines)
