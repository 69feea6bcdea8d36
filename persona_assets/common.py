"""Conventions every asset shares: owners, kinds, partition columns, run metadata."""

from __future__ import annotations

import warnings

from dagster import BackfillPolicy, BetaWarning, MetadataValue

from resources.llm import UsageMeter

# Backfill policies are marked beta in dagster 1.13; they are what makes one run load a model once.
warnings.filterwarnings("ignore", category=BetaWarning)

OWNERS = ["team:persona-research"]
TABLE_KINDS = {"polars", "duckdb"}
MODEL_KINDS = {"pytorch", "duckdb"}
# Concurrency pools (limits in the instance's dagster.yaml): steps that load a model, and the rest,
# which write the single-writer DuckDB file.
GPU_POOL, WAREHOUSE_POOL = "gpu", "warehouse"
COUNTRY_PARTITION = {"partition_expr": "country"}
AGENT_PARTITION = {"partition_expr": "agent"}
AGENT_COUNTRY_PARTITION = {"partition_expr": {"agent": "agent", "country": "country"}}
# A backfill of any range of partitions is one run: one process, one model load.
ONE_RUN_PER_BACKFILL = BackfillPolicy.single_run()


def engine_metadata(meter: UsageMeter, model_id: str) -> dict:
    return {"engine/model_id": model_id, **meter.usage.as_metadata()}


def markdown_table(header: list[str], rows: list[list]) -> MetadataValue:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return MetadataValue.md("\n".join(lines))
