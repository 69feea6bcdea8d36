"""The dg CLI in the repository, configured by pyproject.toml's [tool.dg]: `dg check defs` loads the code
location, `dg list defs` lists what the Definitions hold. (`dg dev` is what `persona ui` runs: test_ui.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DG = Path(sys.executable).with_name("dg")


def run_dg(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(DG), *args],
        cwd=ROOT,
        env={**os.environ, "PERSONA_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, f"dg {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_dg_check_defs_loads_the_code_location(tmp_path):
    result = run_dg(tmp_path, "check", "defs")
    assert "All definitions loaded successfully." in result.stdout


@pytest.mark.slow
def test_dg_list_defs_lists_the_definitions(tmp_path):
    listed = json.loads(run_dg(tmp_path, "list", "defs", "--json").stdout)
    # The same environment as dg's (conftest drops every PERSONA_ setting), so the same Definitions.
    from persona_platform.persona_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    assert {a["asset_key"] for a in listed["assets"]} == {
        key.to_user_string() for key in graph.get_all_asset_keys()
    }
    assert {c["key"] for c in listed["asset_checks"]} == {
        f"{key.asset_key.to_user_string()}:{key.name}" for key in graph.asset_check_keys
    }
    assert {j["name"] for j in listed["jobs"]} == {job.name for job in defs.jobs}
    assert {s["name"] for s in listed["schedules"]} == {s.name for s in defs.schedules}
    assert {s["name"] for s in listed["sensors"]} == {s.name for s in defs.sensors}
