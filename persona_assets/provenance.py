"""Provenance columns carried by every result row (DESIGN.md rule 4).

Each result table has a ``row_id`` unique within the table and ``input_ids``
naming the rows it was computed from: ``schema.table:row_id`` for warehouse
rows, ``file:<sha256>:<row>`` for rows of a source file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from persona_platform.persona_assets.columns import Columns, columns

ROW_ID = columns(
    (
        "row_id",
        pl.String,
        "the row's id, unique within the table; other rows name it as schema.table:row_id in their input_ids",
    )
)
PROVENANCE_SCHEMA = columns(
    (
        "partition_key",
        pl.String,
        "the partition the row belongs to (a country, an agent, or agent|country for agent x country); "
        "null for a row of no partition",
    ),
    (
        "input_ids",
        pl.List(pl.String),
        "the rows this row was computed from: schema.table:row_id for warehouse rows, "
        "file:{sha256}:{row} for rows of a source file",
    ),
    (
        "run_id",
        pl.String,
        "the Dagster run that wrote the row (review-{id} for a row written by persona review-questions)",
    ),
    ("code_version", pl.String, "code version of the asset definition (or review code) that wrote the row"),
    (
        "model_id",
        pl.String,
        "the model the writing step asked (its engine's model id); null when it asked none",
    ),
    (
        "adapter",
        pl.String,
        "the agent whose LoRA adapter made or is described by the row; null for the base model or no model",
    ),
    (
        "prompt_hash",
        pl.String,
        "the step's prompt templates as the first 12 hex digits of their sha256; null for a step without one",
    ),
)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def row_ref(table: str, row_id: str) -> str:
    return f"{table}:{row_id}"


def file_ref(sha256: str, row: int) -> str:
    return f"file:{sha256}:{row}"


@dataclass(frozen=True)
class Provenance:
    run_id: str
    code_version: str
    model_id: str | None = None
    adapter: str | None = None
    prompt_hash: str | None = None


PartitionExpr = str | dict[str, str] | None


def partition_key_of(row: dict, partition_expr: PartitionExpr) -> str | None:
    """The partition a row belongs to, read from its partition column(s); a multi-partition key joins the
    dimensions in Dagster's order (alphabetical: ``agent|country``)."""
    if partition_expr is None:
        return None
    if isinstance(partition_expr, str):
        return row[partition_expr]
    return "|".join(row[column] for _, column in sorted(partition_expr.items()))


def written_columns(schema: Columns) -> Columns:
    """Every column ``result_frame`` writes for ``schema``, in its order, with descriptions: ``row_id``, the
    table's own columns, the provenance columns."""
    return columns(ROW_ID, schema, PROVENANCE_SCHEMA)


def result_frame(
    rows: list[dict],
    schema: dict[str, pl.DataType],
    provenance: Provenance,
    partition_expr: PartitionExpr = None,
) -> pl.DataFrame:
    """Rows (each with its ``input_ids``) plus the run's provenance; a row without its own
    ``partition_key`` gets the one its partition columns name. A row may set its own ``adapter`` (a run
    over several agents serves several adapters)."""
    rows = [
        row if "partition_key" in row else {**row, "partition_key": partition_key_of(row, partition_expr)}
        for row in rows
    ]
    constant = {
        "run_id": provenance.run_id,
        "code_version": provenance.code_version,
        "model_id": provenance.model_id,
        "adapter": provenance.adapter,
        "prompt_hash": provenance.prompt_hash,
    }
    full_schema = {**ROW_ID, **schema, **PROVENANCE_SCHEMA}
    # Column by column through Arrow: polars builds a Series per list cell from Python lists (a minute for the
    # 120,000 rows of a full-size survey), pyarrow converts a whole list column at once.
    arrow_types = pl.DataFrame(schema=full_schema).to_arrow().schema
    columns = {
        name: pa.array(
            [row[name] if name in row else constant.get(name) for row in rows],
            type=arrow_types.field(name).type,
        )
        for name in full_schema
    }
    return pl.from_arrow(pa.table(columns)).cast(full_schema)
