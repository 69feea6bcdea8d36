"""``persona run --parallel K``: the model runs of a fanned-out plan (``runner.plan_runs(..., parallel=K)``)
in K worker processes, each loading the code location and then the model once for every run it takes; the
model-free runs in the command's own process, between the model stages.

Apart from ``runner`` because a worker loads the code location (``definitions``), which imports what
``runner`` serves (automation, the instance).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from dagster import AssetKey, DagsterInstance, Definitions

from persona_platform.persona_assets.progress import live_run
from persona_platform.persona_assets.runner import (
    PARALLEL_TAG,
    WORKER_TAG,
    PlannedRun,
    RunOutcome,
    describe,
    execute_plan,
)


def execute_fanned_out(
    defs: Definitions,
    runs: Sequence[PlannedRun],
    instance: DagsterInstance,
    op_config: dict | None,
    parallel: int,
    log=print,
    deployment=None,
) -> list[RunOutcome]:
    """Run the plan of ``plan_runs(..., parallel=K)`` stage by stage: a stage of model runs in a pool of
    worker processes, at most ``parallel`` runs at once (the rest wait in the pool's queue), each worker
    loading the model once for all the runs it takes; a model-free stage in this process. Stops after the
    first stage with a failed run."""
    from persona_platform.resources.settings import load_deployment

    stages: dict[int, list[PlannedRun]] = {}
    for planned in runs:
        stages.setdefault(planned.stage, []).append(planned)
    widest = max((len(stage) for stage in stages.values() if stage[0].model), default=0)
    outcomes: list[RunOutcome] = []
    # Started before the first stage, so that the workers load the code location while the model-free
    # runs before it go on here.
    with worker_pool(min(parallel, widest), op_config, deployment or load_deployment(), parallel) as pool:
        for stage in stages.values():
            if stage[0].model and pool is not None:
                done = pool.run(stage, log, progress=(len(outcomes), len(runs)))
            else:
                done = execute_plan(
                    defs, stage, instance, op_config, log, progress=(len(outcomes), len(runs))
                )
            outcomes += done
            if any(not o.success for o in done):
                break
    return outcomes


def worker_environment(index: int, workers: int, deployment, environ: Mapping[str, str]) -> dict[str, str]:
    """What worker ``index`` of ``workers`` gets in its environment: on CPU a share of the cores for torch
    (unless OMP_NUM_THREADS is set), and with PERSONA_GPUS > 1 its own GPUs (tensor_parallel_size of them,
    from CUDA_VISIBLE_DEVICES or 0..PERSONA_GPUS-1), so the workers do not share one device."""
    env = {}
    if "OMP_NUM_THREADS" not in environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    if deployment.gpus > 1:
        visible = [d for d in (environ.get("CUDA_VISIBLE_DEVICES") or "").split(",") if d.strip()]
        visible = visible or [str(i) for i in range(deployment.gpus)]
        size = deployment.tensor_parallel_size
        groups = len(visible) // size
        if groups:
            group = index % groups
            env["CUDA_VISIBLE_DEVICES"] = ",".join(visible[group * size : (group + 1) * size])
    return env


@contextmanager
def _environ(changes: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class WorkerPool:
    """Worker processes (spawned: a fresh interpreter each) that take planned runs from one queue and
    execute them in process, each with the code location and the model loaded once."""

    def __init__(
        self,
        size: int,
        op_config: dict | None,
        deployment,
        parallel: int,
        target: Callable = None,
    ):
        context = multiprocessing.get_context("spawn")
        self.tasks, self.events = context.Queue(), context.Queue()
        self.processes = []
        for index in range(size):
            with _environ(worker_environment(index, size, deployment, os.environ)):
                process = context.Process(
                    target=target or _worker_main,
                    args=(index, self.tasks, self.events, op_config or {}, {PARALLEL_TAG: str(parallel)}),
                    name=f"persona-worker-{index}",
                )
                process.start()
            self.processes.append(process)

    def run(
        self, runs: Sequence[PlannedRun], log=print, progress: tuple[int, int] | None = None
    ) -> list[RunOutcome]:
        """Every run of ``runs`` through the workers; their outcomes in the order of ``runs``."""
        first, total = progress or (0, len(runs))
        for number, planned in enumerate(runs):
            self.tasks.put((number, _task(planned)))
        outcomes: dict[int, RunOutcome] = {}
        running: dict[int, int] = {}  # worker -> the run it took
        while len(outcomes) < len(runs):
            try:
                kind, worker, payload = self.events.get(timeout=1.0)
            except queue.Empty:
                self._check_alive(runs, running, outcomes)
                continue
            if kind == "setup_failed":  # the same for every worker: nothing can run
                error = f"worker {worker} could not load the code location: {payload}"
                for number in range(len(runs)):
                    outcomes.setdefault(number, RunOutcome(runs[number], "", 0.0, False, error))
                break
            if kind == "started":
                running[worker] = payload
                planned = runs[payload]
                log(f"-> worker {worker}: {describe(planned)}", flush=True)
                live_run(first + len(outcomes), total, f"{len(running)} running in workers")
            elif kind == "done":
                number, run_id, seconds, success, error, usage = payload
                running.pop(worker, None)
                outcomes[number] = RunOutcome(
                    runs[number], run_id, seconds, success, error, worker=worker, **usage
                )
                state = "done" if success else "FAILED"
                loads = usage["model_loads"]
                log(f"<- worker {worker}: {state} in {seconds:.1f} s, model loads {loads}", flush=True)
        return [outcomes[n] for n in range(len(runs))]

    def _check_alive(self, runs, running: dict[int, int], outcomes: dict[int, RunOutcome]) -> None:
        for worker, process in enumerate(self.processes):
            if process.is_alive() or process.exitcode is None:
                continue
            if worker in running:
                number = running.pop(worker)
                error = f"worker process {process.pid} ended (exit code {process.exitcode}) during the run"
                outcomes[number] = RunOutcome(runs[number], "", 0.0, False, error, worker=worker)
        if all(not p.is_alive() for p in self.processes) and len(outcomes) < len(runs):
            codes = ", ".join(str(p.exitcode) for p in self.processes)
            for number in range(len(runs)):
                outcomes.setdefault(
                    number,
                    RunOutcome(
                        runs[number], "", 0.0, False, f"every worker process ended (exit codes {codes})"
                    ),
                )

    def close(self) -> None:
        """Stop the workers once they end their runs; runs still waiting in the queue are dropped."""
        while True:
            try:
                self.tasks.get_nowait()
            except queue.Empty:
                break
        for _ in self.processes:
            self.tasks.put(None)
        for process in self.processes:
            process.join(timeout=60)
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)


@contextmanager
def worker_pool(size: int, op_config: dict | None, deployment, parallel: int) -> Iterator[WorkerPool | None]:
    pool = WorkerPool(size, op_config, deployment, parallel) if size > 0 else None
    try:
        yield pool
    finally:
        if pool is not None:
            pool.close()


def _task(planned: PlannedRun) -> dict:
    return {
        "asset_keys": [k.to_user_string() for k in planned.asset_keys],
        "key_range": planned.key_range,
        "partition_count": planned.partition_count,
        "cost": planned.cost,
    }


def _worker_main(index: int, tasks, events, op_config: dict, tags: dict) -> None:
    """A worker's life: load the code location and open the instance, then execute runs until told to stop.
    The model is loaded by the first run that needs it and kept for the next."""
    import warnings

    from dagster import BetaWarning

    warnings.filterwarnings("ignore", category=BetaWarning)
    try:
        from persona_platform.persona_assets.definitions import defs
        from persona_platform.resources.llm.resource import process_usage
        from persona_platform.resources.settings import load_settings

        instance = DagsterInstance.from_config(str(load_settings().dagster_home))
        graph = defs.resolve_asset_graph()
    except BaseException as exc:  # reported, not raised: the parent waits on the events queue
        events.put(("setup_failed", index, f"{type(exc).__name__}: {exc}"))
        return
    while (item := tasks.get()) is not None:
        number, task = item
        keys = [AssetKey.from_user_string(k) for k in task["asset_keys"]]
        key_range = tuple(task["key_range"]) if task["key_range"] else None
        planned = PlannedRun(
            keys, graph.get(keys[0]).partitions_def, key_range, task["partition_count"], True, 0, task["cost"]
        )
        events.put(("started", index, number))
        before = process_usage()
        try:
            (outcome,) = execute_plan(
                defs, [planned], instance, op_config, log=_silent, tags={**tags, WORKER_TAG: str(index)}
            )
            result = (number, outcome.run_id, outcome.seconds, outcome.success, outcome.error)
        except Exception as exc:  # outside any run (a job that does not resolve): the parent reports it
            result = (number, "", 0.0, False, f"{type(exc).__name__}: {exc}")
        after = process_usage()
        usage = {name: getattr(after, name) - getattr(before, name) for name in USAGE}
        events.put(("done", index, (*result, usage)))


# What a worker reports of its engines' usage per run (the command sums them with its own).
USAGE = ("model_loads", "forward_passes", "tokens_computed")


def _silent(*args, **kwargs) -> None:
    pass
