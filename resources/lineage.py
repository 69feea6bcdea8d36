"""The lineage view: every result row's inputs as edges, and a table macro that walks them.

``lineage.edges``: one row per (table, row, input reference) over every warehouse
table that carries provenance, with the step's run, model, adapter, prompt hash and
code version. ``lineage.chain(table, row_id)``: everything reachable from one row,
down to ``file:<sha256>:<row>`` references of source files.

Both live in the warehouse's own catalog, in the DuckDB file or in the DuckLake (which
stores views and macros in its PostgreSQL catalog). Their table references are
unqualified, so they resolve against the catalog in use: the warehouse ``USE``s it.
"""

from __future__ import annotations

import hashlib

import duckdb

PROVENANCE_COLUMNS = ("row_id", "input_ids", "run_id", "code_version", "model_id", "adapter", "prompt_hash")


def provenance_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    # Base tables of the warehouse only: registered frames, views and other attached catalogs
    # appear in duckdb_columns() too.
    rows = con.execute(
        "SELECT c.schema_name || '.' || c.table_name, list(c.column_name) FROM duckdb_columns() c "
        "JOIN duckdb_tables() t ON t.table_oid = c.table_oid "
        "WHERE NOT t.temporary AND t.database_name = current_database() GROUP BY ALL ORDER BY 1"
    ).fetchall()
    return [table for table, columns in rows if set(PROVENANCE_COLUMNS) <= set(columns)]


# One string, line by line: its text is part of the view's fingerprint (refresh_lineage_view), so it must not
# change when its source is rewrapped.
CHAIN_MACRO = (
    "\n"
    "    CREATE OR REPLACE MACRO lineage.chain(start_table, start_row) AS TABLE\n"
    "    WITH RECURSIVE walk(table_name, row_id, input_ref, run_id, code_version, model_id, adapter, "
    "prompt_hash) AS (\n"
    "        SELECT table_name, row_id, input_ref, run_id, code_version, model_id, adapter, prompt_hash\n"
    "        FROM lineage.edges WHERE table_name = start_table AND row_id = start_row\n"
    "        UNION\n"
    "        SELECT e.table_name, e.row_id, e.input_ref, e.run_id, e.code_version, e.model_id, e.adapter, "
    "e.prompt_hash\n"
    "        FROM walk w JOIN lineage.edges e ON e.table_name || ':' || e.row_id = w.input_ref\n"
    "    )\n"
    "    SELECT * FROM walk\n"
)


def refresh_lineage_view(con: duckdb.DuckDBPyConnection) -> None:
    """Point ``lineage.edges`` at every provenance table; do nothing when it already does.

    The view is rewritten only when the set of tables changes. Under DuckLake two
    transactions that both replace the view conflict, so rewriting it on every write
    would make every pair of concurrent writers collide; when two writers do add
    tables at once, the loser retries and its view then covers both tables. The
    view's comment holds a fingerprint of its definition and the macro's, which is
    how "already does" is decided.
    """
    tables = provenance_tables(con)
    con.execute("CREATE SCHEMA IF NOT EXISTS lineage")
    if not tables:
        return
    parts = [
        f"SELECT '{t}' AS table_name, row_id, unnest(input_ids) AS input_ref, "
        f"run_id, code_version, model_id, adapter, prompt_hash FROM {t}"
        for t in tables
    ]
    view = "CREATE OR REPLACE VIEW lineage.edges AS " + " UNION ALL ".join(parts)
    fingerprint = "lineage " + hashlib.sha256((view + CHAIN_MACRO).encode()).hexdigest()[:16]
    current = con.execute(
        "SELECT comment FROM duckdb_views() WHERE database_name = current_database() "
        "AND schema_name = 'lineage' AND view_name = 'edges'"
    ).fetchone()
    if current and current[0] == fingerprint:
        return
    con.execute(view)
    con.execute(f"COMMENT ON VIEW lineage.edges IS '{fingerprint}'")
    con.execute(CHAIN_MACRO)
