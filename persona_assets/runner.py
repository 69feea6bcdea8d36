"""Plan and run the materialization of a selection, partition ranges first.

Assets are taken in dependency order and grouped by partitions definition; each
group runs as one in-process run per contiguous range of the chosen partition
keys. All runs share this process, so the model is loaded once for the whole
job, and all are recorded in the Dagster instance the UI reads.

Fanned out (``persona run --parallel K``), the steps that load a model are planned
apart from the rest, and each of their ranges is cut into contiguous chunks of
about equal expected cost (claims per country, examples per agent), as many as
K (more when PERSONA_PARTITIONS_PER_RUN caps a chunk). The chunks run in K worker
processes (``fanout``), each loading the model once for every chunk it takes; the
model-free runs stay in this process, one at a time, between them.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

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
from persona_platform.persona_assets.common import GPU_POOL
from persona_platform.persona_assets.experiments import EXPERIMENT_TAG
from persona_platform.persona_assets.experiments import experiments as all_experiments
from persona_platform.persona_assets.progress import live_run
from persona_platform.resources.settings import SettingsError

RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
# Which process executes an in-process run, so that a later `persona` can tell a killed run from a live one.
PID_TAG, HOST_TAG = "persona/pid", "persona/host"
# The worker process of `persona run --parallel` that executed a run, and how many workers there were.
WORKER_TAG, PARALLEL_TAG = "persona/worker", "persona/parallel"
# Step-level lines stay in the instance (the UI shows them). The terminal gets none: a step failure's
# traceback would be a hundred lines there, and `persona run` summarises it in one with the log's path.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass
class PlannedRun:
    asset_keys: list[AssetKey]
    partitions_def: PartitionsDefinition | None
    key_range: tuple[str, str] | None = None
    partition_count: int = 0
    # Its steps load a model (pool gpu); fanned out, such runs hold no model-free step.
    model: bool = False
    # Runs of one stage may run at once; a stage starts when the one before it has ended.
    stage: int = 0
    # Expected cost, in claims (countries) or examples (agents), where the plan weighed it.
    cost: float = 0.0


@dataclass
class RunOutcome:
    planned: PlannedRun
    run_id: str
    seconds: float
    success: bool
    error: str | None = field(default=None)
    # What the run's process asked of its engines during the run (counted for runs in a worker process).
    model_loads: int = 0
    forward_passes: int = 0
    tokens_computed: int = 0
    worker: int | None = None


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
    parallel: int = 1,
    per_run: int | None = None,
) -> list[PlannedRun]:
    """The runs that materialize ``selection`` for the chosen partitions, in dependency order. With
    ``parallel`` > 1, model steps are runs of their own, each range cut into balanced chunks
    (``chunk_count``), a stage of runs that may run at once."""
    graph = defs.resolve_asset_graph()
    selected = selection.resolve(graph)
    fanned_out = parallel > 1
    groups: list[PlannedRun] = []
    for level in graph.toposorted_asset_keys_by_level:
        keys = [k for k in level if k in selected and graph.get(k).is_materializable]
        by_def: dict[tuple[int, bool], list[AssetKey]] = {}
        defs_by_id: dict[int, PartitionsDefinition | None] = {}
        for key in sorted(keys, key=lambda k: k.to_user_string()):
            pdef = graph.get(key).partitions_def
            model = fanned_out and GPU_POOL in (graph.get(key).pools or ())
            by_def.setdefault((id(pdef), model), []).append(key)
            defs_by_id[id(pdef)] = pdef
        for (def_id, model), level_keys in by_def.items():
            pdef = defs_by_id[def_id]
            previous = groups[-1] if groups else None
            # Safe to join the previous run: everything this level depends on ran in or before it.
            if previous is not None and previous.partitions_def == pdef and previous.model == model:
                previous.asset_keys.extend(level_keys)
            else:
                groups.append(PlannedRun(level_keys, pdef, model=model, stage=len(groups)))
    runs: list[PlannedRun] = []
    for group in groups:
        group.model = any(GPU_POOL in (graph.get(k).pools or ()) for k in group.asset_keys)
        # Fanned out, each experiment's model steps are runs of their own: experiments share no model step
        # and usually cost alike, so they balance the workers where partitions cannot (3 agents on 2).
        experiments = by_experiment(graph, group.asset_keys) if fanned_out and group.model else []
        if group.partitions_def is None:
            runs += [PlannedRun(keys, None, model=True, stage=group.stage) for keys in experiments] or [group]
            continue
        for key_range, size in partition_ranges(group.partitions_def, countries, agents):
            if experiments:
                workers = max(1, math.ceil(parallel / len(experiments)))  # each experiment's share
                for keys in experiments:
                    for chunk_range, chunk_size, cost in split_range(
                        group.partitions_def, key_range, workers, per_run
                    ):
                        runs.append(
                            PlannedRun(
                                keys,
                                group.partitions_def,
                                chunk_range,
                                chunk_size,
                                model=True,
                                stage=group.stage,
                                cost=cost,
                            )
                        )
            else:
                runs.append(
                    PlannedRun(
                        group.asset_keys, group.partitions_def, key_range, size, group.model, group.stage
                    )
                )
    return runs


def by_experiment(graph, keys: list[AssetKey]) -> list[list[AssetKey]]:
    """``keys`` grouped by the experiment their assets belong to (tag persona/experiment; shared assets in a
    group of their own), in first-seen order."""
    groups: dict[str | None, list[AssetKey]] = {}
    for key in keys:
        groups.setdefault(graph.get(key).tags.get(EXPERIMENT_TAG), []).append(key)
    return list(groups.values())


# -- chunks of partitions balanced by expected cost -------------------------------------------------------


def chunk_count(partitions: int, parallel: int, per_run: int | None) -> int:
    """How many runs a range of ``partitions`` becomes: one per worker (``parallel``), more where a run may
    take at most ``per_run`` partitions, never more than the partitions."""
    wanted = max(parallel, math.ceil(partitions / per_run) if per_run else 1)
    return max(1, min(wanted, partitions))


def balanced_chunks(
    weights: Sequence[float], count: int, max_size: int | None = None
) -> list[tuple[int, int]]:
    """Cut ``weights`` into ``count`` contiguous chunks (first and last index) of at most ``max_size`` items
    each, the heaviest chunk as light as it can be: a binary search over the heaviest chunk's weight, each
    bound tried greedily (greedy is exact for contiguous chunks), then the heaviest chunks halved until there
    are ``count``. More than ``count`` when ``max_size`` needs more; at most one per item."""
    n = len(weights)
    if n == 0:
        return []
    max_size = max_size or n
    count = min(max(count, math.ceil(n / max_size)), n)

    def greedy(cap: float) -> list[tuple[int, int]]:
        chunks, start, total = [], 0, 0.0
        for i, w in enumerate(weights):
            if i > start and (total + w > cap or i - start >= max_size):
                chunks.append((start, i - 1))
                start, total = i, 0.0
            total += w
        chunks.append((start, n - 1))
        return chunks

    low, high = max(weights), float(sum(weights))
    best = greedy(high)
    for _ in range(64):
        if high - low <= 1e-9 * max(high, 1.0):
            break
        middle = (low + high) / 2
        chunks = greedy(middle)
        if len(chunks) <= count:
            best, high = chunks, middle
        else:
            low = middle

    even = _even_chunks(weights, count, high, max_size)
    if even is not None:
        return even

    def weight(chunk: tuple[int, int]) -> float:
        return float(sum(weights[chunk[0] : chunk[1] + 1]))

    while len(best) < count:
        heaviest = max((c for c in best if c[1] > c[0]), key=weight)
        start, end = heaviest
        total, running, cut, gap = weight(heaviest), 0.0, start, math.inf
        for i in range(start, end):  # the cut that leaves the two halves closest in weight
            running += weights[i]
            if abs(total - 2 * running) < gap:
                cut, gap = i, abs(total - 2 * running)
        position = best.index(heaviest)
        best[position : position + 1] = [(start, cut), (cut + 1, end)]
    return best


def _even_chunks(
    weights: Sequence[float], count: int, cap: float, max_size: int
) -> list[tuple[int, int]] | None:
    """Exactly ``count`` chunks, none heavier than ``cap`` (the least possible) nor longer than
    ``max_size``, each as close as it can get to an equal share of what is left: 130 equal countries over
    16 runs are 8 or 9 each, not 9 and a remainder. None where this way misses the cap."""
    n, chunks, start, remaining = len(weights), [], 0, float(sum(weights))
    for left in range(count, 0, -1):
        end, total = start, weights[start]
        if left == 1:
            end, total = n - 1, remaining
        else:
            target = remaining / left
            while (
                end + 1 < n - (left - 1)
                and end + 1 - start < max_size
                and total + weights[end + 1] <= cap
                and abs(total + weights[end + 1] - target) <= abs(total - target)
            ):
                end += 1
                total += weights[end]
        chunks.append((start, end))
        remaining -= total
        start = end + 1
    if (
        any(b - a + 1 > max_size or sum(weights[a : b + 1]) > cap * (1 + 1e-9) for a, b in chunks)
        or start != n
    ):
        return None
    return chunks


def split_range(
    partitions_def: PartitionsDefinition, key_range: tuple[str, str], parallel: int, per_run: int | None
) -> list[tuple[tuple[str, str], int, float]]:
    """A range of partitions as contiguous chunks balanced by expected cost: (range, partitions, cost) each.
    A range of agent x country partitions is a rectangle; it is cut along its longer side."""
    if isinstance(partitions_def, MultiPartitionsDefinition):
        starts, ends = key_range[0].split("|"), key_range[1].split("|")
        sides = []
        for d, start, end in zip(partitions_def.partitions_defs, starts, ends, strict=True):
            keys = d.partitions_def.get_partition_keys()
            sides.append((d.name, keys[keys.index(start) : keys.index(end) + 1]))
        axis = max(range(len(sides)), key=lambda i: len(sides[i][1]))
        across = math.prod(len(keys) for i, (_, keys) in enumerate(sides) if i != axis)
        name, keys = sides[axis]
        costs = dimension_costs(name)
        weights = [costs.get(k, 1.0) * across for k in keys]
        limit = max(1, per_run // across) if per_run else None
        chunks = balanced_chunks(weights, chunk_count(len(keys), parallel, limit), limit)
        result = []
        for first, last in chunks:
            start = [*starts]
            end = [*ends]
            start[axis], end[axis] = keys[first], keys[last]
            size = (last - first + 1) * across
            result.append((("|".join(start), "|".join(end)), size, sum(weights[first : last + 1])))
        return result
    all_keys = partitions_def.get_partition_keys()
    keys = all_keys[all_keys.index(key_range[0]) : all_keys.index(key_range[1]) + 1]
    costs = dimension_costs(partitioning(partitions_def))
    weights = [costs.get(k, 1.0) for k in keys]
    chunks = balanced_chunks(weights, chunk_count(len(keys), parallel, per_run), per_run)
    return [((keys[a], keys[b]), b - a + 1, sum(weights[a : b + 1])) for a, b in chunks]


@lru_cache(maxsize=4)
def dimension_costs(dimension: str) -> Mapping[str, float]:
    """Expected cost of each partition key of a dimension, in the unit of work of its model steps: survey
    rows with an answer distribution per country (each becomes claims every country step scores), turns
    spoken in the board's transcripts per agent (each becomes training and evaluation examples). A key
    with none costs 1."""
    from persona_platform.partitions import AGENTS
    from persona_platform.resources.inputs.survey import read_survey_once
    from persona_platform.resources.inputs.transcripts import alias_table, read_meetings, speaker_agent
    from persona_platform.resources.settings import load_settings

    settings = load_settings()
    counts: dict[str, float] = {}
    if dimension == "country":
        for record in read_survey_once(settings.goqa_source).records:
            if record.distribution is not None:
                counts[record.country] = counts.get(record.country, 0.0) + 1
    elif dimension == "agent":
        aliases = alias_table(AGENTS)
        for meeting in read_meetings(settings.board_dir / "transcripts"):
            for turn in meeting.turns:
                agent = speaker_agent(turn.speaker, aliases)
                if agent:
                    counts[agent] = counts.get(agent, 0.0) + 1
    return {key: max(1.0, value) for key, value in counts.items()}


def experiment_op_config(defs: Definitions, ops: dict, experiments: Collection[str], source) -> dict:
    """Run config by op name. A key that names an op is kept; a step name (an experiment's op name without
    the experiment, e.g. ``icm_search``, ``few_shot_predictions``) applies to that step of each of
    ``experiments``. A key that names neither is refused."""
    names = {a.op.name for a in defs.resolve_asset_graph().assets_defs if a.is_executable}
    every = {x.name for x in all_experiments()}
    config = {}
    for key, value in ops.items():
        if key in names:
            config[key] = value
            continue
        steps = [n for n in names if n.split("__", 1)[0] in every and n.rsplit("__", 1)[1] == key]
        if not steps:
            raise SettingsError(f"{source}: ops.{key}: no op or experiment step of that name")
        config |= {n: value for n in steps if n.split("__", 1)[0] in experiments}
    return config


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
    tags: Mapping[str, str] | None = None,
    progress: tuple[int, int] | None = None,
) -> list[RunOutcome]:
    """Each run in this process, one after another, until one fails. ``progress``: the first run's index
    and the total, where these runs are part of a longer plan."""
    jobs = named_jobs(defs)
    outcomes = []
    first, total = progress or (0, len(runs))
    for index, planned in enumerate(runs):
        run_tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(), **(tags or {})}
        if planned.key_range:
            run_tags |= {RANGE_START: planned.key_range[0], RANGE_END: planned.key_range[1]}
        name = job_for(jobs, planned.asset_keys)
        job = defs.resolve_job_def(name) if name else defs.resolve_implicit_global_asset_job_def()
        log(f"-> {job.name}: {describe(planned)}", flush=True)
        live_run(first + index, total, f"{job.name}{_where(planned)}")
        started = time.monotonic()
        result = job.execute_in_process(
            instance=instance,
            asset_selection=planned.asset_keys,
            tags=run_tags,
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


def _where(planned: PlannedRun) -> str:
    return f" [{planned.key_range[0]} .. {planned.key_range[1]}]" if planned.key_range else ""


def describe(planned: PlannedRun) -> str:
    return ", ".join(k.to_user_string() for k in planned.asset_keys) + _where(planned)


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
