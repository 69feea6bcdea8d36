"""The Dagster UI for real: `persona ui` (`dg dev`: webserver and daemon) on loopback, driven over GraphQL."""

from pathlib import Path

import duckdb
import pytest

from tests.conftest import graphql, wait_for_run

pytestmark = pytest.mark.slow
LOCATION = "persona_platform"
SURVEY = ["opinions", "goqa_survey"]


def launch(
    port: int,
    partition: str,
    job: str = "opinions_job",
    assets: tuple[list[str], ...] = (SURVEY,),
    run_config: dict | None = None,
) -> str:
    launched = graphql(
        port,
        """
        mutation Launch($params: ExecutionParams!) {
          launchRun(executionParams: $params) {
            __typename
            ... on LaunchRunSuccess { run { runId } }
            ... on PythonError { message }
            ... on RunConfigValidationInvalid { errors { message } }
          }
        }""",
        {
            "params": {
                "selector": {
                    "repositoryLocationName": LOCATION,
                    "repositoryName": "__repository__",
                    "jobName": job,
                    "assetSelection": [{"path": path} for path in assets],
                },
                "runConfigData": run_config or {},
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
            }
        },
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def test_launch_a_partition_over_graphql_and_read_metadata_and_lineage(ui, tmp_path):
    # Started through `dg dev`: `dagster dev` would have printed Dagster's "Use 'dg dev' instead" warning.
    assert "SupersessionWarning" not in (tmp_path / "ui.log").read_text()
    run_id = launch(ui, "Caldera")
    status = wait_for_run(ui, run_id)
    assert status == "SUCCESS"
    asset = graphql(
        ui,
        """
        query($key: AssetKeyInput!) {
          assetOrError(assetKey: $key) { ... on Asset {
            assetMaterializations(limit: 1) {
              runId partition metadataEntries { label ... on IntMetadataEntry { intValue } }
            }
          } }
        }""",
        {"key": {"path": SURVEY}},
    )["assetOrError"]
    materialization = asset["assetMaterializations"][0]
    assert materialization["runId"] == run_id and materialization["partition"] == "Caldera"
    counts = {e["label"]: e.get("intValue") for e in materialization["metadataEntries"]}
    assert counts["dagster/row_count"] == 32
    nodes = graphql(
        ui,
        """
        query($keys: [AssetKeyInput!]) {
          assetNodes(assetKeys: $keys) {
            dependencyKeys { path } dependedByKeys { path } partitionDefinition { description }
          }
        }""",
        {"keys": [{"path": SURVEY}]},
    )["assetNodes"][0]
    assert ["opinions", "goqa_claims"] in [k["path"] for k in nodes["dependedByKeys"]]
    assert ["primary", "alignment", "agent_opinions"] in [k["path"] for k in nodes["dependedByKeys"]]
    assert "Caldera" in nodes["partitionDefinition"]["description"]


def test_two_runs_launched_at_once_both_complete_one_at_a_time_in_the_warehouse_pool(ui, tmp_path):
    runs = [launch(ui, "Aldoria"), launch(ui, "Borvania")]
    assert [wait_for_run(ui, r) for r in runs] == ["SUCCESS", "SUCCESS"]
    times = [
        graphql(
            ui, "query($id: ID!) { runOrError(runId: $id) { ... on Run { startTime endTime } } }", {"id": r}
        )["runOrError"]
        for r in runs
    ]
    first, second = sorted(times, key=lambda t: t["startTime"])
    assert second["startTime"] >= first["endTime"]  # the pool "warehouse" (limit 1) held the second run back
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        counts = dict(
            con.execute("select country, count(*) from opinions.goqa_survey group by all").fetchall()
        )
    assert counts == {"Aldoria": 32, "Borvania": 32}


def test_lora_training_in_two_processes_launched_from_the_ui_writes_the_adapter_tables(ui, tmp_path):
    """The UI's launch of lora_training with `processes: 2`: torchrun's two ranks train the agent's adapter
    inside the run, and the step writes the adapter and loss tables as a one-process run does."""
    agent = "marisolvega"
    corpus = (["agents", "board_turns"], ["agents", "training_conversations"])
    assert wait_for_run(ui, launch(ui, agent, "agents_job", corpus)) == "SUCCESS"
    settings = {"processes": 2, "epochs": 1, "batch_size": 2, "max_length": 128, "learning_rate": 0.003}
    run_id = launch(
        ui,
        agent,
        "primary_by_agent_job",
        (["primary", "agents", "lora_adapters"], ["primary", "agents", "training_loss"]),
        {"ops": {"primary__lora_training": {"config": settings}}},
    )
    assert wait_for_run(ui, run_id) == "SUCCESS"
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:  # the ui's home
        adapters = con.execute(
            "select agent, steps, adapter_path, run_id from primary__agents.lora_adapters"
        ).fetchall()
        losses = con.execute("select count(*) from primary__agents.training_loss").fetchone()[0]
    assert [(a, r) for a, _, _, r in adapters] == [(agent, run_id)]
    (_, steps, adapter_path, _) = adapters[0]
    assert steps > 0 and losses > 0 and (Path(adapter_path) / "adapter_model.safetensors").is_file()
