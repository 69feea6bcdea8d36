"""The catalogue of assets and warehouse tables (docs/catalogue.md), generated from the code
location's Definitions.

    persona catalogue            # rewrite docs/catalogue.md after a change to the graph
    persona catalogue --check    # exit 1 when the committed file differs from what the command would write

An experiment's assets are written once, as ``{experiment}/<schema>/<table>`` in its schema
``{experiment}__<schema>``: every experiment has the same ones (experiments/*.yaml lists them), so the file
does not change with the experiments. Only what the definitions declare is written: partition keys are
data (countries come from the survey, agents from the registry), so the catalogue names each asset's
partitioning, not its keys, and it names columns only where an asset declares them in its definition.
Everything is sorted, and nothing depends on the settings, the machine or the date, so the file changes
exactly when the graph does.
"""

from __future__ import annotations

import re
from collections import defaultdict

from dagster import AssetKey, Definitions, TableSchema

from persona_platform.partitions import partitioning
from persona_platform.persona_assets.provenance import PROVENANCE_SCHEMA, ROW_ID
from persona_platform.resources.settings import PROJECT_ROOT
from persona_platform.resources.warehouse import partition_columns, table_location

CATALOGUE = PROJECT_ROOT / "docs" / "catalogue.md"
COMMAND = "persona catalogue"
PARTITIONS = {
    "unpartitioned": "none",
    "country": "countries",
    "agent": "agents",
    "agent_country": "agent x country",
}
COLUMN_SCHEMA = "dagster/column_schema"
# The columns result_frame adds to every table, described once (in provenance.py) and so once here.
STANDARD_COLUMNS = {**ROW_ID.descriptions, **PROVENANCE_SCHEMA.descriptions}


def catalogue_path() -> str:
    return CATALOGUE.relative_to(PROJECT_ROOT).as_posix()


def summary(text: str | None) -> str:
    """A description's first paragraph on one line."""
    if not text or not text.strip():
        return "(no description)"
    return " ".join(text.strip().split("\n\n")[0].split())


# Stands for any experiment's name in the keys and tables of its assets.
EXPERIMENT = "{experiment}"
EACH_EXPERIMENT = "each experiment"


def generic(key: AssetKey) -> AssetKey:
    """An experiment's asset key with the experiment left open; any other key as it is."""
    return AssetKey([EXPERIMENT, *key.path[1:]]) if len(key.path) == 3 else key


def _name(key: AssetKey) -> str:
    return generic(key).to_user_string()


def _group(node) -> str:
    return EACH_EXPERIMENT if len(node.key.path) == 3 else node.group_name


def _group_anchor(group: str) -> str:
    return group.replace(" ", "-")


def _anchor(key: AssetKey) -> str:
    """GitHub's anchor of the asset's heading (lower case; '/' and backticks dropped)."""
    return re.sub(r"[^a-z0-9_-]", "", _name(key).lower())


def _links(keys) -> str:
    unique = sorted({generic(k) for k in keys})
    return ", ".join(f"[`{_name(k)}`](#{_anchor(k)})" for k in unique) or "none"


def _code(node) -> str | None:
    """Where the asset's function lives (dotted, so the same on every machine); None for an external asset."""
    if not node.is_materializable:
        return None
    fn = getattr(node.assets_def.op.compute_fn, "decorated_fn", None)
    if fn is None:
        return node.assets_def.op.name
    return f"{fn.__module__}.{fn.__qualname__.split('.<locals>')[0]}"  # a factory's asset: the factory


def _declared_columns(node) -> TableSchema | None:
    schema = node.metadata.get(COLUMN_SCHEMA)
    return getattr(schema, "schema", schema) if schema is not None else None


def _cell(text: str) -> str:
    """Text inside a markdown table cell: a '|' would end the cell."""
    return text.replace("|", "\\|")


def _column_text(column) -> str:
    text = f"`{column.name}` ({column.type})"
    return f"{text}: {summary(column.description)}" if column.description else text


def _is_standard(column) -> bool:
    return column.name in STANDARD_COLUMNS and STANDARD_COLUMNS[column.name] == column.description


def _asset_section(graph, node) -> list[str]:
    key = node.key
    lines = [f"### `{_name(key)}`", "", summary(node.description), ""]
    if not node.is_materializable:
        lines.append(
            "- external: written outside Dagster runs (see the description), never materialized by a run"
        )
    lines.append(f"- partitions: {PARTITIONS[partitioning(node.partitions_def)]}")
    lines.append(f"- kinds: {', '.join(sorted(node.kinds)) or 'none'}")
    if node.code_version and len(key.path) == 3:  # the code's version + the experiment's file version
        lines.append(f"- code version: `{node.code_version.split('+')[0]}` + the experiment file's version")
    else:
        version = f"`{node.code_version}`" if node.code_version else "none"
        lines.append(f"- code version: {version}")
    if node.pools:
        lines.append(f"- pool: {', '.join(sorted(node.pools))}")
    lines.append(f"- upstream: {_links(node.parent_keys)}")
    lines.append(f"- downstream: {_links(node.child_keys)}")
    checks = sorted(node.check_keys, key=lambda c: c.name)
    if checks:
        lines.append("- checks:")
        for check_key in checks:
            spec = graph.get_check_spec(check_key)
            blocking = " (blocking)" if spec.blocking else ""
            lines.append(f"  - `{check_key.name}`{blocking}: {summary(spec.description)}")
    else:
        lines.append("- checks: none")
    schema, table = table_location(generic(key).path)
    lines.append(f"- table: `{schema}.{table}`")
    code = _code(node)
    if code:
        lines.append(f"- code: `{code}`")
    return [*lines, ""]


