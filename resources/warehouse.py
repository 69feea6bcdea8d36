"""The warehouse: a DuckDB file or a DuckLake, a schema per domain, Polars frames in and out.

Asset key ``[schema, table]`` is table ``schema.table``. A partitioned asset names
its partition columns in metadata ``partition_expr``: a column name, or for
multi-partitions a dict ``{dimension: column}`` covering every dimension.

Why not dagster-duckdb's IO manager: it deletes a partition and inserts the new
rows as two separate commits (a crash in between loses the partition), and it
skips writing an empty frame, so an empty partition leaves stale rows or no
table at all. Here each write replaces exactly its partitions in one
transaction, an empty frame still creates its typed table, and rows outside the
run's partitions are refused.

Where the tables live is the only difference between the two stores: a DuckDB file
(one writing process at a time, so opening waits for the file lock) or a DuckLake
attached as the default catalog (many writers on many machines; each commit is
checked against the others, and a transaction that lost a race runs again whole).
Every read and write below is the same SQL for both.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
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

from persona_platform.resources import lake
from persona_platform.resources.lineage import refresh_lineage_view

PartitionKeys = list[tuple[str, ...]]
_LAKE_INSTANCES: dict[tuple[int, str, str], duckdb.DuckDBPyConnection] = {}

DATABASE_DESCRIPTION = (
    "Path of the DuckDB file, or a DuckLake: "
    "ducklake:postgres:<libpq connection string or postgresql:// URI>."
)
DATA_PATH_DESCRIPTION = (
    "Where a DuckLake keeps its Parquet files (a shared directory or an object-store URL)."
)


class WarehouseError(RuntimeError):
    pass


class Warehouse:
    """Transactions on the warehouse, a DuckDB file or a DuckLake (``database`` says which)."""

    def __init__(self, database: Path | str, lock_timeout_s: float = 120.0, data_path: str = ""):
        self.database = str(database).strip()
        self.is_lake = lake.is_lake(self.database)
        self.lock_timeout_s = lock_timeout_s
        self.data_path = data_path
        if self.is_lake:
            try:
                lake.check_location(self.database)
            except lake.LakeLocationError as exc:
                raise WarehouseError(str(exc)) from None
            if not data_path:
                raise WarehouseError(f"the DuckLake {self.describe()} needs a data path for its files")

    @property
    def path(self) -> Path:
        if self.is_lake:
            raise WarehouseError(f"the warehouse is the DuckLake {self.describe()}, not a file")
        return Path(self.database)

    def describe(self) -> str:
        """Where the warehouse is, fit for logs and metadata: never a password."""
        if self.is_lake:
            return f"{lake.redact(self.database)} (data {self.data_path})"
        return str(Path(self.database).resolve())

    def exists(self) -> bool:
        # A DuckLake catalog is created by its first ATTACH, so it always "exists".
        return self.is_lake or self.path.exists()

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + self.lock_timeout_s
        connection = self._open_lake(deadline) if self.is_lake else self._open_file(deadline)
        try:
            # DuckDB draws a progress bar on stdout for long queries: noise in run logs and piped output.
            connection.execute("SET enable_progress_bar = false")
            yield connection
        finally:
            connection.close()

    def _open_file(self, deadline: float) -> duckdb.DuckDBPyConnection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        delay = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path))
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _open_lake(self, deadline: float) -> duckdb.DuckDBPyConnection:
        """A new connection to the lake, from this process's one DuckDB instance that has it attached.

        Loading the extensions (their signatures are checked, about 0.3 s) and attaching
        happen once per process and location; each use then gets its own cursor, which
        is a connection with its own transactions, so writers in one process conflict
        and retry exactly as writers in different processes do.
        """
        key = (
            os.getpid(),
            self.database,
            self.data_path,
        )  # a forked child must not reuse its parent's instance
        instance = _LAKE_INSTANCES.get(key)
        if instance is None:
            # Extensions come from the pip packages; never fetch one from the network mid-run.
            instance = duckdb.connect(config={"autoinstall_known_extensions": False})
            try:
                lake.load_extensions(instance)
                lake.attach(instance, self.database, self.data_path, deadline)
            except lake.LakeLocationError as exc:
                instance.close()
                raise WarehouseError(str(exc)) from None
            except BaseException:
                instance.close()
                raise
            _LAKE_INSTANCES[key] = instance
        connection = instance.cursor()
        connection.execute(f"USE {lake.CATALOG_NAME}")
        return connection

    def transaction(
        self, con: duckdb.DuckDBPyConnection, work: Callable[[duckdb.DuckDBPyConnection], None]
    ) -> int:
        """Run ``work`` in one transaction; when a concurrent writer's commit conflicts, run it all again.

        A conflicting COMMIT leaves nothing behind (DuckLake writes the new snapshot
        only when the commit succeeds), so the retry starts from the other writer's
        committed state. Returns the number of attempts.
        """
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        attempt = 0
        while True:
            attempt += 1
            con.execute("BEGIN TRANSACTION")
            try:
                work(con)
                con.execute("COMMIT")
                return attempt
            except duckdb.Error as exc:
                _rollback(con)
                if not lake.is_conflict(exc) or time.monotonic() > deadline:
                    raise
            except BaseException:
                _rollback(con)
                raise
            # Jitter keeps writers that collided from colliding again in lockstep.
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 2.0)

    def replace(
        self,
        schema: str,
        table: str,
        frame: pl.DataFrame,
        partition_columns: Sequence[str] = (),
        partition_keys: PartitionKeys | None = None,
    ) -> int:
        """Replace the given partitions (or the whole table) with ``frame``, atomically.

        Returns the attempts the transaction took (more than 1: it lost a race and ran again).
        """
        if partition_columns:
            _check_rows_in_partitions(schema, table, frame, partition_columns, partition_keys or [])
        name = f'"{schema}"."{table}"'

        def work(con: duckdb.DuckDBPyConnection) -> None:
            con.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            con.execute(f"CREATE TABLE IF NOT EXISTS {name} AS SELECT * FROM incoming_rows LIMIT 0")
            _add_new_columns(con, schema, table, frame)
            if partition_columns:
                con.execute(f"DELETE FROM {name} t WHERE EXISTS ({_key_match(partition_columns)})")
            else:
                con.execute(f"DELETE FROM {name}")
            con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM incoming_rows")
            refresh_lineage_view(con)

        with self.connect() as con:
            con.register("incoming_rows", frame.to_arrow())
            if partition_columns:
                _register_keys(con, partition_columns, partition_keys or [])
            return self.transaction(con, work)

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
                raise WarehouseError(
                    f"table {schema}.{table} does not exist in {self.describe()}; materialize it first"
                )
            if partition_columns and partition_keys is not None:
                _register_keys(con, partition_columns, partition_keys)
                query = f"SELECT t.* FROM {name} t WHERE EXISTS ({_key_match(partition_columns)})"
            else:
                query = f"SELECT * FROM {name}"
            return con.execute(query).pl()

    def read_optional(self, schema: str, table: str) -> pl.DataFrame | None:
        if not self.exists():
            return None
        with self.connect() as con:
            if not _table_exists(con, schema, table):
                return None
        return self.read(schema, table)

    def table_row_counts(self) -> list[tuple[str, str, int]]:
        if not self.exists():
            return []
        with self.connect() as con:
            tables = con.execute(
                "SELECT schema_name, table_name FROM duckdb_tables() "
                "WHERE database_name = current_database() ORDER BY schema_name, table_name"
            ).fetchall()  # views such as lineage.edges are not tables
            return [(s, t, con.execute(f'SELECT count(*) FROM "{s}"."{t}"').fetchone()[0]) for s, t in tables]


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back if a transaction is still open: a failed COMMIT has already ended it."""
    try:
        con.execute("ROLLBACK")
    except duckdb.TransactionException as exc:
        if "no transaction is active" not in str(exc):
            raise


