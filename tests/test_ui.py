"""The Dagster UI for real: `persona ui` (dagster dev with its daemon) on loopback, driven over GraphQL."""

import pytest

from tests.conftest import graphql, wait_for_run

pytestmark = pytest.mark.slow
LOCATION = "persona_platform"
SURVEY = ["opinions", "goqa_survey"]


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
    status = wait_for_run(ui, run_id)
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
