import duckdb
import polars as pl
import pytest
from dagster import (
    AssetExecutionContext,
    MultiPartitionsDefinition,
    StaticPartitionsDefinition,
    asset,
    materialize,
)

from persona_platform.resources.warehouse import Warehouse, WarehouseError, WarehouseIOManager

SCHEMA = {"country": pl.String, "value": pl.Int64}


def frame(rows):
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")


def test_replace_touches_only_the_written_partitions(tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    wh.replace("s", "t", frame([("A", 1), ("B", 2)]), ["country"], [("A",), ("B",)])
    wh.replace("s", "t", frame([("A", 10), ("A", 11)]), ["country"], [("A",)])
    assert sorted(wh.read("s", "t").rows()) == [("A", 10), ("A", 11), ("B", 2)]
    assert wh.read("s", "t", ["country"], [("B",)]).rows() == [("B", 2)]


def test_a_failed_write_leaves_the_previous_rows(tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    wh.replace("s", "t", frame([("A", 1), ("B", 2)]), ["country"], [("A",), ("B",)])
    bad = pl.DataFrame({"country": ["A"], "value": ["not a number"]})
    with pytest.raises(duckdb.Error):
        wh.replace("s", "t", bad, ["country"], [("A",)])
    assert sorted(wh.read("s", "t").rows()) == [("A", 1), ("B", 2)]


def test_an_empty_partition_is_written_and_typed(tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    wh.replace("s", "t", frame([]), ["country"], [("A",)])
    empty = wh.read("s", "t")
    assert empty.height == 0 and empty.schema == pl.Schema(SCHEMA)
    wh.replace("s", "t", frame([("A", 1)]), ["country"], [("A",)])
    wh.replace("s", "t", frame([]), ["country"], [("A",)])
    assert wh.read("s", "t").height == 0


def test_rows_outside_the_run_partitions_are_refused(tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    with pytest.raises(WarehouseError, match="outside this run"):
        wh.replace("s", "t", frame([("A", 1), ("B", 2)]), ["country"], [("A",)])
    assert wh.table_row_counts() == []


def test_new_columns_are_added(tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    wh.replace("s", "t", frame([("A", 1)]), ["country"], [("A",)])
    wider = pl.DataFrame({"country": ["B"], "value": [2], "note": ["new"]})
    wh.replace("s", "t", wider, ["country"], [("B",)])
    assert sorted(wh.read("s", "t").rows()) == [("A", 1, None), ("B", 2, "new")]


def test_reading_a_missing_table_names_it(tmp_path):
    with pytest.raises(WarehouseError, match="s.t does not exist"):
        Warehouse(tmp_path / "w.duckdb").read("s", "t")


def test_io_manager_with_multi_partitions_and_ranges(tmp_path):
    agents = StaticPartitionsDefinition(["a1", "a2", "a3"])
    countries = StaticPartitionsDefinition(["X", "Y"])
    multi = MultiPartitionsDefinition({"agent": agents, "country": countries})

    @asset(
        key_prefix="demo",
        partitions_def=multi,
        metadata={"partition_expr": {"agent": "agent", "country": "country"}},
    )
    def pairs(context: AssetExecutionContext) -> pl.DataFrame:
        rows = []
        for key in context.partition_keys:
            dims = multi.get_partition_key_from_str(key).keys_by_dimension
            rows.append((dims["agent"], dims["country"], context.run.run_id))
        return pl.DataFrame(
            rows, schema={"agent": pl.String, "country": pl.String, "run": pl.String}, orient="row"
        )

    @asset(key_prefix="demo", deps=[])
    def summary(pairs: pl.DataFrame) -> pl.DataFrame:
        return pairs.group_by("country").agg(pl.len().alias("n")).sort("country")

    database = str(tmp_path / "w.duckdb")
    resources = {"io_manager": WarehouseIOManager(database=database)}
    first = materialize(
        [pairs],
        resources=resources,
        tags={"dagster/asset_partition_range_start": "a1|X", "dagster/asset_partition_range_end": "a3|Y"},
    )
    assert first.success
    second = materialize([pairs], resources=resources, partition_key="a2|Y")
    assert second.success
    rows = Warehouse(database).read("demo", "pairs").sort("agent", "country").rows()
    assert len(rows) == 6
    assert [r[2] for r in rows if (r[0], r[1]) == ("a2", "Y")] == [second.run_id]
    assert {r[2] for r in rows if (r[0], r[1]) != ("a2", "Y")} == {first.run_id}
    result = materialize([pairs.to_source_asset(), summary], resources=resources)
    assert result.output_for_node("demo__summary").rows() == [("X", 3), ("Y", 3)]


def test_multi_partition_expr_must_cover_every_dimension(tmp_path):
    multi = MultiPartitionsDefinition(
        {"agent": StaticPartitionsDefinition(["a"]), "country": StaticPartitionsDefinition(["X"])}
    )

    @asset(key_prefix="demo", partitions_def=multi, metadata={"partition_expr": {"agent": "agent"}})
    def half(context) -> pl.DataFrame:
        return pl.DataFrame({"agent": ["a"], "country": ["X"]})

    result = materialize(
        [half],
        resources={"io_manager": WarehouseIOManager(database=str(tmp_path / "w.duckdb"))},
        partition_key="a|X",
        raise_on_error=False,
    )
    assert not result.success
    assert "every dimension" in str(result.all_events)
