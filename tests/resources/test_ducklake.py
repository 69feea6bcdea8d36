"""The warehouse on DuckLake: a real PostgreSQL catalog started here, data files in a local directory.

What runs for real: Debian's PostgreSQL server (started and stopped by these tests),
the DuckLake and PostgreSQL extensions from their pip packages (no network), our
IO manager under Dagster's ``materialize`` in eight processes at once. What does
not: object stores for the data files. Tests that need the server are marked slow (they
start processes); without PostgreSQL they fail and say how to install it.
"""

import itertools
import multiprocessing
import os
import traceback
from pathlib import Path

import duckdb
import polars as pl
import pytest
from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    DagsterInstance,
    EnvVar,
    StaticPartitionsDefinition,
    asset,
    materialize,
)
from dagster._serdes import serialize_value

from persona_platform.benchmarks.postgres import PostgresServer, PostgresUnavailable
from persona_platform.resources import lake as lake_module
from persona_platform.resources.lineage import refresh_lineage_view
from persona_platform.resources.settings import SettingsError, load_settings
from persona_platform.resources.warehouse import Warehouse, WarehouseError, WarehouseIOManager

SCHEMA = {"country": pl.String, "value": pl.Int64}
TYPED = {
    "country": pl.String,
    "n": pl.Int64,
    "small": pl.Int32,
    "x": pl.Float64,
    "ok": pl.Boolean,
    "input_ids": pl.List(pl.String),
    "at": pl.Datetime("us"),
    "day": pl.Date,
    "detail": pl.Struct({"a": pl.Int64, "b": pl.String}),
}
WRITERS = 8
PARTITIONS_PER_WRITER = 3
COUNTRIES = [f"C{i:02d}" for i in range(WRITERS * PARTITIONS_PER_WRITER)]
ROWS = {1: 200, 2: 150}  # rows per partition in the first write and in the rewrite
SECRET = "Sup3r-secret-pw"


def frame(rows):
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")


@pytest.fixture(scope="module")
def postgres():
    try:
        server = PostgresServer().start()
    except PostgresUnavailable as exc:
        pytest.fail(f"the DuckLake tests need a PostgreSQL server: {exc}", pytrace=False)
    yield server
    server.stop()
    assert not server.root.exists()


_databases = itertools.count()


@pytest.fixture
def location(postgres) -> str:
    return "ducklake:postgres:" + postgres.create_database(f"lake{next(_databases)}")


@pytest.fixture
def lake(location, tmp_path) -> Warehouse:
    return Warehouse(location, lock_timeout_s=60, data_path=str(tmp_path / "lake-files"))


# --- settings -------------------------------------------------------------------------------------------


def test_the_default_warehouse_is_the_duckdb_file_under_home(tmp_path):
    settings = load_settings({"PERSONA_HOME": str(tmp_path)})
    assert not settings.warehouse_is_lake
    assert settings.warehouse_path == tmp_path.resolve() / "warehouse.duckdb"
    elsewhere = load_settings(
        {"PERSONA_HOME": str(tmp_path), "PERSONA_WAREHOUSE": str(tmp_path / "x.duckdb")}
    )
    assert elsewhere.warehouse_path == tmp_path.resolve() / "x.duckdb"


