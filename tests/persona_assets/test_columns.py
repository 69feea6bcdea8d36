"""Every warehouse table declares its columns in its asset's definition (``dagster/column_schema``), each
with a type and a description, and the declared columns are exactly those its table builder writes.

The builder of a table is read from its asset function: the schema passed to ``asset_frame`` or
``step.frame`` (for a multi-asset, the call naming the output), resolved in the function's module, turned
into a frame by ``result_frame`` as every step does."""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap

import polars as pl
import pytest
from dagster import (
    AssetKey,
    AssetOut,
    AssetSpec,
    Definitions,
    Output,
    TableColumn,
    TableSchema,
    asset,
    multi_asset,
)

from persona_platform.persona_assets.catalogue import catalogue_markdown
from persona_platform.persona_assets.columns import Columns, columns
from persona_platform.persona_assets.common import COLUMN_SCHEMA, table_columns
from persona_platform.persona_assets.definitions import defs
from persona_platform.persona_assets.provenance import PROVENANCE_SCHEMA, ROW_ID, Provenance, result_frame
from persona_platform.persona_assets.review import REVIEW_SCHEMA, run_review
from persona_platform.persona_assets.steps import asset_frame, model_step

# The frame-building calls of an asset function: name -> (position of the schema, of the output).
BUILDERS = {"asset_frame": (2, None), "frame": (1, 2), "result_frame": (1, None)}
# Tables written outside Dagster runs, and the function that writes them.
EXTERNAL_WRITERS = {
    AssetKey(["traits", "question_reviews"]): run_review,
    AssetKey(["votes", "question_reviews"]): run_review,
}


def declared_columns(node) -> TableSchema | None:
    schema = node.metadata.get(COLUMN_SCHEMA)
    return getattr(schema, "schema", schema)


def _argument(call: ast.Call, position: int | None, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return call.args[position] if position is not None and len(call.args) > position else None


def built_schemas(fn) -> list[tuple[str | None, object]]:
    """(output name or None, schema object) of every frame-building call in ``fn``'s body."""
    module = sys.modules[fn.__module__]
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    found = []
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call):
            continue
        name = getattr(call.func, "id", None) or getattr(call.func, "attr", None)
        if name not in BUILDERS:
            continue
        schema_at, output_at = BUILDERS[name]
        schema = _argument(call, schema_at, "schema")
        output = _argument(call, output_at, "output")
        assert isinstance(schema, ast.Name), (
            f"{fn.__qualname__}: a table's schema must be a module-level name"
        )
        found.append((output.value if isinstance(output, ast.Constant) else None, getattr(module, schema.id)))
    return found


def table_builders(graph) -> dict[AssetKey, list]:
    """Each warehouse asset's table schema(s), as its function (or an external table's writer) builds them."""
    schemas: dict[AssetKey, list] = {key: [] for key in graph.get_all_asset_keys()}
    read = set()  # a multi-asset's function is read once for all its outputs
    for key in schemas:
        node = graph.get(key)
        if not node.is_materializable:
            writer = EXTERNAL_WRITERS.get(key)
            schemas[key] += [schema for _, schema in built_schemas(writer)] if writer else []
        elif id(node.assets_def) not in read:
            read.add(id(node.assets_def))
            assets_def = node.assets_def
            for output, schema in built_schemas(assets_def.op.compute_fn.decorated_fn):
                schemas[assets_def.keys_by_output_name[output] if output else assets_def.key].append(schema)
    return schemas