def _register_keys(con: duckdb.DuckDBPyConnection, columns: Sequence[str], keys: PartitionKeys) -> None:
    frame = pl.DataFrame(keys, schema={c: pl.String for c in columns}, orient="row")
    con.register("partition_keys", frame.to_arrow())


def _key_match(columns: Sequence[str]) -> str:
    match = " AND ".join(f'k."{c}" = t."{c}"' for c in columns)
    return f"SELECT 1 FROM partition_keys k WHERE {match}"


def _table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(
        con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
            "AND schema_name = ? AND table_name = ?",
            [schema, table],
        ).fetchone()[0]
    )


def _add_new_columns(con: duckdb.DuckDBPyConnection, schema: str, table: str, frame: pl.DataFrame) -> None:
    """A new version of an asset may add columns; older rows get NULL there."""
    existing = {
        row[0]
        for row in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() "
            "AND schema_name = ? AND table_name = ?",
            [schema, table],
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
        raise WarehouseError(
            f"{schema}.{table}: partition column(s) {', '.join(missing)} missing from the output"
        )
    allowed = pl.DataFrame(partition_keys, schema=list(partition_columns), orient="row")
    stray = frame.select(partition_columns).unique().join(allowed, on=list(partition_columns), how="anti")
    if stray.height:
        raise WarehouseError(f"{schema}.{table}: rows for partitions outside this run: {stray.rows()[:5]}")


def experiment_schema(experiment: str, schema: str) -> str:
    """Where an experiment's tables of one domain live: each experiment has its own schemas, so no run of
    one overwrites another's rows."""
    return f"{experiment}__{schema}"


def table_location(asset_key_path: Sequence[str]) -> tuple[str, str]:
    """[schema, table] -> schema.table; an experiment's [experiment, schema, table] ->
    experiment__schema.table."""
    if len(asset_key_path) == 3:
        return experiment_schema(asset_key_path[0], asset_key_path[1]), asset_key_path[2]
    if len(asset_key_path) != 2:
        raise WarehouseError(
            f"asset key {list(asset_key_path)} must be [schema, table] or [experiment, schema, table] "
            "to live in the warehouse"
        )
    return asset_key_path[0], asset_key_path[1]


def partition_columns(metadata: dict, partitions_def) -> list[str]:
    """Partition columns in dimension order, from the ``partition_expr`` metadata."""
    expr = metadata.get("partition_expr")
    if partitions_def is None:
        return []
    if isinstance(partitions_def, MultiPartitionsDefinition):
        dimensions = [d.name for d in partitions_def.partitions_defs]
        if not isinstance(expr, dict) or set(expr) != set(dimensions):
            raise WarehouseError(
                f"partition_expr must map every dimension {dimensions} to a column, got {expr!r}"
            )
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

    database: str = Field(description=DATABASE_DESCRIPTION)
    data_path: str = Field(default="", description=DATA_PATH_DESCRIPTION)

    def read_optional(self, schema: str, table: str) -> pl.DataFrame | None:
        return Warehouse(self.database, data_path=self.data_path).read_optional(schema, table)


class WarehouseIOManager(ConfigurableIOManager):
    """Stores Polars frames as warehouse tables, one atomic replace per write."""

    database: str = Field(description=DATABASE_DESCRIPTION)
    data_path: str = Field(default="", description=DATA_PATH_DESCRIPTION)
    lock_timeout_s: float = Field(
        default=120.0,
        description="How long to wait for another writer (file lock, or retries after conflicts).",
    )

    def _warehouse(self) -> Warehouse:
        return Warehouse(self.database, self.lock_timeout_s, self.data_path)

    def handle_output(self, context: OutputContext, obj: pl.DataFrame) -> None:
        if not isinstance(obj, pl.DataFrame):
            raise WarehouseError(
                f"{context.asset_key.to_user_string()}: expected a Polars DataFrame, got {type(obj)}"
            )
        schema, table = table_location(context.asset_key.path)
        partitions_def = context.asset_partitions_def if context.has_asset_partitions else None
        columns = partition_columns(context.definition_metadata or {}, partitions_def)
        keys = partition_key_tuples(context.asset_partition_keys, partitions_def) if columns else None
        warehouse = self._warehouse()
        attempts = warehouse.replace(schema, table, obj, columns, keys)
        location = (
            {"warehouse": MetadataValue.text(warehouse.describe()), "warehouse_attempts": attempts}
            if warehouse.is_lake
            else {"warehouse": MetadataValue.path(warehouse.describe())}
        )
        context.add_output_metadata(
            {
                "dagster/row_count": obj.height,
                "dagster/table_name": f"{schema}.{table}",
                "dagster/column_schema": TableSchema(
                    columns=[TableColumn(name=n, type=str(t)) for n, t in obj.schema.items()]
                ),
                **location,
            }
        )

    def load_input(self, context: InputContext) -> pl.DataFrame:
        schema, table = table_location(context.asset_key.path)
        upstream = context.upstream_output
        partitions_def = context.asset_partitions_def if context.has_asset_partitions else None
        columns = partition_columns(upstream.definition_metadata or {}, partitions_def) if upstream else []
        keys = partition_key_tuples(context.asset_partition_keys, partitions_def) if columns else None
        return self._warehouse().read(schema, table, columns, keys)
