"""The code location: every asset, with resources chosen from the settings."""

from dagster import Definitions, EnvVar, load_asset_checks_from_modules, load_assets_from_modules
from dagster_k8s import k8s_job_executor

from persona_assets.agents import assets as agent_assets
from persona_assets import checks
from persona_assets.alignment import assets as alignment_assets
from persona_assets.automation import country_schedules, domain_jobs, input_sensors, partition_jobs
from persona_assets.deployment import K8S_EXECUTOR_CONFIG
from persona_assets.elicitation import baselines, evaluations, search
from persona_assets.judging import assets as judging_assets
from persona_assets.opinions import assets as opinion_assets
from persona_assets.reports import elicitation as elicitation_reports
from persona_assets.responses import assets as response_assets
from resources.settings import load_settings
from persona_assets.traits import assets as trait_assets
from persona_assets.votes import assets as vote_assets
from resources.artifacts import ArtifactStore
from resources.llm.resource import role_resources
from resources.sources import BoardSource, GoqaSource
from resources.warehouse import WarehouseIOManager, WarehouseResource

settings = load_settings()
ALL_ASSETS = load_assets_from_modules(
    [opinion_assets, baselines, search, evaluations, elicitation_reports, agent_assets, trait_assets, response_assets,
     judging_assets, vote_assets, alignment_assets]
)
ALL_CHECKS = load_asset_checks_from_modules([vote_assets, judging_assets, checks])

PARTITION_JOBS = partition_jobs(ALL_ASSETS)
# On Kubernetes every step is its own pod (GPU steps in GPU pods, from their op tags); locally Dagster's default.
EXECUTOR = k8s_job_executor.configured(K8S_EXECUTOR_CONFIG) if settings.deployment.on_k8s else None

# A DuckLake location may hold a password. Resource config given as a value is part of the
# job snapshot the instance stores and the UI shows; given as EnvVar, only the variable's
# name is stored, and each run's process reads the value from its own environment.
WAREHOUSE = EnvVar("PERSONA_WAREHOUSE") if settings.warehouse_is_lake else str(settings.warehouse_path)

defs = Definitions(
    assets=[*ALL_ASSETS, vote_assets.question_reviews, trait_assets.question_reviews],
    asset_checks=ALL_CHECKS,
    jobs=domain_jobs(ALL_ASSETS) + PARTITION_JOBS,
    executor=EXECUTOR,
    schedules=country_schedules(settings.schedule_cron),
    sensors=input_sensors(str(settings.goqa_source), str(settings.board_dir), PARTITION_JOBS),
    resources={
        "io_manager": WarehouseIOManager(database=WAREHOUSE, data_path=settings.warehouse_data_path),
        "warehouse": WarehouseResource(database=WAREHOUSE, data_path=settings.warehouse_data_path),
        # llm (the generator), chat_llm (the zero-shot chat baseline's model), judge_llm: each role's model from
        # the settings; roles on the same model share one loaded engine.
        **role_resources(settings),
        "goqa_source": GoqaSource(path=str(settings.goqa_source)),
        "board": BoardSource(path=str(settings.board_dir)),
        "artifacts": ArtifactStore(root=str(settings.artifacts_dir)),
    },
)