def column_problems(definitions: Definitions) -> list[str]:
    """What is wrong with the declared columns of every asset of ``definitions``; empty when nothing is."""
    graph = definitions.resolve_asset_graph()
    builders = table_builders(graph)
    problems = []
    for key in sorted(graph.get_all_asset_keys()):
        node, name = graph.get(key), key.to_user_string()
        declared = declared_columns(node)
        if declared is None:
            problems.append(f"{name}: declares no {COLUMN_SCHEMA} (metadata=table_columns(SCHEMA))")
            continue
        for column in declared.columns:
            if not (column.description or "").strip() or column.description.strip() == column.name:
                problems.append(f"{name}: column {column.name} has no description")
            if not column.type:
                problems.append(f"{name}: column {column.name} has no type")
        built = builders.get(key, [])
        if len(built) != 1:
            problems.append(f"{name}: {len(built)} table builder calls found, expected 1")
            continue
        schema = built[0]
        written = result_frame([], schema, Provenance("run", "v"), node.metadata.get("partition_expr")).schema
        if [(c.name, c.type) for c in declared.columns] != [(n, str(t)) for n, t in written.items()]:
            problems.append(
                f"{name}: declares {[(c.name, c.type) for c in declared.columns]}, "
                f"its builder writes {[(n, str(t)) for n, t in written.items()]}"
            )
        elif not isinstance(schema, Columns):
            problems.append(
                f"{name}: its schema is a plain dict; build it with columns(...), with descriptions"
            )
        elif declared != table_columns(schema)[COLUMN_SCHEMA]:
            problems.append(f"{name}: declared descriptions differ from its schema's (use table_columns)")
    return problems


def test_every_warehouse_table_declares_the_columns_it_writes_with_descriptions():
    assert column_problems(defs) == []


def test_the_check_covers_every_kind_of_asset():
    graph = defs.resolve_asset_graph()
    builders = table_builders(graph)
    nodes = [graph.get(k) for k in graph.get_all_asset_keys()]
    covered = {
        n.key.to_user_string() for n in nodes if len(builders[n.key]) == 1 and declared_columns(n) is not None
    }
    assert len(covered) == len(nodes)
    # Unpartitioned (a board table and a report), multi-asset outputs, a multi-partitioned table, and the
    # external tables people write with the CLI.
    assert {"agents/board_turns", "primary/judging/judging_summary"} <= covered
    assert {"primary/agents/lora_adapters", "primary/agents/training_loss"} <= covered
    assert {"primary/elicitation/icm_labels", "primary/elicitation/icm_search_trace"} <= covered
    assert "primary/alignment/agent_opinions" in covered
    assert {"traits/question_reviews", "votes/question_reviews"} <= covered
    multi = [n for n in nodes if n.is_materializable and len(n.assets_def.keys) > 1]
    assert {n.key.to_user_string() for n in multi} >= {
        "primary/agents/lora_adapters",
        "primary/elicitation/icm_labels",
    }
    assert any(n.partitions_def is None and n.is_materializable for n in nodes)


def test_declared_columns_start_with_row_id_and_end_with_the_provenance_columns():
    graph = defs.resolve_asset_graph()
    provenance = list(PROVENANCE_SCHEMA)
    described = {**ROW_ID.descriptions, **PROVENANCE_SCHEMA.descriptions}  # once, in provenance.py
    for key in graph.get_all_asset_keys():
        declared = declared_columns(graph.get(key)).columns
        assert declared[0].name == "row_id", key
        assert [c.name for c in declared[-len(provenance) :]] == provenance, key
        assert {c.name: c.description for c in declared if c.name in described} == described, key


# A small graph with the mistakes the check must catch.
GOOD = columns(("share", pl.Float64, "the share of answers"))
OTHER = columns(("share", pl.Float64, "the share of answers"), ("extra", pl.Int64, "an extra column"))
PLAIN = {"share": pl.Float64}


