"""From ICM labels to trained personas: datasets per label source, country adapters (SFT and DPO), their
zero-shot predictions in accuracy_summary, and the country x country alignment with its check."""

import numpy as np
import polars as pl
import pytest
from dagster import AssetCheckSeverity, DagsterInstance, materialize

from persona_platform.partitions import COUNTRIES
from persona_platform.persona_assets.definitions import ALL_ASSETS
from persona_platform.persona_assets.elicitation.prompts import FALSE, TRUE, zero_shot_prompt
from persona_platform.persona_assets.finetune.checks import diagonal_result
from persona_platform.persona_assets.finetune.examples import dataset_rows, source_labels
from persona_platform.persona_assets.finetune.tables import diagonal_test
from persona_platform.persona_assets.runner import RANGE_END, RANGE_START
from persona_platform.resources.llm.resource import LLMResource
from persona_platform.resources.settings import DATA_DIR
from persona_platform.resources.warehouse import Warehouse
from tests.conftest import local_resources

COUNTRY_PAIR = COUNTRIES[:2]


def test_random_labels_are_wrong_as_often_as_icm_on_the_same_claims():
    icm = [1, 0, 0, 1, 1, 0, 1, 0]
    gold = [1, 0, 1, 1, 0, 0, 1, 1]
    labels = source_labels(icm, gold, "seed")
    assert labels["icm"] == icm and labels["gold"] == gold
    wrong = lambda ys: sum(y != g for y, g in zip(ys, gold, strict=True))  # noqa: E731
    assert wrong(labels["random"]) == wrong(icm) == 3
    assert labels["random"] != icm  # drawn, not copied (for this seed)
    assert source_labels(icm, gold, "seed") == labels  # reproducible


def labelled(rows):
    return pl.DataFrame(
        [
            {"row_id": f"all/{c}", "claim_id": c, "question_id": q, "question": f"Question {q}?", "option": o}
            | {"icm_label": i, "label": g, "position": n}
            for n, (c, q, o, i, g) in enumerate(rows)
        ]
    )


def test_sft_rows_state_each_sources_label_and_pairs_prefer_the_true_claim():
    claims = labelled(
        [("q1/A/Yes", "q1", "Yes", 1, 1), ("q1/A/No", "q1", "No", 0, 0), ("q2/A/Yes", "q2", "Yes", 1, 0)]
        + [("q2/A/No", "q2", "No", 0, 1)]
    )
    sft, pairs = dataset_rows(claims, "A", "all", seed=0)
    assert len(sft) == 3 * claims.height
    gold = [r for r in sft if r["labels"] == "gold"]
    assert [r["completion"] for r in gold] == [TRUE, FALSE, FALSE, TRUE]
    assert gold[0]["prompt"] == zero_shot_prompt("Question q1?", "Yes", "A")
    assert all("elicitation.icm_labels:all/" in r["input_ids"][1] for r in sft)
    icm_pairs = [p for p in pairs if p["labels"] == "icm"]
    assert [(p["chosen_claim_id"], p["rejected_claim_id"]) for p in icm_pairs] == [
        ("q1/A/Yes", "q1/A/No"),
        ("q2/A/Yes", "q2/A/No"),
    ]
    assert [p["chosen_is_gold"] for p in icm_pairs] == [True, False]
    for p in pairs:  # prompt + chosen is exactly the claim prompt the evaluation scores, then " True"
        option = p["chosen_claim_id"].split("/")[-1]
        question = f"Question {p['question_id']}?"
        assert p["prompt"] + p["chosen"] == zero_shot_prompt(question, option, "A") + TRUE


def test_a_planted_diagonal_stands_out_and_a_flat_matrix_does_not():
    rng = np.random.default_rng(0)
    planted = 0.6 + 0.02 * rng.random((5, 5)) + 0.2 * np.eye(5)
    result = diagonal_test(planted)
    assert result["own_first"] == 5 and result["p_value"] <= 1 / 120 + 1e-9  # exact: 5! pairings
    flat = diagonal_test(np.full((5, 5), 0.7))
    assert flat["p_value"] == 1.0 and flat["diagonal"] == pytest.approx(flat["off_diagonal"])
    assert diagonal_test(np.ones((1, 1)))["p_value"] is None


