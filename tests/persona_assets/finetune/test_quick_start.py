"""The fine-tuning domain in the quick start's warehouse: exported datasets that `datasets` reads, and
lineage from a fine-tuned prediction to the ICM labels its adapter was trained on."""

import duckdb
import pytest
from datasets import load_dataset

from persona_platform.persona_assets.lineage import lineage_graph, source_files
from tests.conftest import SAMPLE_RUN_ENV, persona

pytestmark = pytest.mark.slow


def export(sample_run, path, *args):
    return persona(
        sample_run.home,
        "export",
        "labels",
        "--experiment",
        "primary",
        *args,
        str(path),
        extra_env=SAMPLE_RUN_ENV,
    )


def table_rows(home, query, *values):
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(query, list(values)).fetchall()


@pytest.mark.parametrize(
    ("fmt", "suffix", "builder", "columns"),
    [
        ("sft", ".jsonl", "json", ["prompt", "completion"]),
        ("dpo", ".parquet", "parquet", ["prompt", "chosen", "rejected"]),
    ],
)
def test_exported_labels_load_with_datasets(sample_run, tmp_path, fmt, suffix, builder, columns):
    assert sample_run.returncode == 0, sample_run.stderr
    path = tmp_path / f"aldoria-icm{suffix}"
    result = export(sample_run, path, "--country", "Aldoria", "--labels", "icm", "--format", fmt)
    assert result.returncode == 0, result.stderr
    dataset = load_dataset(builder, data_files=str(path), split="train")
    assert dataset.column_names[: len(columns)] == columns
    table = "sft_examples" if fmt == "sft" else "preference_pairs"
    ((count,),) = table_rows(
        sample_run.home,
        f"select count(*) from primary__finetune.{table} where country = ? and labels = 'icm'",
        "Aldoria",
    )
    assert dataset.num_rows == count > 0
    first = dataset[0]
    assert first["labels"] == "icm" and first["input_ids"] and first["row_id"]
    if fmt == "sft":
        assert first["completion"] in (" True", " False") and first["prompt"].endswith(":")


def test_export_errors_are_one_line_and_write_nothing(sample_run, tmp_path):
    path = tmp_path / "nowhere.jsonl"
    unknown = export(sample_run, path, "--country", "Atlantis", "--labels", "icm", "--format", "sft")
    assert unknown.returncode == 2 and "unknown country Atlantis" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
    bad_suffix = export(
        sample_run, tmp_path / "x.csv", "--country", "Aldoria", "--labels", "gold", "--format", "sft"
    )
    assert bad_suffix.returncode == 2 and "unknown file type '.csv'" in bad_suffix.stderr
    assert not path.exists() and not (tmp_path / "x.csv").exists()


def test_a_fine_tuned_prediction_reaches_its_training_labels_and_the_survey_file(sample_run):
    ((row_id,),) = table_rows(
        sample_run.home,
        "select row_id from primary__finetune.finetuned_predictions where method = 'finetune_icm' limit 1",
    )
    with duckdb.connect(str(sample_run.home / "warehouse.duckdb"), read_only=True) as con:
        nodes = lineage_graph(con, "primary__finetune.finetuned_predictions", row_id)
        files = source_files(con)
    tables = {ref.split(":")[0] for ref in nodes}
    assert {
        "primary__finetune.country_adapters",
        "primary__finetune.sft_examples",
        "primary__elicitation.icm_labels",
        "opinions.goqa_claims",
        "opinions.goqa_survey",
    } <= tables
    file_refs = {i.split(":")[1] for n in nodes.values() for i in n.inputs if i.startswith("file:")}
    assert any(files[sha].endswith("sample_global_opinions.csv") for sha in file_refs)
    prediction = nodes[f"primary__finetune.finetuned_predictions:{row_id}"]
    assert prediction.details["adapter"].startswith("country:") and prediction.details["model"] == "tiny"
