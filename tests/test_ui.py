"""The Dagster UI for real: `persona ui` (dagster dev with its daemon) on loopback, driven over GraphQL."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.conftest import PERSONA

pytestmark = pytest.mark.slow
LOCATION = "persona_platform"
SURVEY = ["opinions", "goqa_survey"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = json.loads(response.read())
    assert "errors" not in payload, payload
    return payload["data"]


@pytest.fixture
def ui(tmp_path):
    port = free_port()
    log = (tmp_path / "ui.log").open("w")
    process = subprocess.Popen([PERSONA, "ui", "--port", str(port)], env={**os.environ, "PERSONA_HOME": str(tmp_path)},
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5):
                break
        except OSError:
            assert process.poll() is None, (tmp_path / "ui.log").read_text()
            time.sleep(1)
    else:
        pytest.fail("the webserver did not start: " + (tmp_path / "ui.log").read_text()[-2000:])
    yield port
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def test_launch_a_partition_over_graphql_and_read_metadata_and_lineage(ui):
    launched = graphql(ui, """
        mutation Launch($params: ExecutionParams!) {
          launchRun(executionParams: $params) {
            __typename
            ... on LaunchRunSuccess { run { runId } }
            ... on PythonError { message }
            ... on RunConfigValidationInvalid { errors { message } }
          }
        }""", {"params": {
            "selector": {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "jobName": "opinions_job",
                         "assetSelection": [{"path": SURVEY}]},
            "runConfigData": {},
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "Caldera"}]},
        }})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    status, deadline = None, time.monotonic() + 300
    while time.monotonic() < deadline:
        status = graphql(ui, "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    assert status == "SUCCESS"
    asset = graphql(ui, """
        query($key: AssetKeyInput!) {
          assetOrError(assetKey: $key) { ... on Asset {
            assetMaterializations(limit: 1) { runId partition metadataEntries { label ... on IntMetadataEntry { intValue } } }
          } }
        }""", {"key": {"path": SURVEY}})["assetOrError"]
    materialization = asset["assetMaterializations"][0]
    assert materialization["runId"] == run_id and materialization["partition"] == "Caldera"
    counts = {e["label"]: e.get("intValue") for e in materialization["metadataEntries"]}
    assert counts["dagster/row_count"] == 32
    nodes = graphql(ui, """
        query($keys: [AssetKeyInput!]) {
          assetNodes(assetKeys: $keys) { dependencyKeys { path } dependedByKeys { path } partitionDefinition { description } }
        }""", {"keys": [{"path": SURVEY}]})["assetNodes"][0]
    assert ["opinions", "goqa_claims"] in [k["path"] for k in nodes["dependedByKeys"]]
    assert ["alignment", "agent_opinions"] in [k["path"] for k in nodes["dependedByKeys"]]
    assert "Caldera" in nodes["partitionDefinition"]["description"]
