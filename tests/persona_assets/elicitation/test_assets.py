"""The asset graph materialized in-process on the sample, with the real warehouse and tiny model."""

from pathlib import Path

import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance, materialize

from persona_platform.partitions import COUNTRIES
from persona_platform.persona_assets.definitions import ALL_ASSETS
from persona_platform.persona_assets.runner import RANGE_END, RANGE_START
from persona_platform.resources.llm.resource import LLMResource
from persona_platform.resources.settings import DATA_DIR
from persona_platform.resources.warehouse import Warehouse, table_location
from tests.conftest import local_resources

ZERO_SHOT = AssetKey(["primary", "elicitation", "zero_shot_base_predictions"])


@pytest.fixture(scope="module")
def warehouse_path(tmp_path_factory):
    return tmp_path_factory.mktemp("warehouse") / "w.duckdb"  # where local_resources puts it


@pytest.fixture(scope="module")
def resources(warehouse_path, models_dir):
    # Its own engine key (batch size), so this module sees the load even if other tests loaded the model.
    llm = LLMResource(
        models_dir=str(models_dir),
        corpus_dir=str(DATA_DIR),
        device="cpu",
        dtype="float32",
        max_batch_tokens=8191,
    )
    return local_resources(warehouse_path.parent, llm)


SMALL_ICM = {
    "ops": {
        "primary__icm_search": {"config": {"iterations": 8, "variants": ["binary"], "checkpoint_every": 4}},
        "primary__elicitation__few_shot_predictions": {"config": {"repeats": 2, "example_counts": [4]}},
    }
}


def assets():
    return ALL_ASSETS


def materialization(result, key):
    return next(e for e in result.get_asset_materialization_events() if e.asset_key == key)


@pytest.fixture(scope="module")
def first_runs(resources):
    instance = DagsterInstance.ephemeral()
    questions = materialize(
        assets(), resources=resources, instance=instance, selection=[AssetKey(["opinions", "goqa_questions"])]
    )
    countries = materialize(
        assets(),
        resources=resources,
        instance=instance,
        selection='(group:opinions and not key:"opinions/goqa_questions") or key:"primary/elicitation/*"',
        tags={RANGE_START: COUNTRIES[0], RANGE_END: COUNTRIES[2]},
        run_config=SMALL_ICM,
    )
    return questions, countries


def test_a_range_of_countries_is_one_run_with_one_model_load(first_runs, resources):
    _, countries = first_runs
    assert countries.success
    # One event per partition; one step may make several assets (ICM labels and trace): count steps.
    by_step = {e.step_key: e.materialization.metadata for e in countries.get_asset_materialization_events()}
    engine_events = [m for m in by_step.values() if "engine/model_loads" in m]
    assert len(engine_events) == 4  # ICM search, zero-shot base, zero-shot chat, few-shot
    loaded = [m["engine/model_loaded"].value for m in engine_events]
    assert sorted(loaded) == ["earlier in this process"] * 3 + ["in this step"]
    assert all(m["engine/requests"].value > 0 for m in engine_events)
    # Steps that loop over countries report each country's own usage; the others the whole step's.
    scopes = {step: m["engine/usage_of"].value for step, m in by_step.items() if "engine/usage_of" in m}
    assert scopes["primary__icm_search"] == "this partition" and scopes[
        "primary__elicitation__zero_shot_base_predictions"
    ].startswith("the whole step (3 partitions)")
    # Another run in the same process reuses the loaded model.
    again = materialize(
        assets(),
        resources=resources,
        selection=[ZERO_SHOT],
        partition_key=COUNTRIES[3],
        instance=DagsterInstance.ephemeral(),
    )
    metadata = materialization(again, ZERO_SHOT).materialization.metadata
    assert metadata["engine/model_loads"].value == 0
    assert metadata["engine/model_loaded"].value == "earlier in this process"


def test_each_partition_of_a_range_reports_its_own_row_count(first_runs, warehouse_path):
    _, countries = first_runs
    for path in (["opinions", "goqa_survey"], ["opinions", "goqa_claims"], ZERO_SHOT.path):
        table = Warehouse(str(warehouse_path)).read(*table_location(path))
        events = [e for e in countries.get_asset_materialization_events() if e.asset_key == AssetKey(path)]
        counts = {e.partition: e.materialization.metadata["dagster/row_count"].value for e in events}
        assert counts == {c: table.filter(pl.col("country") == c).height for c in COUNTRIES[:3]}, path
        assert sum(counts.values()) == table.height


def test_tables_hold_the_chosen_countries_with_provenance(first_runs, warehouse_path):
    wh = Warehouse(warehouse_path)
    chosen = set(COUNTRIES[:3])
    for table in ("goqa_survey", "goqa_claims", "goqa_splits"):
        frame = wh.read("opinions", table)
        assert set(frame["country"]) == chosen
        assert frame["row_id"].n_unique() == frame.height
        assert frame["run_id"].null_count() == 0 and frame["code_version"].null_count() == 0
        assert all(len(ids) > 0 for ids in frame["input_ids"])
    predictions = wh.read("primary__elicitation", "zero_shot_base_predictions")
    assert set(predictions["country"]) <= chosen | {COUNTRIES[3]}
    assert predictions["model_id"].unique().to_list() == ["tiny"]
    assert predictions["prompt_hash"].null_count() == 0


