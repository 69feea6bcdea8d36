import ast
import os
import subprocess
import sys
from pathlib import Path

from dagster import MultiPartitionsDefinition

from persona_platform.persona_assets.definitions import defs
from persona_platform.persona_assets.experiments import experiments
from persona_platform.resources.warehouse import partition_columns

ROOT = Path(__file__).resolve().parents[2]
# An asset function states what it computes; rows, plots and metadata tables are built in its domain's
# modules.
MAX_ASSET_BODY_LINES = 30


def all_assets():
    graph = defs.resolve_asset_graph()
    return [graph.get(k) for k in graph.get_all_asset_keys()]


def test_every_asset_is_described_grouped_owned_and_typed():
    for node in all_assets():
        name = node.key.to_user_string()
        assert node.description, name
        assert node.group_name and node.group_name != "default", name
        assert node.owners, name
        assert node.kinds, name
        # External assets (people write them with the CLI) have no code of ours to version.
        assert node.code_version or not node.is_materializable, name
        experiment = [x.name for x in experiments()]
        assert len(node.key.path) == 2 or (len(node.key.path) == 3 and node.key.path[0] in experiment), (
            f"{name}: key must be [schema, table] or [experiment, schema, table]"
        )
        if len(node.key.path) == 3:  # an experiment's assets are its group, tagged with their domain
            assert node.group_name == node.key.path[0] and node.tags["persona/domain"] == node.key.path[1], (
                name
            )


def test_partitioned_assets_name_a_column_for_every_dimension():
    partitioned = [n for n in all_assets() if n.partitions_def is not None]
    assert partitioned
    for node in partitioned:
        columns = partition_columns(dict(node.metadata), node.partitions_def)
        if isinstance(node.partitions_def, MultiPartitionsDefinition):
            assert len(columns) == len(node.partitions_def.partitions_defs)
        assert node.backfill_policy is not None, node.key


def test_dagster_validates_the_workspace():
    dagster = Path(sys.executable).with_name("dagster")
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_asset_graph_matches_its_snapshot():
    # After an intended change to assets, checks, jobs, schedules or sensors: python -m tests.graph_snapshot
    from tests.conftest import EXPERIMENTS
    from tests.graph_snapshot import SNAPSHOT

    # In its own process: with the repository's experiments, not the tests' one.
    result = subprocess.run(
        [sys.executable, "-m", "tests.graph_snapshot", "--print"],
        cwd=ROOT,
        env={**os.environ, "PERSONA_EXPERIMENTS": str(EXPERIMENTS)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == SNAPSHOT.read_text(), "the graph changed: run `python -m tests.graph_snapshot`"


def asset_body_lengths(path: Path) -> dict[str, int]:
    """Lines of each decorated function's body in an assets module (at module level or in a factory), its
    docstring left out."""
    lengths = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef) and node.decorator_list:
            body = node.body[1:] if ast.get_docstring(node) is not None else node.body
            lengths[node.name] = node.end_lineno - body[0].lineno + 1
    return lengths


def test_every_domain_has_one_assets_module_of_short_asset_functions():
    domains = [d for d in sorted((ROOT / "persona_assets").iterdir()) if (d / "definitions.py").exists()]
    assert {d.name for d in domains} >= {"opinions", "elicitation", "agents", "judging", "votes", "reports"}
    too_long = []
    for domain in domains:
        lengths = asset_body_lengths(domain / "assets.py")
        assert lengths, f"{domain.name}/assets.py defines no asset"
        too_long += [
            f"{domain.name}.{name}: {n} lines" for name, n in lengths.items() if n > MAX_ASSET_BODY_LINES
        ]
    assert too_long == []