def test_a_ducklake_setting_is_read_and_shown_without_its_password(tmp_path):
    location = f"ducklake:postgres:dbname=lake host=db.internal user=persona password={SECRET}"
    settings = load_settings(
        {
            "PERSONA_HOME": str(tmp_path),
            "PERSONA_WAREHOUSE": location,
            "PERSONA_WAREHOUSE_DATA_PATH": "/mnt/lake",
        }
    )
    assert settings.warehouse_is_lake and settings.warehouse == location
    assert SECRET not in settings.warehouse_label and "password=***" in settings.warehouse_label
    with pytest.raises(SettingsError, match="is the DuckLake") as error:
        _ = settings.warehouse_path
    assert SECRET not in str(error.value)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"PERSONA_WAREHOUSE": "ducklake:postgres:dbname=lake"}, "PERSONA_WAREHOUSE_DATA_PATH is not set"),
        ({"PERSONA_WAREHOUSE_DATA_PATH": "/mnt/lake"}, "not a DuckLake"),
        (
            {"PERSONA_WAREHOUSE": "ducklake:metadata.ducklake", "PERSONA_WAREHOUSE_DATA_PATH": "/x"},
            "catalog must be PostgreSQL",
        ),
        (
            {"PERSONA_WAREHOUSE": "ducklake:postgres:", "PERSONA_WAREHOUSE_DATA_PATH": "/x"},
            "names no database",
        ),
        (
            {
                "PERSONA_WAREHOUSE": f"ducklake:postgres:dbname=lake password={SECRET} oops",
                "PERSONA_WAREHOUSE_DATA_PATH": "/x",
            },
            "cannot read the connection string at 'oops'",
        ),
        (
            {"PERSONA_WAREHOUSE": f"postgresql://u:{SECRET}@db/lake"},
            "neither a DuckDB file path nor a DuckLake",
        ),
    ],
)
def test_bad_warehouse_settings_name_the_setting_and_hide_the_password(tmp_path, env, message):
    with pytest.raises(SettingsError, match=message) as error:
        load_settings({"PERSONA_HOME": str(tmp_path), **env})
    assert "PERSONA_WAREHOUSE" in str(error.value)
    assert SECRET not in str(error.value)


def test_a_directory_is_not_a_warehouse_file(tmp_path):
    with pytest.raises(SettingsError, match="is a directory"):
        load_settings({"PERSONA_HOME": str(tmp_path), "PERSONA_WAREHOUSE": str(tmp_path)})


def test_redaction_covers_keyword_quoted_and_uri_passwords():
    assert lake_module.redact("dbname=x password='a b' user=u") == "dbname=x password=*** user=u"
    assert lake_module.redact("host=h PASSWORD = s3 port=1") == "host=h PASSWORD = *** port=1"
    assert lake_module.redact("postgresql://me:s3@host:5/db") == "postgresql://me:***@host:5/db"
    assert lake_module.redact("postgresql://me@host/db") == "postgresql://me@host/db"


# --- reads and writes on the lake --------------------------------------------------------------------------


@pytest.mark.slow
def test_typed_empty_partitions_round_trip(lake):
    lake.replace("s", "typed", pl.DataFrame(schema=TYPED), ["country"], [("A",)])
    empty = lake.read("s", "typed")
    assert empty.height == 0 and empty.schema == pl.Schema(TYPED)
    import datetime as dt

    row = pl.DataFrame(
        [
            (
                "A",
                1,
                2,
                1.5,
                True,
                ["file:ab:1"],
                dt.datetime(2026, 1, 2, 3, 4, 5),
                dt.date(2026, 1, 2),
                {"a": 1, "b": "q"},
            )
        ],
        schema=TYPED,
        orient="row",
    )
    lake.replace("s", "typed", row, ["country"], [("A",)])
    assert lake.read("s", "typed").equals(row)
    lake.replace("s", "typed", pl.DataFrame(schema=TYPED), ["country"], [("A",)])
    assert lake.read("s", "typed").height == 0


@pytest.mark.slow
def test_replace_touches_only_the_written_partitions_and_reads_select_them(lake):
    lake.replace("s", "t", frame([("A", 1), ("B", 2), ("C", 3)]), ["country"], [("A",), ("B",), ("C",)])
    lake.replace("s", "t", frame([("A", 10), ("A", 11)]), ["country"], [("A",)])
    lake.replace(
        "s", "t", frame([("A", 10), ("A", 11)]), ["country"], [("A",)]
    )  # the same rewrite again: no duplicates
    assert sorted(lake.read("s", "t").rows()) == [("A", 10), ("A", 11), ("B", 2), ("C", 3)]
    assert sorted(lake.read("s", "t", ["country"], [("B",), ("C",)]).rows()) == [("B", 2), ("C", 3)]
    lake.replace("s", "t", frame([("Z", 0)]))  # unpartitioned: the whole table
    assert lake.read("s", "t").rows() == [("Z", 0)]
    assert lake.table_row_counts() == [("s", "t", 1)]


