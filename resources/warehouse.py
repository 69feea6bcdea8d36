"""The warehouse: one DuckDB file, a schema per domain, Polars frames in and out.

Asset key ``[schema, table]`` is table ``schema.table``. A partitioned asset names
its partition columns in metadata ``partition_expr``: a column name, or for
multi-partitions a dict ``{dimension: column}`` covering every dimension.

Why not dagster-duckdb's IO manager: it deletes a partition and inserts the new
rows as two separate commits (a crash in between loses the partition), and it
skips writing an empty frame, so an empty partition leaves stale rows or no
table at all. Here each write replaces exactly its partitions in one
transaction, an empty frame still creates its typed table, and rows outside the
run's partitions are refused.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import duckdb
import polars as pl
from dagster import (
    ConfigurableIOManager,
    ConfigurableResource,
    InputContext,
    MetadataValue,
    MultiPartitionsDefinition,
    OutputContext,
    TableColumn,
    TableSchema,
)
from pydantic import Field

from resources.lineage import refresh_lineage_view

PartitionKeys = list[tuple[str, ...]]


class WarehouseError(RuntimeError):
    pass


class Warehouse:
    """Transactions on the DuckDB file; DuckDB allows one writing process at a time."""

    def __init__(self, path: Path | str, lock_timeout_s: float = 120.0):
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                connection = duckdb.connect(str(self.path))
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        try:
            yield connection
        finally:
            connection.close()

    def replace(
        self,
        schema: str,
        table: str,
        frame: pl.DataFrame,
        partition_columns: Sequence[str] = (),
        partition_keys: PartitionKeys | None = None,
    ) -> None:
        """Replace the given partitions (or the whole table) with ``frame``, atomically."""
        if partition_columns:
            _check_rows_in_partitions(schema, table, frame, partition_columns, partition_keys or [])
        name = f'"{schema}"."{table}"'
        with self.connect() as con:
            con.register("incoming_rows", frame.to_arrow())
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                con.execute(f"CREATE TABLE IF NOT EXISTS {name} AS SELECT * FROM incoming_rows LIMIT 0")
                _add_new_columns(con, schema, table, frame)
                if partition_columns:
                    _register_keys(con, partition_columns, partition_keys or [])
                    con.execute(f"DELETE FROM {name} t WHERE EXISTS ({_key_match(partition_columns)})")
                else:
                    con.execute(f"DELETE FROM {name}")
                con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM incoming_rows")
                refresh_lineage_view(con)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def read(
        self,
        schema: str,
        table: str,
        partition_columns: Sequence[str] = (),
        partition_keys: PartitionKeys | None = None,
    ) -> pl.DataFrame:
        name = f'"{schema}"."{table}"'
        with self.connect() as con:
            if not _table_exists(con, schema, table):
                raise WarehouseError(f"table {schema}.{table} does not exist in {self.path}; materialize it first")
            if partition_columns and partition_keys is not None:
                _register_keys(con, partition_columns, partition_keys)
                query = f"SELECT t.* FROM {name} t WHERE EXISTS ({_key_match(partition_columns)})"
            else:
                query = f"SELECT * FROM {name}"
            return con.execute(query).pl()

    def table_row_counts(self) -> list[tuple[str, str, int]]:
        if not self.path.exists():
            return []
        with self.connect() as con:
            tables = con.execute(
                "SELECT schema_name, table_name FROM duckdb_tables() ORDER BY schema_name, table_name"
            ).fetchall()  # views such as lineage.edges are not tables
            return [
                (s, t, con.execute(f'SELECT count(*) FROM "{s}"."{t}"').fetchone()[0]) for s, t in tables
            ]


def _register_keys(con: duckdb.DuckDBPyConnection, columns: Sequence[str], keys: PartitionKeys) -> None:
    frame = pl.DataFrame(keys, schema={c: pl.String for c in columns}, orient="row")
    con.register("partition_keys", frame.to_arrow())


def _key_match(columns: Sequence[str]) -> str:
    match = " AND ".join(f'k."{c}" = t."{c}"' for c in columns)
    return f"SELECT 1 FROM partition_keys k WHERE {match}"


def _table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(
        con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?", [schema, table]
        ).fetchone()[0]
    )


def _add_new_columns(con: duckdb.DuckDBPyConnection, schema: str, table: str, frame: pl.DataFrame) -> None:
    """A new version of an asset may add columns; older rows get NULL there."""
    existing = {
        row[0]
        for row in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE schema_name = ? AND table_name = ?", [schema, table]
        ).fetchall()
    }
    new = [c for c in frame.columns if c not in existing]
    if new:
        selected = ", ".join(f'"{c}"' for c in new)
        typed = con.execute(f"DESCRIBE SELECT {selected} FROM incoming_rows").fetchall()
        for column, column_type, *_ in typed:
            con.execute(f'ALTER TABLE "{schema}"."{table}" ADD COLUMN "{column}" {column_type}')


def _check_rows_in_partitions(schema, table, frame, partition_columns, partition_keys) -> None:
    missing = [c for c in partition_columns if c not in frame.columns]
    if missing:
        raise WarehouseError(f"{schema}.{table}: partition column(s) {', '.join(missing)} missing from the output")
    allowed = pl.DataFrame(partition_keys, schema=list(partition_columns), orient="row")
    stray = frame.select(partition_columns).unique().join(allowed, on=list(partition_columns), how="anti")
    if stray.height:
        raise WarehouseError(
            f"{schema}.{table}: rows for partitions outside this run: {stray.rows()[:5]}"
        )


def table_location(asset_key_path: Sequence[str]) -> tuple[str, str]:
    if len(asset_key_path) != 2:
        raise WarehouseError(f"asset key {list(asset_key_path)} must be [schema, table] to live in the warehouse")
    return asset_key_path[0], asset_key_path[1]


def partition_columns(metadata: dict, partitions_def) -> list[str]:
    """Partition columns in dimension order, from the ``partition_expr`` metadata."""
    expr = metadata.get("partition_expr")
    if partitions_def is None:
        return []
    if isinstance(partitions_def, MultiPartitionsDefinition):
        dimensions = [d.name for d in partitions_def.partitions_defs]
        if not isinstance(expr, dict) or set(expr) != set(dimensions):
            raise WarehouseError(f"partition_expr must map every dimension {dimensions} to a column, got {expr!r}")
        return [expr[d] for d in dimensions]
    if not isinstance(expr, str):
        raise WarehouseError(f"a partitioned asset needs metadata partition_expr=<column>, got {expr!r}")
    return [expr]


def partition_key_tuples(keys: Sequence[str], partitions_def) -> PartitionKeys:
    if isinstance(partitions_def, MultiPartitionsDefinition):
        dimensions = [d.name for d in partitions_def.partitions_defs]
        tuples = []
        for key in keys:
            by_dimension = partitions_def.get_partition_key_from_str(str(key)).keys_by_dimension
            tuples.append(tuple(by_dimension[d] for d in dimensions))
        return tuples
    return [(str(k),) for k in keys]


class WarehouseResource(ConfigurableResource):
    """Direct access for what is not an asset's own input, e.g. reviews people write with the CLI."""

    database: str = Field(description="Path of the DuckDB file.")

    def read_optional(self, schema: str, table: str) -> pl.DataFrame | None:
        warehouse = Warehouse(self.database)
        if not warehouse.path.exists():
            return None
        with warehouse.connect() as con:
            if not _table_exists(con, schema, table):
                return None
        return warehouse.read(schema, table)


