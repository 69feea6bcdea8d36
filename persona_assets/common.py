"""Conventions every asset shares: owners, kinds, partition columns, run metadata."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from types import ModuleType

from dagster import (
    AssetCheckSeverity,
    AssetKey,
    BackfillPolicy,
    BetaWarning,
    Definitions,
    MetadataValue,
    PartitionsDefinition,
    TableColumn,
    TableRecord,
    TableSchema,
    build_column_schema_change_checks,
    load_asset_checks_from_modules,
    load_assets_from_modules,
)

from persona_platform.persona_assets.columns import Columns
from persona_platform.persona_assets.deployment import DEFAULT_PROFILE, GpuProfile, gpu_op_tags
from persona_platform.persona_assets.experiments import Experiment, experiments
from persona_platform.persona_assets.provenance import written_columns
from persona_platform.resources.settings import load_deployment

# Backfill policies are marked beta in dagster 1.13; they are what makes one run load a model once.
warnings.filterwarnings("ignore", category=BetaWarning)
# With PERSONA_PARTITIONS_PER_RUN (or several GPU slots) a job holds model steps (multi_run) beside model-free
# ones (single_run): expected, and said in docs/operations.md. Dagster warns at every load of the code
# location that a *job* backfill then uses the smaller chunks for all its assets (asset backfills keep each
# asset's own policy).
warnings.filterwarnings("ignore", message=r"Asset job \S+ materializes assets with varying BackfillPolicies")

OWNERS = ["team:persona-research"]
TABLE_KINDS = {"polars", "duckdb"}
MODEL_KINDS = {"pytorch", "duckdb"}
# Concurrency pools (limits in the instance's dagster.yaml): steps that load a model, and the rest,
# which write the single-writer DuckDB file.
GPU_POOL, WAREHOUSE_POOL = "gpu", "warehouse"
# The unpartitioned tables made from the board's files, which every agent's partitions read: the board sensor
# and job run them with the agents.
BOARD_INPUT = ("persona/input", "board")
# A summary across partitions, with plots: in the reports group whatever domain computes it.
REPORT_STEP = dict(
    group_name="reports", owners=OWNERS, kinds=TABLE_KINDS | {"matplotlib"}, pool=WAREHOUSE_POOL
)
COUNTRY_PARTITION = {"partition_expr": "country"}
AGENT_PARTITION = {"partition_expr": "agent"}
AGENT_COUNTRY_PARTITION = {"partition_expr": {"agent": "agent", "country": "country"}}
# A backfill of any range of partitions is one run: one process, one model load. Model-free steps always.
ONE_RUN_PER_BACKFILL = BackfillPolicy.single_run()
DEPLOYMENT = load_deployment()


def partitions_per_model_run(partitions: int, deployment=None) -> int | None:
    """The most partitions one run of a model step takes in a Dagster backfill of ``partitions`` partitions:
    PERSONA_PARTITIONS_PER_RUN when set; else one wave of runs over the gpu pool's slots (ceil(partitions /
    slots)); None (one run for the whole backfill) when the pool has a single slot."""
    deployment = deployment or DEPLOYMENT
    if deployment.partitions_per_run:
        return deployment.partitions_per_run
    if deployment.gpu_slots <= 1 or partitions <= 1:
        return None
    return math.ceil(partitions / deployment.gpu_slots)


def model_backfill(partitions_def: PartitionsDefinition) -> BackfillPolicy:
    """The backfill policy of a step that loads a model: runs of at most ``partitions_per_model_run``
    contiguous partitions (BackfillPolicy.multi_run), each loading the model once, as many at once as the
    gpu pool allows; a single run when the settings ask for no fan-out (the default on one GPU)."""
    per_run = partitions_per_model_run(len(partitions_def.get_partition_keys()))
    return ONE_RUN_PER_BACKFILL if per_run is None else BackfillPolicy.multi_run(per_run)


def gpu_step(profile: GpuProfile = DEFAULT_PROFILE, gpus: int | None = None) -> dict:
    """Decorator arguments for a step that loads a model: the gpu pool and, when PERSONA_DEPLOYMENT=k8s,
    the GPU pod it runs in (``profile`` sized for ``gpus``: the experiment's tensor parallel size, else
    PERSONA_TENSOR_PARALLEL_SIZE; a training step for its processes, see ``step_gpus``). Op tags, not asset
    tags: k8s_job_executor reads step pod config only there."""
    tags = gpu_op_tags(
        profile,
        DEPLOYMENT.on_k8s,
        DEPLOYMENT.gpu_image,
        gpus or DEPLOYMENT.tensor_parallel_size,
        DEPLOYMENT.training_processes,
    )
    return {"pool": GPU_POOL, "op_tags": tags}


def experiment_step(x: Experiment, domain: str) -> dict:
    """Decorator arguments of every asset of experiment ``x``: its group (one per experiment in the UI)
    and tags naming the experiment and the domain (``tag:persona/domain=elicitation`` selects a domain
    across experiments)."""
    return {"group_name": x.name, "tags": x.tags(domain)}


def experiment_model_step(
    x: Experiment, domain: str, table: str, partitions_def: PartitionsDefinition, role: str = "generator"
) -> dict:
    """Decorator arguments of an experiment's asset that asks ``role``'s model: keyed [experiment, domain,
    table], in the experiment's group, in a GPU pod sized for that model, backfills loading it once a run."""
    return dict(
        key=x.key(domain, table),
        **experiment_step(x, domain),
        owners=OWNERS,
        kinds=MODEL_KINDS,
        **gpu_step(gpus=x.gpus(role)),
        partitions_def=partitions_def,
        backfill_policy=model_backfill(partitions_def),
    )