def test_predictions_cover_every_test_claim_once_per_variant(first_runs, warehouse_path):
    wh = Warehouse(warehouse_path)
    splits = wh.read("opinions", "goqa_splits").filter(pl.col("split") == "test")
    predictions = wh.read("primary__elicitation", "zero_shot_base_predictions")
    for country in COUNTRIES[:3]:
        expected = (
            splits.filter(pl.col("country") == country)
            .select("variant", "claim_id")
            .sort("variant", "claim_id")
        )
        got = (
            predictions.filter(pl.col("country") == country)
            .select("variant", "claim_id")
            .sort("variant", "claim_id")
        )
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


def test_icm_search_writes_labels_trace_and_plots(first_runs, warehouse_path):
    _, countries = first_runs
    labels = Warehouse(warehouse_path).read("primary__elicitation", "icm_labels")
    splits = Warehouse(warehouse_path).read("opinions", "goqa_splits")
    train = splits.filter((pl.col("split") == "train") & (pl.col("variant") == "binary"))
    assert labels.height == train.height and set(labels["variant"]) == {"binary"}
    assert labels["icm_label"].drop_nulls().is_in([0, 1]).all()
    trace = Warehouse(warehouse_path).read("primary__elicitation", "icm_search_trace")
    assert trace.group_by("country").len().sort("country")["len"].to_list() == [8, 8, 8]
    # Each country's materialization carries its own plot and row count, not the range's.
    for event in countries.get_asset_materialization_events():
        if event.asset_key == AssetKey(["primary", "elicitation", "icm_search_trace"]):
            metadata = event.materialization.metadata
            plots = {k: v.value for k, v in metadata.items() if k.startswith("plot/")}
            assert list(plots) == ["plot/binary"] and plots["plot/binary"].endswith(
                f"{event.partition}-binary.png"
            )
            assert Path(plots["plot/binary"]).is_file()
            assert metadata["dagster/row_count"].value == 8
    predictions = Warehouse(warehouse_path).read("primary__elicitation", "few_shot_predictions")
    assert set(predictions["method"]) == {"gold", "icm", "random_matched"}


def test_accuracy_summary_has_every_country_the_aggregate_and_plots(first_runs, resources, warehouse_path):
    result = materialize(
        assets(),
        resources=resources,
        selection=[AssetKey(["primary", "elicitation", "accuracy_summary"])],
        instance=DagsterInstance.ephemeral(),
    )
    summary = Warehouse(warehouse_path).read("primary__elicitation", "accuracy_summary")
    assert set(summary["scope"]) >= {*COUNTRIES[:3], "aggregate"}
    headline = summary.filter(pl.col("headline") & (pl.col("scope") == "aggregate"))
    # No instruction model is configured: the chat-template baseline is the base model and says so.
    assert set(headline["method"]) == {
        "zero_shot_base",
        "zero_shot_base_chat_template",
        "icm",
        "gold",
        "random_matched",
    }
    assert ((summary["ci_low"] <= summary["mean"]) & (summary["mean"] <= summary["ci_high"])).all()
    assert (summary["n_questions"] * 2 == summary["n_test"]).all() and summary["interval"].str.contains(
        "bootstrap"
    ).all()
    metadata = materialization(
        result, AssetKey(["primary", "elicitation", "accuracy_summary"])
    ).materialization.metadata
    for scope in (*COUNTRIES[:3], "aggregate"):
        for kind in ("accuracy", "examples"):
            assert Path(metadata[f"plot/{scope}-binary-{kind}"].value).is_file()
    headline = metadata["headline"].value
    assert {c.name for c in headline.schema.columns} >= {"method", "mean", "ci_low", "ci_high", "n_questions"}
    assert all(c.description for c in headline.schema.columns)
    # The embedded model has no signal: the verdict says why every method scores alike.
    assert metadata["verdict"].value.startswith("all 5 methods") and "no signal" in metadata["verdict"].value


def test_method_differences_are_paired_on_the_same_questions(first_runs, resources, warehouse_path):
    result = materialize(
        assets(),
        resources=resources,
        selection=[AssetKey(["primary", "elicitation", "method_differences"])],
        instance=DagsterInstance.ephemeral(),
    )
    assert result.success
    differences = Warehouse(warehouse_path).read("primary__elicitation", "method_differences")
    summary = Warehouse(warehouse_path).read("primary__elicitation", "accuracy_summary")
    assert set(differences["comparison"]) == {"icm − gold", "icm − zero_shot_base", "gold − random_matched"}
    assert set(differences["scope"]) >= {*COUNTRIES[:3], "aggregate"}
    for row in differences.filter(pl.col("scope") != "aggregate").iter_rows(named=True):
        means = {
            r["method"]: r["mean"]
            for r in summary.filter(
                (pl.col("scope") == row["scope"]) & pl.col("headline") & (pl.col("variant") == row["variant"])
            ).iter_rows(named=True)
        }
        assert row["mean_difference"] == pytest.approx(means[row["method_a"]] - means[row["method_b"]])
        assert row["n_questions"] > 0 and 0 <= row["p_value"] <= 1
    metadata = materialization(
        result, AssetKey(["primary", "elicitation", "method_differences"])
    ).materialization.metadata
    assert len(metadata["differences"].value.records) == differences.height
