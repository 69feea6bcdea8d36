"""The asset graph materialized in-process on the sample, with the real warehouse and tiny model."""

import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance, materialize

from partitions import COUNTRIES
from persona_assets.definitions import ALL_ASSETS
from persona_assets.runner import RANGE_END, RANGE_START
from persona_assets.settings import SAMPLE_GOQA_SOURCE
from resources.sources import GoqaSource
from resources.warehouse import Warehouse, WarehouseIOManager

ZERO_SHOT = AssetKey(["elicitation", "zero_shot_base_predictions"])


@pytest.fixture(scope="module")
def warehouse_path(tmp_path_factory):
    return tmp_path_factory.mktemp("warehouse") / "w.duckdb"


@pytest.fixture(scope="module")
def resources(warehouse_path, tiny_llm):
    return {
        "io_manager": WarehouseIOManager(database=str(warehouse_path)),
        "llm": tiny_llm,
        "goqa_source": GoqaSource(path=str(SAMPLE_GOQA_SOURCE)),
    }


def assets():
    return ALL_ASSETS


def materialization(result, key):
    return next(e for e in result.get_asset_materialization_events() if e.asset_key == key)


@pytest.fixture(scope="module")
def first_runs(resources):
    instance = DagsterInstance.ephemeral()
    questions = materialize(assets(), resources=resources, instance=instance,
                            selection=[AssetKey(["opinions", "goqa_questions"])])
    countries = materialize(
        assets(), resources=resources, instance=instance,
        selection='(group:opinions and not key:"opinions/goqa_questions") or group:elicitation',
        tags={RANGE_START: COUNTRIES[0], RANGE_END: COUNTRIES[2]},
    )
    return questions, countries


def test_a_range_of_countries_is_one_run_with_one_model_load(first_runs, resources):
    _, countries = first_runs
    assert countries.success
    metadata = materialization(countries, ZERO_SHOT).materialization.metadata
    assert metadata["engine/model_loads"].value == 1
    assert metadata["engine/requests"].value > 0
    # Another run in the same process reuses the loaded model.
    again = materialize(assets(), resources=resources, selection=[ZERO_SHOT], partition_key=COUNTRIES[3],
                        instance=DagsterInstance.ephemeral())
    assert materialization(again, ZERO_SHOT).materialization.metadata["engine/model_loads"].value == 0


def test_tables_hold_the_chosen_countries_with_provenance(first_runs, warehouse_path):
    wh = Warehouse(warehouse_path)
    chosen = set(COUNTRIES[:3])
    for table in ("goqa_survey", "goqa_claims", "goqa_splits"):
        frame = wh.read("opinions", table)
        assert set(frame["country"]) == chosen
        assert frame["row_id"].n_unique() == frame.height
        assert frame["run_id"].null_count() == 0 and frame["code_version"].null_count() == 0
        assert all(len(ids) > 0 for ids in frame["input_ids"])
    predictions = wh.read("elicitation", "zero_shot_base_predictions")
    assert set(predictions["country"]) <= chosen | {COUNTRIES[3]}
    assert predictions["model_id"].unique().to_list() == ["tiny"]
    assert predictions["prompt_hash"].null_count() == 0


def test_predictions_cover_every_test_claim_once_per_variant(first_runs, warehouse_path):
    wh = Warehouse(warehouse_path)
    splits = wh.read("opinions", "goqa_splits").filter(pl.col("split") == "test")
    predictions = wh.read("elicitation", "zero_shot_base_predictions")
    for country in COUNTRIES[:3]:
        expected = splits.filter(pl.col("country") == country).select("variant", "claim_id").sort("variant", "claim_id")
        got = predictions.filter(pl.col("country") == country).select("variant", "claim_id").sort("variant", "claim_id")
        assert expected.equals(got)
    correct = predictions["correct"] == (predictions["predicted_label"] == predictions["label"])
    assert correct.all()


def test_input_ids_point_at_existing_rows(first_runs, warehouse_path):
    wh = Warehouse(warehouse_path)
    claims = set(wh.read("opinions", "goqa_claims")["row_id"])
    survey = set(wh.read("opinions", "goqa_survey")["row_id"])
    for ids in wh.read("opinions", "goqa_claims")["input_ids"]:
        assert all(ref.split(":", 1)[1] in survey for ref in ids)
    for ids in wh.read("opinions", "goqa_splits")["input_ids"]:
        assert ids[0].startswith("opinions.goqa_claims:") and ids[0].split(":", 1)[1] in claims
