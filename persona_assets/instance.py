"""The Dagster instance behind `persona run` and `persona ui`, and the run configs `persona run` applies."""

from __future__ import annotations

import sys
from pathlib import Path

from persona_platform.persona_assets.common import GPU_POOL, WAREHOUSE_POOL
from persona_platform.resources.settings import DATA_DIR, Deployment, Settings, SettingsError

EMBEDDED_PROFILE = DATA_DIR / "embedded_profile.yaml"
# Room in the run queue beside the model runs: model-free runs (one warehouse writer at a time, plus runs
# waiting on their steps' pools on a cluster).
EXTRA_RUNS = 3
INSTANCE_YAML = """\
# Written by `persona`; the Dagster instance behind `persona run` and `persona ui`.
telemetry:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: {max_runs}
  # Steps declare pool "gpu" (they load a model) or "warehouse" (they only write tables). With one
  # DuckDB file, pool "warehouse" takes one run at a time; pool "gpu" takes PERSONA_GPUS (default 1),
  # or K while `persona run --parallel K` runs (its limit is kept in the instance, not here). The limit
  # is enforced when the queue starts a run (granularity: run), so a run killed mid-step holds no slot;
  # `persona run` executes its runs in its own process, or in its K workers with --parallel K.
  pools:
    granularity: run
    default_limit: 1
"""


def pool_limits(deployment: Deployment, gpu_limit: int | None = None) -> dict[str, int]:
    """Each pool's limit: pool "gpu" the model steps that may run at once (PERSONA_GPUS over the GPUs one
    step needs, or ``gpu_limit``), pool "warehouse" one writer."""
    return {GPU_POOL: gpu_limit or deployment.gpu_slots, WAREHOUSE_POOL: 1}


# Runs the queue starts at once at least: on this machine, and on a cluster (Dagster's own default there).
LOCAL_RUNS, CLUSTER_RUNS = 4, 10


def max_concurrent_runs(gpu_limit: int, least: int = LOCAL_RUNS) -> int:
    """Runs the queue may start at once: every model run the gpu pool admits, and room beside them."""
    return max(least, gpu_limit + EXTRA_RUNS)


def instance_yaml(gpu_limit: int) -> str:
    return INSTANCE_YAML.format(max_runs=max_concurrent_runs(gpu_limit))


def cluster_concurrency(deployment: Deployment) -> dict:
    """The ``concurrency`` section of the cluster's instance (k8s/dagster.yaml; k8s/values.yaml says the same
    in the chart's camelCase): pools per step, one slot for a pool without a limit of its own (the
    warehouse), and a run queue wide enough for a model run on every GPU slot. The gpu pool's own limit is
    not instance config in Dagster (only a default is): ``pool_limits_sensor`` keeps it in the instance."""
    return {
        "runs": {"max_concurrent_runs": max_concurrent_runs(deployment.gpu_slots, CLUSTER_RUNS)},
        "pools": {"granularity": "op", "default_limit": 1},
    }


def apply_pool_limits(instance, limits: dict[str, int]) -> dict[str, int]:
    """Give each pool its limit in the instance; returns those that changed (pool -> new limit)."""
    storage = instance.event_log_storage
    current = {p.name: p.limit for p in storage.get_pool_limits() if not p.from_default}
    changed = {}
    for pool, limit in limits.items():
        if current.get(pool) != limit:
            storage.set_concurrency_slots(pool, limit)
            changed[pool] = limit
    return changed


def pool_limits_sensor(deployment: Deployment):
    """On a cluster: keeps the pools' limits in the instance at what the settings say (PERSONA_GPUS), so a
    Helm value, not a command run by hand, sizes GPU concurrency. A limit changed in the UI is set back."""
    from dagster import DefaultSensorStatus, SkipReason, sensor

    limits = pool_limits(deployment)
    described = ", ".join(f"{pool} {limit}" for pool, limit in limits.items())

    @sensor(
        name="pool_limits_sensor",
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Keeps the pools' limits at the settings' ({described}; PERSONA_GPUS).",
    )
    def keep_pool_limits(context):
        changed = apply_pool_limits(context.instance, limits)
        if changed:
            context.log.info(f"pool limits set: {changed}")
        return SkipReason(f"pool limits {described}" + (" (set now)" if changed else ""))

    return keep_pool_limits


def prepare_instance(settings: Settings, gpu_limit: int | None = None):
    """The instance in the settings' Dagster home, its config written, its pools' limits set (pool "gpu":
    ``gpu_limit`` when given, else the settings'), the runs of killed processes marked failed."""
    from dagster import DagsterInstance

    from persona_platform.persona_assets.runner import fail_orphaned_runs

    limits = pool_limits(settings.deployment, gpu_limit)
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    config = settings.dagster_home / "dagster.yaml"
    text = instance_yaml(limits[GPU_POOL])
    if not config.exists() or config.read_text() != text:
        config.write_text(text)
    instance = DagsterInstance.from_config(str(settings.dagster_home))
    # The queue learns a pool's limit only after first dequeuing a run that uses it, so the first runs
    # launched together would all start: the pools get their limits before any run.
    apply_pool_limits(instance, limits)
    for run_id in fail_orphaned_runs(instance):
        print(
            f"persona: run {run_id} was left unfinished by a process that is gone; marked failed",
            file=sys.stderr,
        )
    return instance


def load_op_config(path: Path | None) -> dict:
    if path is None:
        return {}
    import yaml

    try:
        document = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"{path}: cannot read the run config: {exc}") from exc
    ops = document.get("ops", {}) if isinstance(document, dict) else None
    if not isinstance(ops, dict):
        raise SettingsError(f"{path}, field 'ops': must map op names to their config")
    return ops


def main() -> None:
    """Print the concurrency sections for a cluster of PERSONA_GPUS GPUs (k8s/README.md, sizing)."""
    import yaml

    from persona_platform.resources.settings import load_deployment

    deployment = load_deployment()
    section = cluster_concurrency(deployment)
    chart = {
        "enabled": True,
        "pools": {"granularity": "op", "defaultLimit": section["pools"]["default_limit"]},
        "runs": {"maxConcurrentRuns": section["runs"]["max_concurrent_runs"]},
    }
    limits = ", ".join(f"{p} {n}" for p, n in pool_limits(deployment).items())
    print(f"# PERSONA_GPUS={deployment.gpus}, PERSONA_TENSOR_PARALLEL_SIZE={deployment.tensor_parallel_size}")
    print(f"# pool limits kept by pool_limits_sensor: {limits}")
    print("# k8s/dagster.yaml:")
    print(yaml.safe_dump({"concurrency": section}, sort_keys=False), end="")
    print("# k8s/values.yaml:")
    print(yaml.safe_dump({"concurrency": chart}, sort_keys=False), end="")


if __name__ == "__main__":
    main()
