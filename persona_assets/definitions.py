"""The code location: every asset, with resources chosen from the settings."""

import importlib
import importlib.util
import pkgutil

from dagster import AssetsDefinition, Definitions, EnvVar
from dagster_k8s import k8s_job_executor

import persona_platform.persona_assets as persona_assets
from persona_platform.persona_assets.automation import (
    country_schedules,
    domain_jobs,
    input_sensors,
    partition_jobs,
)
from persona_platform.persona_assets.deployment import K8S_EXECUTOR_CONFIG
from persona_platform.persona_assets.experiments import experiments
from persona_platform.persona_assets.instance import pool_limits_sensor
from persona_platform.resources.artifacts import ArtifactStore
from persona_platform.resources.llm.resource import role_resources
from persona_platform.resources.settings import load_settings
from persona_platform.resources.sources import BoardSource, GoqaSource
from persona_platform.resources.warehouse import WarehouseIOManager, WarehouseResource


def domain_definitions() -> list[Definitions]:
    """Every domain's own definitions: each subpackage of persona_assets with a definitions
    module is a domain."""
    return [
        importlib.import_module(f"persona_platform.persona_assets.{m.name}.definitions").defs
        for m in sorted(pkgutil.iter_modules(persona_assets.__path__), key=lambda m: m.name)
        if m.ispkg and importlib.util.find_spec(f"persona_platform.persona_assets.{m.name}.definitions")
    ]


DOMAINS = domain_definitions()
for experiment in experiments():
    experiment.check_profile()  # once every domain's factories have taken their steps' settings
settings = load_settings()
ALL_ASSETS = [
    a for domain in DOMAINS for a in domain.assets if isinstance(a, AssetsDefinition)
]  # the specs of review tables are not
PARTITION_JOBS = partition_jobs(ALL_ASSETS)
# On Kubernetes every step is its own pod (GPU steps in GPU pods, from their op tags);
# locally Dagster's default.
EXECUTOR = k8s_job_executor.configured(K8S_EXECUTOR_CONFIG) if settings.deployment.on_k8s else None
# On a cluster the gpu pool's limit follows PERSONA_GPUS (locally `persona run` and `persona ui` set it).
CLUSTER_SENSORS = [pool_limits_sensor(settings.deployment)] if settings.deployment.on_k8s else []

# A DuckLake location may hold a password. Resource config given as a value is part of the
# job snapshot the instance stores and the UI shows; given as EnvVar, only the variable's
# name is stored, and each run's process reads the value from its own environment.
WAREHOUSE = EnvVar("PERSONA_WAREHOUSE") if settings.warehouse_is_lake else str(settings.warehouse_path)

defs = Definitions.merge(
    *DOMAINS,
    Definitions(
        jobs=domain_jobs(ALL_ASSETS) + PARTITION_JOBS,
        executor=EXECUTOR,
        schedules=country_schedules(settings.schedule_cron),
        sensors=input_sensors(str(settings.goqa_source), str(settings.board_dir), PARTITION_JOBS)
        + CLUSTER_SENSORS,
        resources={
            "io_manager": WarehouseIOManager(database=WAREHOUSE, data_path=settings.warehouse_data_path),
            "warehouse": WarehouseResource(database=WAREHOUSE, data_path=settings.warehouse_data_path),
            # llm (the generator), chat_llm (the zero-shot chat baseline's model), judge_llm: each role's
            # model from the settings; roles on the same model share one loaded engine.
            **role_resources(settings),
            "goqa_source": GoqaSource(path=str(settings.goqa_source)),
            "board": BoardSource(path=str(settings.board_dir)),
            "artifacts": ArtifactStore(root=str(settings.artifacts_dir)),
        },
    ),
)