class WarehouseIOManager(ConfigurableIOManager):
    """Stores Polars frames as warehouse tables, one atomic replace per write."""

    database: str = Field(description="Path of the DuckDB file.")
    lock_timeout_s: float = Field(default=120.0, description="How long to wait for another writer.")

    def _warehouse(self) -> Warehouse:
        return Warehouse(self.database, self.lock_timeout_s)

    def handle_output(self, context: OutputContext, obj: pl.DataFrame) -> None:
        if not isinstance(obj, pl.DataFrame):
            raise WarehouseError(f"{context.asset_key.to_user_string()}: expected a Polars DataFrame, got {type(obj)}")
        schema, table = table_location(context.asset_key.path)
        partitions_def = context.asset_partitions_def if context.has_asset_partitions else None
        columns = partition_columns(context.definition_metadata or {}, partitions_def)
        keys = partition_key_tuples(context.asset_partition_keys, partitions_def) if columns else None
        self._warehouse().replace(schema, table, obj, columns, keys)
        context.add_output_metadata(
            {
                "dagster/row_count": obj.height,
                "dagster/table_name": f"{schema}.{table}",
                "dagster/column_schema": TableSchema(
                    columns=[TableColumn(name=n, type=str(t)) for n, t in obj.schema.items()]
                ),
                "warehouse": MetadataValue.path(str(Path(self.database).resolve())),
            }
        )

    def load_input(self, context: InputContext) -> pl.DataFrame:
        schema, table = table_location(context.asset_key.path)
        upstream = context.upstream_output
        partitions_def = context.asset_partitions_def if context.has_asset_partitions else None
        columns = partition_columns(upstream.definition_metadata or {}, partitions_def) if upstream else []
        keys = partition_key_tuples(context.asset_partition_keys, partitions_def) if columns else None
        return self._warehouse().read(schema, table, columns, keys)