@pytest.mark.slow
def test_a_failed_write_leaves_the_previous_rows(lake):
    lake.replace("s", "t", frame([("A", 1), ("B", 2)]), ["country"], [("A",), ("B",)])
    with pytest.raises(duckdb.Error):
        lake.replace(
            "s", "t", pl.DataFrame({"country": ["A"], "value": ["not a number"]}), ["country"], [("A",)]
        )
    with pytest.raises(WarehouseError, match="outside this run"):
        lake.replace("s", "t", frame([("A", 5), ("C", 6)]), ["country"], [("A",)])
    assert sorted(lake.read("s", "t").rows()) == [("A", 1), ("B", 2)]


@pytest.mark.slow
def test_new_columns_are_added_and_missing_tables_named(lake):
    lake.replace("s", "t", frame([("A", 1)]), ["country"], [("A",)])
    lake.replace(
        "s", "t", pl.DataFrame({"country": ["B"], "value": [2], "note": ["new"]}), ["country"], [("B",)]
    )
    assert sorted(lake.read("s", "t").rows()) == [("A", 1, None), ("B", 2, "new")]
    with pytest.raises(WarehouseError, match="s.nothing does not exist"):
        lake.read("s", "nothing")
    assert lake.read_optional("s", "nothing") is None


@pytest.mark.slow
def test_the_data_files_are_parquet_under_the_data_path(lake):
    lake.replace("s", "t", frame([("A", i) for i in range(500)]), ["country"], [("A",)])
    assert list(Path(lake.data_path).rglob("*.parquet"))


# --- conflicts --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_conflicting_commit_runs_the_whole_transaction_again(lake):
    lake.replace("s", "t", frame([("A", 1), ("B", 2)]), ["country"], [("A",), ("B",)])
    attempts = []

    def work(con):
        attempts.append(1)
        con.execute("DELETE FROM s.t WHERE country = 'A'")
        con.execute("INSERT INTO s.t VALUES ('A', ?)", [100 + len(attempts)])
        if len(attempts) == 1:
            # Another writer replaces the same partition and commits while this transaction is open.
            lake.replace("s", "t", frame([("A", 50)]), ["country"], [("A",)])

    with lake.connect() as con:
        assert lake.transaction(con, work) == 2
    # The second attempt started from the other writer's commit and replaced it: one A row, no 50, no 101.
    assert sorted(lake.read("s", "t").rows()) == [("A", 102), ("B", 2)]


@pytest.mark.slow
def test_a_conflict_past_the_deadline_fails_and_writes_nothing(location, tmp_path):
    impatient = Warehouse(location, lock_timeout_s=0, data_path=str(tmp_path / "files"))
    impatient.replace("s", "t", frame([("A", 1), ("B", 2)]), ["country"], [("A",), ("B",)])

    def work(con):
        con.execute("DELETE FROM s.t WHERE country = 'A'")
        con.execute("INSERT INTO s.t VALUES ('A', 7)")
        impatient.replace("s", "t", frame([("A", 50)]), ["country"], [("A",)])

    with impatient.connect() as con, pytest.raises(duckdb.TransactionException, match="conflict"):
        impatient.transaction(con, work)
    assert sorted(impatient.read("s", "t").rows()) == [("A", 50), ("B", 2)]


# --- lineage ----------------------------------------------------------------------------------------------


def provenance_frame(ids: list[str], inputs: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "row_id": ids,
            "input_ids": [[i] for i in inputs],
            "run_id": "r",
            "code_version": "v",
            "model_id": "m",
            "adapter": None,
            "prompt_hash": None,
        },
        schema_overrides={"adapter": pl.String, "prompt_hash": pl.String},
    )


