"""Dagster definitions load time and backfill planning time as the partitions and the experiments grow.

For each size, a synthetic survey with that many countries (one question each) is
written and a fresh interpreter loads the code location on it (countries are
partitions, read from the survey) with the repository's experiments, or with that many
copies of the primary one, then plans a backfill of every partition of every asset of
every experiment the way `persona run` and the schedules do: contiguous key ranges, one
run per range and partitions definition. The agent x country partitions grow with it
(agents x countries). The target: every experiment x 130 countries (the published
survey's size) planned in under a second.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPOSITORY_EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
# (countries, experiments): None is the repository's experiments.
SIZES = ((4, None), (130, None), (130, 8), (1_000, None), (10_000, None))
TARGET_COUNTRIES, TARGET_SECONDS = 130, 1.0
PROBE = """
import json, time
started = time.perf_counter()
from persona_platform.persona_assets.definitions import defs
defs.resolve_asset_graph()
defs.resolve_implicit_global_asset_job_def()
loaded = time.perf_counter()
from dagster import AssetSelection
from persona_platform.persona_assets.runner import plan_runs
runs = plan_runs(defs, AssetSelection.all())
planned = time.perf_counter()
from persona_platform.partitions import COUNTRIES, agent_country_partitions
from persona_platform.persona_assets.experiments import experiments
print(json.dumps({"countries": len(COUNTRIES), "experiments": len(experiments()),
                  "assets": len(list(defs.resolve_asset_graph().get_all_asset_keys())),
                  "agent_country_partitions": len(agent_country_partitions.get_partition_keys()),
                  "runs": len(runs), "partitions_planned": sum(r.partition_count or 1 for r in runs),
                  "load_seconds": loaded - started, "plan_seconds": planned - loaded}))
"""


def synthetic_survey(path: Path, countries: int) -> None:
    names = [f"Country {i:05d}" for i in range(countries)]
    selections = "defaultdict(<class 'list'>, {" + ", ".join(f"'{n}': [0.6, 0.4]" for n in names) + "})"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "selections", "options", "source"])
        writer.writerow(
            ["Is this a benchmark question?", selections, "['Yes', 'No']", "SYNTHETIC (benchmark)"]
        )


def experiment_copies(folder: Path, copies: int) -> Path:
    """``copies`` experiments: the primary one under other names."""
    folder.mkdir(parents=True, exist_ok=True)
    text = (REPOSITORY_EXPERIMENTS / "primary.yaml").read_text()
    for i in range(copies):
        (folder / f"copy_{i}.yaml").write_text(text)
    return folder


def measure(countries: int, copies: int | None, home: Path) -> dict:
    survey = home / f"survey-{countries}.csv"
    synthetic_survey(survey, countries)
    folder = experiment_copies(home / f"experiments-{copies}", copies) if copies else REPOSITORY_EXPERIMENTS
    env = {
        **os.environ,
        "PERSONA_HOME": str(home),
        "PERSONA_GOQA_SOURCE": str(survey),
        "PERSONA_EXPERIMENTS": str(folder),
    }
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).resolve().parents[1],
    )
    if result.returncode != 0:
        raise RuntimeError(f"planning probe at {countries} countries failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run() -> dict:
    home = Path(tempfile.mkdtemp(prefix="persona-bench-planning-"))
    rows = [measure(n, copies, home) for n, copies in SIZES]
    base_load, base_plan = rows[0]["load_seconds"], rows[0]["plan_seconds"]
    for row in rows:
        row["load_ratio_to_sample"] = round(row["load_seconds"] / base_load, 2)
        row["plan_ratio_to_sample"] = round(row["plan_seconds"] / base_plan, 1)
        row["load_seconds"] = round(row["load_seconds"], 2)
        row["plan_seconds"] = round(row["plan_seconds"], 4)
    target = [r for r in rows if r["countries"] == TARGET_COUNTRIES]
    return {
        "benchmark": "dagster_planning",
        "sizes": rows,
        "target": f"every experiment x {TARGET_COUNTRIES} countries planned in under {TARGET_SECONDS} s",
        "target_met": all(r["plan_seconds"] < TARGET_SECONDS for r in target),
    }


def markdown(report: dict) -> str:
    lines = [
        "### Definitions load and backfill planning",
        "",
        "| countries | experiments | assets | agent x country partitions | runs planned | partitions planned "
        "| load s | plan s | load / sample | plan / sample |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['countries']} | {r['experiments']} | {r['assets']} | {r['agent_country_partitions']} "
        f"| {r['runs']} | {r['partitions_planned']} "
        f"| {r['load_seconds']} "
        f"| {r['plan_seconds']} | {r['load_ratio_to_sample']} | {r['plan_ratio_to_sample']} |"
        for r in report["sizes"]
    ]
    met = "met" if report["target_met"] else "NOT met"
    return "\n".join([*lines, "", f"Target: {report['target']}: {met}."])