SMALL = {
    "primary__icm_search": {"config": {"iterations": 6, "variants": ["binary"], "checkpoint_every": 3}},
    "primary__elicitation__few_shot_predictions": {"config": {"repeats": 1, "example_counts": [4]}},
    "primary__country_adapters": {"config": {"learning_rate": 0.003, "epochs": 1, "max_length": 256}},
}


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, models_dir):
    """ICM labels, datasets, SFT adapters and everything they answer, for two countries; then the first
    country's adapters again with DPO."""
    home = tmp_path_factory.mktemp("finetune")
    # An engine of its own (its batch size is its key): training wraps the served model in its adapters.
    llm = LLMResource(
        models_dir=str(models_dir),
        corpus_dir=str(DATA_DIR),
        device="cpu",
        dtype="float32",
        max_batch_tokens=8190,
    )
    resources = local_resources(home, llm)
    instance = DagsterInstance.ephemeral()
    tags = {RANGE_START: COUNTRY_PAIR[0], RANGE_END: COUNTRY_PAIR[1]}
    materialize(ALL_ASSETS, resources=resources, instance=instance, selection='key:"opinions/goqa_questions"')
    result = materialize(
        ALL_ASSETS,
        resources=resources,
        instance=instance,
        selection='(group:opinions and not key:"opinions/goqa_questions") or key:"primary/elicitation/*" '
        'or key:"primary/finetune/*"',
        tags=tags,
        run_config={"ops": SMALL},
    )
    assert result.success
    dpo = {**SMALL["primary__country_adapters"]["config"], "objective": "dpo", "labels": ["icm"]}
    dpo_run = materialize(
        ALL_ASSETS,
        resources=resources,
        instance=instance,
        selection='key:"primary/finetune/country_adapters" or key:"primary/finetune/country_training_loss"',
        partition_key=COUNTRY_PAIR[0],
        run_config={"ops": {"primary__country_adapters": {"config": dpo}}},
    )
    return home, result, dpo_run


def read(home, schema, table):
    return Warehouse(str(home / "w.duckdb")).read(schema, table)


def test_each_country_has_an_adapter_per_label_source_trained_on_the_same_claims(finetuned):
    home, _, _ = finetuned
    sft = read(home, "primary__finetune", "sft_examples")
    per_source = sft.group_by("country", "labels").agg(pl.col("claim_id").sort())
    for country in COUNTRY_PAIR:
        claims = per_source.filter(pl.col("country") == country)["claim_id"].to_list()
        assert len(claims) == 3 and claims[0] == claims[1] == claims[2]  # icm, gold, random
    adapters = read(home, "primary__finetune", "country_adapters")
    assert adapters.filter(pl.col("country") == COUNTRY_PAIR[1]).height == 3
    assert adapters["steps"].min() > 0 and adapters["sha256"].n_unique() == adapters.height


def test_fine_tuned_methods_are_in_accuracy_summary_with_intervals_and_paired_differences(finetuned):
    home, _, _ = finetuned
    summary = read(home, "primary__elicitation", "accuracy_summary")
    fine = summary.filter(pl.col("method").str.starts_with("finetune_") & pl.col("headline"))
    assert set(fine["method"]) == {"finetune_icm", "finetune_gold", "finetune_random"}
    assert fine.filter(pl.col("scope") == "aggregate")["n_questions"].min() >= 2
    assert fine.filter(pl.col("scope") == "aggregate")["ci_low"].null_count() == 0
    differences = read(home, "primary__elicitation", "method_differences")
    headline = differences.filter(
        (pl.col("comparison") == "finetune_icm − finetune_gold") & (pl.col("scope") == "aggregate")
    )
    assert headline.height == 1 and headline["n_questions"][0] >= 2


def test_a_fine_tuned_prediction_cites_its_adapter_and_the_adapter_its_examples(finetuned):
    home, _, _ = finetuned
    predictions = read(home, "primary__finetune", "finetuned_predictions")
    # The second country: the first one's adapter rows are DPO's by the end of the fixture.
    of_second = predictions.filter(
        (pl.col("method") == "finetune_icm") & (pl.col("country") == COUNTRY_PAIR[1])
    )
    row = of_second.row(0, named=True)
    assert row["adapter"].startswith("country:") and row["model_id"] == "tiny"
    adapter_ref = next(r for r in row["input_ids"] if r.startswith("primary__finetune.country_adapters:"))
    adapters = read(home, "primary__finetune", "country_adapters")
    adapter = adapters.filter(pl.col("row_id") == adapter_ref.split(":", 1)[1]).row(0, named=True)
    assert adapter["labels"] == "icm"
    example_ids = [r.split(":", 1)[1] for r in adapter["input_ids"]]
    examples = read(home, "primary__finetune", "sft_examples").filter(pl.col("row_id").is_in(example_ids))
    assert examples.height == adapter["examples"] and set(examples["labels"]) == {"icm"}
    assert all(r[1].startswith("primary__elicitation.icm_labels:") for r in examples["input_ids"])


def test_the_alignment_matrix_has_every_pair_and_its_check_reports(finetuned):
    home, _, _ = finetuned
    alignment = read(home, "primary__finetune", "country_alignment")
    icm = alignment.filter((pl.col("labels") == "icm") & (pl.col("variant") == "binary"))
    assert icm.height == len(COUNTRY_PAIR) ** 2 and icm["questions"].min() > 0
    check = diagonal_result(alignment)  # what the check diagonal_stands_out reports
    assert check.severity == AssetCheckSeverity.WARN
    assert "matrices" in check.metadata["verdict"].value


def test_dpo_trains_through_trl_on_the_preference_pairs(finetuned):
    home, _, dpo_run = finetuned
    assert dpo_run.success
    adapters = read(home, "primary__finetune", "country_adapters")
    (dpo,) = adapters.filter(pl.col("country") == COUNTRY_PAIR[0]).rows(named=True)
    assert dpo["objective"] == "dpo" and dpo["labels"] == "icm" and dpo["steps"] > 0
    assert all(r.startswith("primary__finetune.preference_pairs:") for r in dpo["input_ids"])