@pytest.mark.slow
def test_the_lineage_view_and_macro_live_in_the_lake(lake):
    lake.replace("s", "a", provenance_frame(["a1"], ["file:f00d:1"]))
    attempts = []

    def work(con):
        # A writer adds table s.b while another adds s.c and commits first: both new tables race for the view.
        attempts.append(1)
        con.register("incoming_rows", provenance_frame(["b1"], ["s.a:a1"]).to_arrow())
        con.execute("CREATE TABLE IF NOT EXISTS s.b AS SELECT * FROM incoming_rows")
        refresh_lineage_view(con)
        if len(attempts) == 1:
            lake.replace("s", "c", provenance_frame(["c1"], ["s.b:b1"]))

    with lake.connect() as con:
        assert lake.transaction(con, work) == 2
    with lake.connect() as con:  # a fresh connection: the view and the macro are stored in the lake's catalog
        tables = {r[0] for r in con.execute("SELECT DISTINCT table_name FROM lineage.edges").fetchall()}
        chain = con.execute("SELECT table_name, row_id, input_ref FROM lineage.chain('s.c', 'c1')").fetchall()
    assert tables == {"s.a", "s.b", "s.c"}
    assert sorted(chain) == [("s.a", "a1", "file:f00d:1"), ("s.b", "b1", "s.a:a1"), ("s.c", "c1", "s.b:b1")]


@pytest.mark.slow
def test_writes_that_add_no_table_leave_the_lineage_view_alone(lake):
    # Rewriting the view on every write would make every pair of concurrent writers conflict.
    lake.replace("s", "a", provenance_frame(["a1"], ["file:f00d:1"]))
    with lake.connect() as con:
        before = con.execute("SELECT max(snapshot_id) FROM lake.snapshots()").fetchone()[0]
    lake.replace("s", "a", provenance_frame(["a2"], ["file:f00d:2"]))
    lake.replace("s", "z", frame([("A", 1)]))  # no provenance columns: not in the view either
    with lake.connect() as con:
        changes = [
            c
            for (c,) in con.execute(
                "SELECT changes FROM lake.snapshots() WHERE snapshot_id > ? ORDER BY snapshot_id", [before]
            ).fetchall()
        ]
    assert len(changes) == 2
    assert not [kind for change in changes for kind in change if "view" in kind], changes


# --- passwords --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_password_in_the_location_reaches_neither_the_instance_nor_errors(
    postgres, location, tmp_path, monkeypatch
):
    # Trust authentication ignores the password, so the location still connects.
    monkeypatch.setenv("PERSONA_WAREHOUSE", f"{location} password={SECRET}")
    parts = StaticPartitionsDefinition(["A", "B"])

    @asset(key_prefix="demo", partitions_def=parts, metadata={"partition_expr": "country"})
    def table(context: AssetExecutionContext) -> pl.DataFrame:
        return frame([(context.partition_key, 1)])

    @asset(key_prefix="demo", deps=[])
    def total(table: pl.DataFrame) -> pl.DataFrame:
        return table.select(pl.col("value").sum())

    instance = DagsterInstance.ephemeral()
    io_manager = WarehouseIOManager(database=EnvVar("PERSONA_WAREHOUSE"), data_path=str(tmp_path / "files"))
    for key in ("A", "B"):
        assert materialize(
            [table], partition_key=key, instance=instance, resources={"io_manager": io_manager}
        ).success
    result = materialize(
        [table.to_source_asset(), total], instance=instance, resources={"io_manager": io_manager}
    )
    assert result.output_for_node("demo__total").item() == 2
    shown = result.asset_materializations_for_node("demo__total")[0].metadata["warehouse"].value
    assert "password=***" in shown
    stored = []
    for run in instance.get_runs():
        stored.append(serialize_value(run))
        stored.append(serialize_value(instance.get_job_snapshot(run.job_snapshot_id)))
        stored += [serialize_value(event) for event in instance.all_logs(run.run_id)]
    assert len(stored) > 10 and SECRET not in "\n".join(stored)

    missing = location.replace("dbname=lake", "dbname=nosuchdb") + f" password={SECRET}"
    with pytest.raises(WarehouseError, match="cannot attach the DuckLake") as error:
        Warehouse(missing, data_path=str(tmp_path / "files")).read("demo", "table")
    assert "password=***" in str(error.value)
    assert SECRET not in "".join(traceback.format_exception(error.value))