def _bad_definitions() -> Definitions:
    @asset(key=["demo", "undeclared"])
    def undeclared(context):
        return asset_frame(context, [], GOOD)  # never run: the check reads the functions

    @asset(key=["demo", "drifted"], metadata=table_columns(GOOD))
    def drifted(context):
        return asset_frame(context, [], OTHER)

    undescribed = TableSchema(columns=[TableColumn("row_id", "String"), TableColumn("share", "Float64")])

    @asset(key=["demo", "undescribed"], metadata={COLUMN_SCHEMA: undescribed})
    def undescribed_table(context):
        return asset_frame(context, [], GOOD)

    @multi_asset(
        outs={
            "fine": AssetOut(key=["demo", "fine"], metadata=table_columns(GOOD)),
            "swapped": AssetOut(key=["demo", "swapped"], metadata=table_columns(GOOD)),
        }
    )
    def outputs(context):
        with model_step(context, None) as step:
            yield Output(step.frame([], GOOD, "fine"), "fine")
            yield Output(step.frame([], OTHER, "swapped"), "swapped")

    @asset(key=["demo", "plain"], metadata=table_columns(GOOD))
    def plain(context):
        return asset_frame(context, [], PLAIN)

    spec = AssetSpec(["demo", "external"])
    return Definitions(assets=[undeclared, drifted, undescribed_table, outputs, plain, spec])


def test_the_check_catches_missing_undescribed_and_drifted_columns():
    problems = "\n".join(column_problems(_bad_definitions()))
    assert "demo/undeclared: declares no dagster/column_schema" in problems
    assert "demo/external: declares no dagster/column_schema" in problems
    assert "demo/drifted: declares" in problems and "its builder writes" in problems
    assert "demo/undescribed: column row_id has no description" in problems
    assert "demo/swapped: declares" in problems
    assert "demo/plain: its schema is a plain dict" in problems
    assert "demo/fine" not in problems


def test_columns_are_a_plain_schema_with_descriptions():
    schema = columns(("a", pl.String, "first  column\n"), columns(("b", pl.List(pl.Int64), "second")))
    assert schema == {"a": pl.String, "b": pl.List(pl.Int64)} and list(schema) == ["a", "b"]
    assert schema.descriptions == {"a": "first column", "b": "second"}
    assert pl.DataFrame([{"a": "x", "b": [1]}], schema=schema).schema == {
        "a": pl.String,
        "b": pl.List(pl.Int64),
    }
    frame = result_frame([{"row_id": "1", "a": "x", "b": [1], "input_ids": []}], schema, Provenance("r", "v"))
    assert frame.columns == ["row_id", "a", "b", *PROVENANCE_SCHEMA]
    assert [c.name for c in table_columns(schema)[COLUMN_SCHEMA].columns] == frame.columns
    assert [c.type for c in table_columns(schema)[COLUMN_SCHEMA].columns][:3] == [
        "String",
        "String",
        "List(Int64)",
    ]
    with pytest.raises(ValueError, match="'a' is declared twice"):
        columns(("a", pl.String, "one"), ("a", pl.Int64, "two"))
    with pytest.raises(ValueError, match="'a' has no description"):
        columns(("a", pl.String, " "))
    with pytest.raises(TypeError, match="no descriptions"):
        columns({"a": pl.String})


def test_review_rows_are_written_with_the_declared_schema():
    assert [schema for _, schema in built_schemas(run_review)] == [REVIEW_SCHEMA]


def test_the_catalogue_lists_each_table_s_own_columns_and_describes_the_provenance_columns_once():
    text = catalogue_markdown(defs)
    merged = "| `{experiment}__agents.merged_models` |"  # every experiment's, listed once
    row = next(line for line in text.splitlines() if line.startswith(merged))
    assert "`max_logit_difference` (Float64): largest absolute logit difference" in row
    assert f"provenance: {', '.join(f'`{c}`' for c in [*ROW_ID, *PROVENANCE_SCHEMA])} |" in row
    for name, description in {**ROW_ID.descriptions, **PROVENANCE_SCHEMA.descriptions}.items():
        assert text.count(description) == 1 and f"- `{name}`: {description}" in text


def test_a_bar_in_a_description_does_not_end_its_catalogue_cell():
    @asset(key=["demo", "bars"], metadata=table_columns(columns(("key", pl.String, "agent|country"))))
    def bars():
        return None

    text = catalogue_markdown(Definitions(assets=[bars]))
    assert "`key` (String): agent\\|country; provenance:" in text
