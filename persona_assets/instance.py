"""The Dagster instance behind `persona run` and `persona ui`, and the run configs `persona run` applies."""

from __future__ import annotations

import sys
from pathlib import Path

from persona_platform.persona_assets.common import GPU_POOL, WAREHOUSE_POOL
from persona_platform.resources.settings import DATA_DIR, Settings, SettingsError

EMBEDDED_PROFILE = DATA_DIR / "embedded_profile.yaml"
INSTANCE_YAML = """\
# Written by `persona`; the Dagster instance behind `persona run` and `persona ui`.
telemetry:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: 4
  # Steps declare pool "gpu" (they load a model) or "warehouse" (they only write tables). With one
  # machine and one DuckDB file, each pool takes one run at a time. The limit is enforced when the
  # queue starts a run (granularity: run), so a run killed mid-step holds no slot; `persona run`
  # executes its runs one after another in its own process.
  pools:
    granularity: run
    default_limit: 1
"""


def prepare_instance(settings: Settings):
    from dagster import DagsterInstance

    from persona_platform.persona_assets.runner import fail_orphaned_runs

    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    config = settings.dagster_home / "dagster.yaml"
    if not config.exists() or config.read_text() != INSTANCE_YAML:
        config.write_text(INSTANCE_YAML)
    instance = DagsterInstance.from_config(str(settings.dagster_home))
    # The queue learns a pool's default limit only after first dequeuing a run that uses it, so the
    # first runs launched together would all start: the pools get their limits before any run.
    known = instance.event_log_storage.get_concurrency_keys()
    for pool in (GPU_POOL, WAREHOUSE_POOL):
        if pool not in known:
            instance.event_log_storage.initialize_concurrency_limit_to_default(pool)
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
