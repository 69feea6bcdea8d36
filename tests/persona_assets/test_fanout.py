"""Backfills fanned out: chunks of partitions balanced by cost, model runs in worker processes that each load
the model once, the gpu pool's limit from the settings (the cluster's side is in test_k8s.py)."""

import os
import time

import duckdb
import pytest
from dagster import AssetKey, AssetSelection, DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from persona_platform.persona_assets.common import GPU_POOL, WAREHOUSE_POOL, partitions_per_model_run
from persona_platform.persona_assets.fanout import WorkerPool, worker_environment
from persona_platform.persona_assets.instance import (
    apply_pool_limits,
    instance_yaml,
    pool_limits,
    pool_limits_sensor,
)
from persona_platform.persona_assets.runner import (
    PARALLEL_TAG,
    RANGE_END,
    RANGE_START,
    WORKER_TAG,
    PlannedRun,
    balanced_chunks,
    chunk_count,
    plan_runs,
    split_range,
)
from persona_platform.resources.settings import Deployment, SettingsError, load_deployment
from tests.conftest import persona

ZERO_SHOT = "primary/elicitation/zero_shot_base_predictions"
ZERO_SHOT_TABLE = "primary__elicitation.zero_shot_base_predictions"
COUNTRIES = ["Aldoria", "Borvania", "Caldera", "Dunmere"]


# --- settings and policies ------------------------------------------------------------------------------


def test_gpus_and_partitions_per_run_are_settings():
    assert (load_deployment({}).gpus, load_deployment({}).partitions_per_run) == (1, None)
    deployment = load_deployment({"PERSONA_GPUS": "16", "PERSONA_TENSOR_PARALLEL_SIZE": "2"})
    assert (deployment.gpus, deployment.gpu_slots) == (16, 8)
    assert load_deployment({"PERSONA_PARTITIONS_PER_RUN": " 10 "}).partitions_per_run == 10
    # Unset, the GPUs of one model step: one step at a time.
    assert load_deployment({"PERSONA_TENSOR_PARALLEL_SIZE": "4"}).gpu_slots == 1
    for variable, value in [
        ("PERSONA_GPUS", "0"),
        ("PERSONA_GPUS", "two"),
        ("PERSONA_PARTITIONS_PER_RUN", "-1"),
    ]:
        with pytest.raises(SettingsError, match=variable):
            load_deployment({variable: value})
    with pytest.raises(SettingsError, match="PERSONA_GPUS=2 is fewer than PERSONA_TENSOR_PARALLEL_SIZE=4"):
        load_deployment({"PERSONA_GPUS": "2", "PERSONA_TENSOR_PARALLEL_SIZE": "4"})


def test_partitions_per_model_run_one_run_on_one_gpu_one_wave_on_many():
    assert partitions_per_model_run(130, Deployment()) is None  # single run: one model load
    assert partitions_per_model_run(130, Deployment(gpus=16)) == 9  # 15 runs over 16 slots
    assert partitions_per_model_run(130, Deployment(gpus=16, tensor_parallel_size=4)) == 33
    assert partitions_per_model_run(130, Deployment(partitions_per_run=10)) == 10
    assert partitions_per_model_run(1, Deployment(gpus=16)) is None


def test_locally_every_backfill_is_one_run_model_steps_included():
    from persona_platform.persona_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    partitioned = [graph.get(k) for k in graph.get_all_asset_keys()]
    partitioned = [n for n in partitioned if n.is_materializable and n.partitions_def is not None]
    # One GPU slot and no PERSONA_PARTITIONS_PER_RUN: a backfill of any range is one run, one model load.
    # (With 16 GPUs the model steps, and only they, take chunks: test_k8s.py.)
    assert all(n.backfill_policy.max_partitions_per_run is None for n in partitioned)
    assert sum(GPU_POOL in n.pools for n in partitioned) >= 8


# --- chunks balanced by cost ----------------------------------------------------------------------------


def _heaviest(weights, chunks):
    return max(sum(weights[a : b + 1]) for a, b in chunks)