# --- many writers -----------------------------------------------------------------------------------------


def _writes(round_no: int) -> AssetsDefinition:
    """The asset every writer materializes in round ``round_no``, built per round so that it writes its own
    round (not bound as a default argument: Dagster reads every parameter of an asset as an input)."""
    partitions = StaticPartitionsDefinition(COUNTRIES)

    @asset(
        key_prefix="many",
        name="writes",
        partitions_def=partitions,
        metadata={"partition_expr": "country"},
    )
    def writes(context: AssetExecutionContext) -> pl.DataFrame:
        key, n = context.partition_key, ROWS[round_no]
        return pl.DataFrame(
            {
                "country": [key] * n,
                "i": list(range(n)),
                "round": [round_no] * n,
                "row_id": [f"{key}/{i}" for i in range(n)],
                "input_ids": [[f"file:f00d:{i}"] for i in range(n)],
                "run_id": context.run.run_id,
                "code_version": "v",
                "model_id": "m",
                "adapter": None,
                "prompt_hash": None,
            },
            schema_overrides={"adapter": pl.String, "prompt_hash": pl.String},
        )

    return writes


def _writer(location: str, data_path: str, home: str, countries: list[str], barrier, results) -> None:
    """One pod: materializes its partitions through the IO manager, first write then rewrite."""
    os.environ["HOME"] = home  # DuckDB's extension directory would be under it; it must stay unused
    try:
        attempts = []
        for round_no in (1, 2):
            writes = _writes(round_no)
            io_manager = WarehouseIOManager(database=location, data_path=data_path, lock_timeout_s=240)
            barrier.wait(timeout=240)  # every writer starts each round at the same moment
            for key in countries:
                result = materialize([writes], partition_key=key, resources={"io_manager": io_manager})
                attempts.append(
                    result.asset_materializations_for_node("many__writes")[0]
                    .metadata["warehouse_attempts"]
                    .value
                )
        results.put(("ok", countries, attempts))
    except BaseException:
        results.put(("error", countries, traceback.format_exc()))
        barrier.abort()


@pytest.mark.slow
def test_eight_writer_processes_materialize_partitions_of_one_table(location, tmp_path):
    data_path = str(tmp_path / "lake-files")
    home = tmp_path / "home"
    home.mkdir()
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(WRITERS), context.Queue()
    shares = [COUNTRIES[i::WRITERS] for i in range(WRITERS)]
    processes = [
        context.Process(target=_writer, args=(location, data_path, str(home), share, barrier, results))
        for share in shares
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=480) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    errors = [detail for status, _, detail in outcomes if status != "ok"]
    assert not errors, errors[0]
    attempts = [a for _, _, per_writer in outcomes for a in per_writer]
    print(
        f"\n{WRITERS} writers, {len(attempts)} materializations: "
        f"{sum(a > 1 for a in attempts)} ran again after "
        f"a conflict (attempts: max {max(attempts)}, total {sum(attempts)})"
    )

    rows = Warehouse(location, data_path=data_path).read("many", "writes")
    # Every partition holds exactly its rewrite: nothing lost, nothing twice, nothing left of the first write.
    assert rows.height == len(COUNTRIES) * ROWS[2]
    assert rows.select("country", "i").is_unique().all()
    assert set(rows["round"]) == {2}
    per_country = dict(rows.group_by("country").len().rows())
    assert per_country == {c: ROWS[2] for c in COUNTRIES}
    assert sorted(rows.filter(pl.col("country") == "C05")["i"]) == list(range(ROWS[2]))
    with Warehouse(location, data_path=data_path).connect() as con:
        assert (
            con.execute("SELECT count(*) FROM lineage.edges WHERE table_name = 'many.writes'").fetchone()[0]
            == rows.height
        )
    assert list(Path(data_path).rglob("*.parquet"))
    # The extensions came from the pip packages: nothing was installed into the home directory.
    assert not (home / ".duckdb").exists()
