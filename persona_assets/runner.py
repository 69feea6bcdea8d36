"""Plan and run the materialization of a selection, partition ranges first.

Assets are taken in dependency order and grouped by partitions definition; each
group runs as one in-process run per contiguous range of the chosen partition
keys. All runs share this process, so the model is loaded once for the whole
job, and all are recorded in the Dagster instance the UI reads.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from dagster import (
    AssetKey,
    AssetSelection,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    MultiPartitionsDefinition,
    PartitionsDefinition,
    RunsFilter,
)

from persona_platform.partitions import partitioning
from persona_platform.persona_assets.progress import live_run

RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
# Which process executes an in-process run, so that a later `persona` can tell a killed run from a live one.
PID_TAG, HOST_TAG = "persona/pid", "persona/host"
# Step-level lines stay in the instance (the UI shows them). The terminal gets none: a step failure's
# traceback would be a hundred lines there, and `persona run` summarises it in one with the log's path.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass
class PlannedRun:
    asset_keys: list[AssetKey]
    partitions_def: PartitionsDefinition | None
    key_range: tuple[str, str] | None = None
    partition_count: int = 0


@dataclass
class RunOutcome:
    planned: PlannedRun
    run_id: str
    seconds: float
    success: bool
    error: str | None = field(default=None)


def contiguous_ranges(all_keys: Sequence[str], chosen: set[str]) -> list[list[str]]:
    """Split ``chosen`` into runs of consecutive keys in the order of ``all_keys``."""
    blocks, current = [], []
    for key in all_keys:
        if key in chosen:
            current.append(key)
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


def _dimension_filter(name: str, countries: set[str] | None, agents: set[str] | None) -> set[str] | None:
    return {"country": countries, "agent": agents}.get(name)


def partition_ranges(
    partitions_def: PartitionsDefinition, countries: set[str] | None, agents: set[str] | None
) -> list[tuple[tuple[str, str], int]]:
    """The (start, end) key ranges covering the chosen partitions, with their sizes."""
    if isinstance(partitions_def, MultiPartitionsDefinition):
        per_dimension = []
        for d in partitions_def.partitions_defs:
            keys = d.partitions_def.get_partition_keys()
            wanted = _dimension_filter(d.name, countries, agents)
            per_dimension.append(contiguous_ranges(keys, set(keys) if wanted is None else wanted))
        ranges = []
        for blocks in itertools.product(*per_dimension):
            start = "|".join(b[0] for b in blocks)
            end = "|".join(b[-1] for b in blocks)
            size = 1
            for b in blocks:
                size *= len(b)
            ranges.append(((start, end), size))
        return ranges
    keys = partitions_def.get_partition_keys()
    wanted = _dimension_filter(partitioning(partitions_def), countries, agents)
    return [((b[0], b[-1]), len(b)) for b in contiguous_ranges(keys, set(keys) if wanted is None else wanted)]


def plan_runs(
    defs: Definitions,
    selection: AssetSelection,
    countries: set[str] | None = None,
    agents: set[str] | None = None,
) -> list[PlannedRun]:
    graph = defs.resolve_asset_graph()
    selected = selection.resolve(graph)
    groups: list[PlannedRun] = []
    for level in graph.toposorted_asset_keys_by_level:
        keys = [k for k in level if k in selected and graph.get(k).is_materializable]
        by_def: dict[int, list[AssetKey]] = {}
        defs_by_id: dict[int, PartitionsDefinition | None] = {}
        for key in sorted(keys, key=lambda k: k.to_user_string()):
            pdef = graph.get(key).partitions_def
            by_def.setdefault(id(pdef), []).append(key)
            defs_by_id[id(pdef)] = pdef
        for def_id, level_keys in by_def.items():
            pdef = defs_by_id[def_id]
            previous = groups[-1] if groups else None
            # Safe to join the previous run: everything this level depends on ran in or before it.
            if previous is not None and previous.partitions_def == pdef:
                previous.asset_keys.extend(level_keys)
            else:
                groups.append(PlannedRun(level_keys, pdef))
    runs: list[PlannedRun] = []
    for group in groups:
        if group.partitions_def is None:
            runs.append(group)
            continue
        for key_range, size in partition_ranges(group.partitions_def, countries, agents):
            runs.append(PlannedRun(group.asset_keys, group.partitions_def, key_range, size))
    return runs


def op_config_for(defs: Definitions, asset_keys: Sequence[AssetKey], op_config: dict) -> dict:
    """The part of ``op_config`` (op name -> config) for the ops that compute these assets."""
    graph = defs.resolve_asset_graph()
    names = {graph.assets_def_for_key(k).op.name for k in asset_keys}
    return {name: value for name, value in op_config.items() if name in names}


def named_jobs(defs: Definitions) -> dict[str, frozenset[AssetKey]]:
    """Each job of the code location with the assets it can materialize."""
    jobs = {}
    for job in defs.jobs or []:
        resolved = defs.resolve_job_def(job.name)
        jobs[job.name] = frozenset(resolved.asset_layer.executable_asset_keys)
    return jobs


def job_for(jobs: dict[str, frozenset[AssetKey]], asset_keys: Sequence[AssetKey]) -> str | None:
    """The smallest named job that holds every one of ``asset_keys`` (ties: by name), so the UI shows a run
    under the job a user would launch; None when no job holds them all."""
    holding = [(len(keys), name) for name, keys in jobs.items() if keys.issuperset(asset_keys)]
    return min(holding)[1] if holding else None


def execute_plan(
    defs: Definitions,
    runs: Sequence[PlannedRun],
    instance: DagsterInstance,
    op_config: dict | None = None,
    log=print,
) -> list[RunOutcome]:
    jobs = named_jobs(defs)
    outcomes = []
    for index, planned in enumerate(runs):
        tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
        if planned.key_range:
            tags |= {RANGE_START: planned.key_range[0], RANGE_END: planned.key_range[1]}
        name = job_for(jobs, planned.asset_keys)
        job = defs.resolve_job_def(name) if name else defs.resolve_implicit_global_asset_job_def()
        names = ", ".join(k.to_user_string() for k in planned.asset_keys)
        where = f" [{planned.key_range[0]} .. {planned.key_range[1]}]" if planned.key_range else ""
        log(f"-> {job.name}: {names}{where}", flush=True)
        live_run(index, len(runs), f"{job.name}{where}")
        started = time.monotonic()
        result = job.execute_in_process(
            instance=instance,
            asset_selection=planned.asset_keys,
            tags=tags,
            run_config={**QUIET_CONSOLE, "ops": op_config_for(defs, planned.asset_keys, op_config or {})},
            raise_on_error=False,
        )
        outcome = RunOutcome(planned, result.run_id, time.monotonic() - started, result.success)
        if not result.success:
            failures = [e for e in result.all_events if e.is_step_failure]
            outcome.error = _root_cause(failures[0].event_specific_data.error) if failures else "run failed"
        outcomes.append(outcome)
        if not result.success:
            break
    return outcomes


def fail_orphaned_runs(instance: DagsterInstance) -> list[str]:
    """Mark failed the in-process runs of this host whose process is gone (killed mid-run): otherwise they
    stay 'started' forever, and the run queue counts them against their pools. Returns their run ids."""
    orphaned = []
    active = instance.get_runs(
        RunsFilter(
            statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING],
            tags={HOST_TAG: socket.gethostname()},
        )
    )
    for run in active:
        if not _process_alive(int(run.tags[PID_TAG])):
            instance.report_run_failed(run, "its persona process ended without finishing it (killed?)")
            orphaned.append(run.run_id)
    return orphaned


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _root_cause(error) -> str:
    """The innermost error message: a step failure wraps the user's error in Dagster's own."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()