def schema_change_checks(*keys: list[str]) -> list:
    """Checks that warn when a key table's columns change between materializations."""
    return build_column_schema_change_checks(
        assets=[AssetKey(key) for key in keys], severity=AssetCheckSeverity.WARN
    )


COLUMN_SCHEMA = "dagster/column_schema"


def table_columns(schema: Columns) -> dict:
    """Definition metadata declaring a warehouse table's columns, for the asset's ``metadata=``: every column
    ``result_frame`` writes for ``schema`` (``row_id``, the table's own, the provenance columns), in order,
    each with its polars type as materializations record it and its description, which the UI's schema view
    and the catalogue show."""
    written = written_columns(schema)
    return {
        COLUMN_SCHEMA: TableSchema(
            columns=[
                TableColumn(name, str(dtype), description=written.descriptions[name])
                for name, dtype in written.items()
            ]
        )
    }


def _column_type(values: list) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int"
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return "float"
    return "string"


def results_table(header: list[str], rows: list[list], descriptions: dict[str, str] | None = None):
    """Rows as a table the UI shows (sortable, typed); each column's type from its values, its description
    from ``descriptions``."""
    columns = [[row[i] for row in rows] for i in range(len(header))]
    types = [_column_type(values) for values in columns]
    schema = TableSchema(
        columns=[
            TableColumn(name, kind, description=(descriptions or {}).get(name))
            for name, kind in zip(header, types, strict=True)
        ]
    )
    records = [
        TableRecord(
            {
                name: value if value is None or kind != "string" else str(value)
                for name, kind, value in zip(header, types, row, strict=True)
            }
        )
        for row in rows
    ]
    return MetadataValue.table(records, schema=schema)


def table_metadata(columns: dict[str, str], rows: list[dict]) -> MetadataValue:
    """A table the UI shows as one (columns: name -> 'string' | 'int' | 'float' | 'bool')."""
    schema = TableSchema(columns=[TableColumn(name, kind) for name, kind in columns.items()])
    return MetadataValue.table(
        [TableRecord({name: row[name] for name in columns}) for row in rows], schema=schema
    )


def domain_definitions(
    assets_module: ModuleType, checks_module: ModuleType | None = None, extra: Sequence = ()
) -> Definitions:
    """A domain's definitions: its model-free assets (module level, built once), ``extra`` specs and, where
    the domain has them, its model-dependent assets and checks built by its factories once per
    experiment, and those that read every experiment."""
    xs = experiments()
    assets = [*load_assets_from_modules([assets_module]), *extra]
    assets += [a for x in xs for a in getattr(assets_module, "experiment_assets", lambda _: [])(x)]
    assets += getattr(assets_module, "across_experiments", lambda _: [])(xs)
    checks = load_asset_checks_from_modules([checks_module]) if checks_module else []
    if checks_module:
        checks += [c for x in xs for c in getattr(checks_module, "experiment_checks", lambda _: [])(x)]
    return Definitions(assets=assets, asset_checks=checks)