@pytest.mark.parametrize(
    "weights, count, max_size, heaviest",
    [
        ([1] * 130, 16, None, 9),
        ([1] * 130, 13, 10, 10),
        ([5, 1, 1, 1, 1, 1], 2, None, 5),  # not 3 + 3 partitions: the heavy country alone
        ([41, 42, 37], 2, None, 79),
        ([1, 1, 1, 1], 2, 1, 1),  # the size cap wins over the count: 4 chunks
        ([3], 4, None, 3),
    ],
)
def test_chunks_are_contiguous_cover_everything_and_balance_the_cost(weights, count, max_size, heaviest):
    chunks = balanced_chunks(weights, count, max_size)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(weights) - 1
    assert all(b + 1 == c for (_, b), (c, _) in zip(chunks, chunks[1:], strict=False))
    assert all(b - a + 1 <= (max_size or len(weights)) for a, b in chunks)
    assert len(chunks) == min(max(count, -(-len(weights) // (max_size or len(weights)))), len(weights))
    assert _heaviest(weights, chunks) == heaviest


def test_chunk_count_one_per_worker_more_under_a_cap():
    assert chunk_count(4, 2, None) == 2
    assert chunk_count(4, 2, 2) == 2
    assert chunk_count(130, 16, 10) == 16
    assert chunk_count(130, 2, 10) == 13
    assert chunk_count(3, 8, None) == 3


def test_split_range_of_the_sample_and_of_agent_x_country():
    from persona_platform.partitions import agent_country_partitions, countries_partitions

    assert split_range(countries_partitions, ("Aldoria", "Dunmere"), 2, None) == [
        (("Aldoria", "Borvania"), 2, 64.0),
        (("Caldera", "Dunmere"), 2, 64.0),
    ]
    agents = agent_country_partitions.partitions_defs[0].partitions_def.get_partition_keys()
    rectangle = (f"{agents[0]}|Aldoria", f"{agents[-1]}|Dunmere")
    chunks = split_range(agent_country_partitions, rectangle, 2, None)
    # Cut along the longer side (4 countries, 3 agents): every chunk all agents x some countries.
    assert [c[0] for c in chunks] == [
        (f"{agents[0]}|Aldoria", f"{agents[-1]}|Borvania"),
        (f"{agents[0]}|Caldera", f"{agents[-1]}|Dunmere"),
    ]
    assert sum(c[1] for c in chunks) == 12


def test_fanned_out_plan_keeps_model_runs_apart_and_chunks_them():
    from persona_platform.persona_assets.definitions import defs

    selection = AssetSelection.from_string(f'+key:"{ZERO_SHOT}"')
    one = plan_runs(defs, selection)
    assert [r.key_range for r in one if AssetKey.from_user_string(ZERO_SHOT) in r.asset_keys] == [
        ("Aldoria", "Dunmere")
    ]
    fanned = plan_runs(defs, selection, parallel=2, per_run=2)
    model = [r for r in fanned if r.model]
    assert [(r.key_range, r.partition_count) for r in model] == [
        (("Aldoria", "Borvania"), 2),
        (("Caldera", "Dunmere"), 2),
    ]
    assert {r.stage for r in model} == {model[0].stage}  # one stage: they may run at once
    assert all(r.asset_keys == [AssetKey.from_user_string(ZERO_SHOT)] for r in model)
    # Model-free runs keep whole ranges, and every one ends before the model stage starts.
    assert all(
        r.stage < model[0].stage and r.key_range in (None, ("Aldoria", "Dunmere"))
        for r in fanned
        if not r.model
    )


# --- the worker pool's queue ----------------------------------------------------------------------------


def _stub_worker(index, tasks, events, op_config, tags):
    """A worker that takes half a second per run and loads its 'model' for its first run only."""
    loaded = False
    while (item := tasks.get()) is not None:
        number, task = item
        events.put(("started", index, number))
        time.sleep(0.5)
        usage = {"model_loads": 0 if loaded else 1, "forward_passes": 3, "tokens_computed": 30}
        events.put(("done", index, (number, f"run-{number}", 0.5, True, None, usage)))
        loaded = True


def test_runs_beyond_the_workers_wait_in_the_queue():
    lines = []
    pool = WorkerPool(2, {}, Deployment(), 2, target=_stub_worker)
    try:
        runs = [PlannedRun([AssetKey("x")], None, (c, c), 1, True) for c in "abc"]
        outcomes = pool.run(runs, log=lambda line, **_: lines.append(line))
    finally:
        pool.close()
    assert [o.run_id for o in outcomes] == ["run-0", "run-1", "run-2"] and all(o.success for o in outcomes)
    running, most = 0, 0
    for line in lines:
        running += 1 if line.startswith("->") else -1
        most = max(most, running)
    assert most == 2  # two at once, the third only after one ended
    assert lines[2].startswith("<-")
    assert sum(o.model_loads for o in outcomes) == 2  # one load per worker, the third run reused one
    assert sum(o.forward_passes for o in outcomes) == 9
    assert not any(p.is_alive() for p in pool.processes)


def _dying_worker(index, tasks, events, op_config, tags):
    """A worker whose first run fails and whose process then dies in the middle of its second."""
    number, _ = tasks.get()
    events.put(("started", index, number))
    usage = {"model_loads": 1, "forward_passes": 0, "tokens_computed": 0}
    events.put(("done", index, (number, f"run-{number}", 0.1, False, "ModelLoadError: no weights", usage)))
    number, _ = tasks.get()
    events.put(("started", index, number))
    events.close()
    events.join_thread()  # what it reported reaches the parent before the process dies
    os._exit(3)


def test_a_failed_run_and_a_dead_worker_are_reported_not_waited_for():
    lines = []
    pool = WorkerPool(1, {}, Deployment(), 1, target=_dying_worker)
    try:
        runs = [PlannedRun([AssetKey("x")], None, (c, c), 1, True) for c in "ab"]
        failed, lost = pool.run(runs, log=lambda line, **_: lines.append(line))
    finally:
        pool.close()
    assert (failed.success, failed.run_id, failed.error) == (False, "run-0", "ModelLoadError: no weights")
    assert "<- worker 0: FAILED in 0.1 s, model loads 1" in lines
    assert not lost.success and "ended (exit code 3) during the run" in lost.error


def _broken_worker(index, tasks, events, op_config, tags):
    events.put(("setup_failed", index, "SettingsError: PERSONA_MODEL: no such model"))


def test_a_worker_that_cannot_load_the_code_location_fails_every_run_with_its_reason():
    pool = WorkerPool(2, {}, Deployment(), 2, target=_broken_worker)
    try:
        runs = [PlannedRun([AssetKey("x")], None, (c, c), 1, True) for c in "abc"]
        outcomes = pool.run(runs, log=lambda *a, **k: None)
    finally:
        pool.close()
    assert [o.success for o in outcomes] == [False] * 3
    assert outcomes[0].error.endswith(
        "could not load the code location: SettingsError: PERSONA_MODEL: no such model"
    )


def test_each_worker_gets_its_own_gpus_and_a_share_of_the_cores():
    cpu = worker_environment(0, 2, Deployment(), {})
    assert cpu == {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // 2))}
    assert "OMP_NUM_THREADS" not in worker_environment(0, 2, Deployment(), {"OMP_NUM_THREADS": "3"})
    four = Deployment(gpus=4, tensor_parallel_size=2)
    assert [worker_environment(i, 2, four, {})["CUDA_VISIBLE_DEVICES"] for i in range(2)] == ["0,1", "2,3"]
    visible = {"CUDA_VISIBLE_DEVICES": "4,5"}
    assert worker_environment(1, 2, Deployment(gpus=2), visible)["CUDA_VISIBLE_DEVICES"] == "5"


# --- the pools ------------------------------------------------------------------------------------------


def test_pool_limits_follow_the_settings_and_the_sensor_keeps_them(tmp_path):
    from dagster import build_sensor_context

    assert pool_limits(Deployment()) == {GPU_POOL: 1, WAREHOUSE_POOL: 1}
    assert pool_limits(Deployment(), gpu_limit=3)[GPU_POOL] == 3
    assert "max_concurrent_runs: 4\n" in instance_yaml(1)
    assert "max_concurrent_runs: 19\n" in instance_yaml(16)
    (tmp_path / "dagster.yaml").write_text(instance_yaml(1))
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert apply_pool_limits(instance, pool_limits(Deployment())) == {GPU_POOL: 1, WAREHOUSE_POOL: 1}
        sensor = pool_limits_sensor(Deployment(gpus=8))
        result = sensor.evaluate_tick(build_sensor_context(instance=instance))
        assert "gpu 8" in result.skip_message
        assert instance.event_log_storage.get_concurrency_info(GPU_POOL).slot_count == 8
        assert instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL).slot_count == 1
        assert apply_pool_limits(instance, pool_limits(Deployment(gpus=8))) == {}  # nothing left to change


# --- `persona run --parallel 2` on the sample ----------------------------------------------------------


@pytest.fixture(scope="module")
def fanned_out(tmp_path_factory):
    home = tmp_path_factory.mktemp("fanout")
    started = time.monotonic()
    result = persona(
        home,
        "run",
        "--select",
        f'+key:"{ZERO_SHOT}"',
        "--parallel",
        "2",
        extra_env={"PERSONA_PARTITIONS_PER_RUN": "2"},
    )
    return home, result, time.monotonic() - started


@pytest.mark.slow
def test_a_backfill_in_chunks_of_two_runs_as_two_runs_at_once_each_loading_the_model_once(fanned_out):
    home, result, _ = fanned_out
    assert result.returncode == 0, result.stdout + result.stderr
    assert "model loads 2," in result.stdout
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        records = instance.get_run_records(RunsFilter(tags={PARALLEL_TAG: "2"}))
        assert len(records) == 2 and {r.dagster_run.status for r in records} == {DagsterRunStatus.SUCCESS}
        runs = {r.dagster_run.run_id: r for r in records}
        assert sorted((r.dagster_run.tags[RANGE_START], r.dagster_run.tags[RANGE_END]) for r in records) == [
            ("Aldoria", "Borvania"),
            ("Caldera", "Dunmere"),
        ]
        # Two worker processes, and the two runs ran at once: the gpu pool took 2 while the command ran.
        assert {r.dagster_run.tags[WORKER_TAG] for r in records} == {"0", "1"}
        assert len({r.dagster_run.tags["persona/pid"] for r in records}) == 2
        first, second = sorted(records, key=lambda r: r.start_time)
        assert second.start_time < first.end_time
        # Every model-free run had ended before the model runs started; none ran beside them.
        others = instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))
        model_start = min(r.start_time for r in records)
        assert all(r.end_time <= model_start for r in others if r.dagster_run.run_id not in runs)
        # One model load per run, in its step; each partition materialized once.
        written = []
        for run_id in runs:
            for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
                materialization = entry.dagster_event.event_specific_data.materialization
                assert materialization.metadata["engine/model_loaded"].value == "in this step"
                assert materialization.metadata["engine/model_loads"].value == 1
                written.append(materialization.partition)
        assert sorted(written) == COUNTRIES
        # Back to the settings' limit once the command ended.
        assert instance.event_log_storage.get_concurrency_info(GPU_POOL).slot_count == 1
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute(
            f"select country, count(distinct run_id), count(*) from {ZERO_SHOT_TABLE} group by all"
        ).fetchall()
        by_country = {country: (run_ids, count) for country, run_ids, count in rows}
        assert sorted(by_country) == COUNTRIES
        assert all(run_ids == 1 and count > 0 for run_ids, count in by_country.values())
        run_ids = {r[0] for r in con.execute(f"select distinct run_id from {ZERO_SHOT_TABLE}").fetchall()}
    assert run_ids == set(runs)
