"""`persona lineage`: the chain from one result row back to the rows of its source files."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import duckdb

from persona_platform.resources.inputs.errors import PersonaInputError


@dataclass
class Node:
    ref: str
    details: dict = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)


def source_files(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """sha256 -> path, from every table that records its source file."""
    tables = con.execute(
        "SELECT c.schema_name || '.' || c.table_name "
        "FROM duckdb_columns() c JOIN duckdb_tables() t ON t.table_oid = c.table_oid "
        "WHERE c.column_name IN ('source_file', 'source_sha256') AND NOT t.temporary "
        "GROUP BY ALL HAVING count(*) = 2"
    ).fetchall()
    files = {}
    for (table,) in tables:
        files.update(dict(con.execute(f"SELECT DISTINCT source_sha256, source_file FROM {table}").fetchall()))
    return files


def lineage_graph(con: duckdb.DuckDBPyConnection, table: str, row_id: str) -> dict[str, Node]:
    rows = con.execute("SELECT * FROM lineage.chain(?, ?)", [table, row_id]).fetchall()
    if not rows:
        exists = con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name || '.' || table_name = ?", [table]
        ).fetchone()[0]
        if not exists:
            raise PersonaInputError(f"no table {table} in the warehouse")
        raise PersonaInputError(f"{table} has no row {row_id!r} with recorded inputs")
    nodes: dict[str, Node] = {}
    for t, r, input_ref, run_id, code_version, model_id, adapter, prompt_hash in rows:
        node = nodes.setdefault(f"{t}:{r}", Node(f"{t}:{r}"))
        node.details = {
            "run": run_id,
            "code": code_version,
            "model": model_id,
            "adapter": adapter,
            "prompt": prompt_hash,
        }
        if input_ref not in node.inputs:
            node.inputs.append(input_ref)
    return nodes


def render(nodes: dict[str, Node], start: str, files: dict[str, str], max_inputs: int = 3) -> list[str]:
    lines: list[str] = []
    shown: set[str] = set()
    counts = defaultdict(int)

    def label(ref: str) -> str:
        if ref.startswith("file:"):
            _, sha, row = ref.split(":")
            return f"file {files.get(sha, '(unknown path)')} row {row} (sha256 {sha})"
        details = nodes[ref].details if ref in nodes else {}
        parts = [
            f"run {details['run'][:8]}" if details.get("run") else None,
            f"model {details['model']}" if details.get("model") else None,
            f"adapter {details['adapter']}" if details.get("adapter") else None,
            f"prompt {details['prompt']}" if details.get("prompt") else None,
            f"code {details['code']}" if details.get("code") else None,
        ]
        return f"{ref}  [{', '.join(p for p in parts if p)}]" if any(parts) else ref

    def visit(ref: str, prefix: str, last: bool, root: bool) -> None:
        connector = "" if root else ("└─ " if last else "├─ ")
        again = ref in shown and not ref.startswith("file:")
        lines.append(prefix + connector + label(ref) + ("  (inputs shown above)" if again else ""))
        counts["files" if ref.startswith("file:") else "rows"] += 1
        if again or ref not in nodes:
            return
        shown.add(ref)
        inputs = nodes[ref].inputs
        child_prefix = prefix + ("" if root else ("   " if last else "│  "))
        for i, child in enumerate(inputs[:max_inputs]):
            visit(child, child_prefix, i == len(inputs[:max_inputs]) - 1 and len(inputs) <= max_inputs, False)
        if len(inputs) > max_inputs:
            lines.append(
                child_prefix + f"└─ … and {len(inputs) - max_inputs} more inputs (--max-inputs to show them)"
            )

    visit(start, "", True, True)
    reachable_files = {n for node in nodes.values() for n in node.inputs if n.startswith("file:")}
    lines.append(f"\n{len(nodes)} rows in the chain, reaching {len(reachable_files)} source-file rows.")
    return lines