def _columns_text(node) -> str:
    """The columns an asset declares, each with its description's summary, the provenance columns (described
    once, below the table) by name only; 'not declared' without them."""
    columns = _declared_columns(node)
    if columns is None:
        return "not declared"
    own = [_column_text(c) for c in columns.columns if not _is_standard(c)]
    standard = [f"`{c.name}`" for c in columns.columns if _is_standard(c)]
    if standard:
        own.append(f"provenance: {', '.join(standard)}")
    return _cell("; ".join(own))


def _table_rows(nodes) -> tuple[list[str], list[str]]:
    """The table of tables: its header lines and rows; a columns column only when some asset declares them."""
    declared = any(_declared_columns(node) is not None for node in nodes)
    header = [
        "| table | asset | partitions | partition columns |" + (" columns |" if declared else ""),
        "|---|---|---|---|" + ("---|" if declared else ""),
    ]
    rows = []
    for node in sorted(nodes, key=lambda n: table_location(generic(n.key).path)):
        schema, table = table_location(generic(node.key).path)
        partition_cols = (
            ", ".join(f"`{c}`" for c in partition_columns(dict(node.metadata), node.partitions_def)) or "—"
        )
        row = (
            f"| `{schema}.{table}` | [`{_name(node.key)}`](#{_anchor(node.key)}) | "
            f"{PARTITIONS[partitioning(node.partitions_def)]} | {partition_cols} |"
        )
        if declared:
            row += f" {_columns_text(node)} |"
        rows.append(row)
    return header, rows


def catalogue_markdown(defs: Definitions) -> str:
    """The catalogue of every asset (by group) and every warehouse table the definitions declare."""
    graph = defs.resolve_asset_graph()
    keys = sorted(graph.get_all_asset_keys())
    first = min((k.path[0] for k in keys if len(k.path) == 3), default=None)  # stands for every experiment
    nodes = [graph.get(key) for key in keys if len(key.path) == 2 or key.path[0] == first]
    groups: dict[str, list] = defaultdict(list)
    for node in nodes:
        groups[_group(node)].append(node)
    n_checks = sum(len(node.check_keys) for node in nodes)
    external = sum(not node.is_materializable for node in nodes)

    out = [
        "<!-- Generated from the code location's Definitions by `persona catalogue`: "
        "do not edit by hand. -->",
        "",
        "# Catalogue of assets and tables",
        "",
        f"Generated by `{COMMAND}` from `persona_platform.persona_assets.definitions.defs`; "
        "run it after any change to the graph "
        f"(`{COMMAND} --check` and `tests/persona_assets/test_catalogue.py` fail while this file is stale). "
        f"{len(nodes)} assets ({external} external) in {len(groups)} groups, {n_checks} asset checks.",
        "",
        "Partitions are named, not listed: countries come from the survey source and agents from the "
        "registry, so the keys are data. An asset's key `schema/table` is its warehouse table "
        "`schema.table`. Every experiment (experiments/*.yaml, docs/experiments.md) has its own copy of the "
        f"model-dependent assets, listed once under [{EACH_EXPERIMENT}](#{_group_anchor(EACH_EXPERIMENT)}): "
        f"key `{EXPERIMENT}/schema/table`, table `{EXPERIMENT}__schema.table`.",
        "",
        "| group | assets |",
        "|---|---|",
    ]
    for group in sorted(groups):
        out.append(f"| [{group}](#{_group_anchor(group)}) | {_links(n.key for n in groups[group])} |")
    out.append("")
    for group in sorted(groups):
        out += [f"## {group}", ""]
        for node in groups[group]:
            out += _asset_section(graph, node)

    header, rows = _table_rows(nodes)
    declared = sum(_declared_columns(node) is not None for node in nodes)
    provenance = ", ".join(f"`{c}`" for c in STANDARD_COLUMNS)
    others = "" if declared == len(nodes) else "; the others' columns are known only once written"
    out += [
        "## Warehouse tables",
        "",
        "One table per asset (per experiment for an experiment's), in a schema per domain. "
        f"{declared} of {len(nodes)} assets declare their "
        f"columns in their definitions (`{COLUMN_SCHEMA}` definition metadata){others}. Each "
        f"materialization records `{COLUMN_SCHEMA}` and `dagster/row_count`, which the UI's asset page "
        "shows with the declared descriptions. The asset's code builds its frame from a polars schema "
        "through `persona_platform.persona_assets.provenance.result_frame`, which adds the provenance "
        f"columns {provenance}. Partition columns come from each asset's `partition_expr` metadata; a write "
        "replaces exactly its partitions' rows.",
        "",
        *header,
        *rows,
        "",
        "The provenance columns of every table:",
        "",
        *(f"- `{name}`: {description}" for name, description in STANDARD_COLUMNS.items()),
    ]
    return "\n".join(out) + "\n"
