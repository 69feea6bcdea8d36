"""``persona run`` as a user runs it: a separate process, a fresh home, the summary on stdout."""

from pathlib import Path

import duckdb
import pytest

from persona_platform.resources.inputs.survey import read_survey
from persona_platform.resources.settings import SAMPLE_GOQA_SOURCE
from tests.conftest import persona
from tests.survey_files import write_flat_json

pytestmark = pytest.mark.slow


def row_counts(home):
    path = Path(home) / "warehouse.duckdb"
    if not path.exists():
        return {}
    with duckdb.connect(str(path)) as con:
        tables = con.execute("SELECT schema_name, table_name FROM duckdb_tables()").fetchall()
        return {f"{s}.{t}": con.execute(f'SELECT count(*) FROM "{s}"."{t}"').fetchone()[0] for s, t in tables}


def countries_in(home, table):
    with duckdb.connect(str(Path(home) / "warehouse.duckdb")) as con:
        return {r[0] for r in con.execute(f"SELECT DISTINCT country FROM {table}").fetchall()}


def test_persona_run_materializes_everything_and_prints_a_summary(sample_run):
    assert sample_run.returncode == 0, sample_run.stderr
    out = sample_run.stdout
    assert "runs succeeded" in out and "model loads 1," in out
    assert "Open the UI" in out and "Plots:" in out
    counts = row_counts(sample_run.home)
    assert counts["opinions.goqa_questions"] == 32
    assert counts["opinions.goqa_survey"] == 128
    assert counts["opinions.goqa_claims"] == 256
    assert counts["elicitation.zero_shot_base_predictions"] > 0
    assert counts["agents.lora_adapters"] == 3 and counts["agents.perplexity_matrix"] == 4 * 3
    for table, n in counts.items():
        assert f"{n:>9,} rows" in out and table in out


def test_run_limited_to_a_country_of_a_json_source(tmp_path):
    source = write_flat_json(list(read_survey(SAMPLE_GOQA_SOURCE).records), tmp_path / "survey.json")
    result = persona(
        tmp_path / "home", "run", "--countries", "Caldera", "--select", "group:opinions", source=source
    )
    assert result.returncode == 0, result.stderr
    assert countries_in(tmp_path / "home", "opinions.goqa_claims") == {"Caldera"}
    assert countries_in(tmp_path / "home", "opinions.goqa_splits") == {"Caldera"}
    assert "elicitation.zero_shot_base_predictions" not in row_counts(tmp_path / "home")


def test_run_on_the_real_wide_csv_writes_that_country(tmp_path, real_wide_csv):
    result = persona(
        tmp_path, "run", "--countries", "Japan", "--select", "group:opinions", source=real_wide_csv
    )
    assert result.returncode == 0, result.stderr
    assert countries_in(tmp_path, "opinions.goqa_claims") == {"Japan"}
    counts = row_counts(tmp_path)
    assert counts["opinions.goqa_claims"] == 114
    assert counts["opinions.goqa_splits"] > 0


def test_unknown_country_is_refused_before_anything_runs(tmp_path):
    result = persona(tmp_path, "run", "--countries", "Atlantis")
    assert result.returncode == 2
    assert "unknown country Atlantis" in result.stderr and "field 'country'" in result.stderr
    assert row_counts(tmp_path) == {}


def test_bad_source_names_file_row_and_field_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "question,selections,options,source\n"
        "\"Q?\",\"defaultdict(<class 'list'>, {'Aldoria': [0.2, 0.8]})\",\"['Yes', 'No']\",x\n"
        "\"R?\",\"defaultdict(<class 'list'>, {'Aldoria': [0.2, 0.3, 0.5]})\",\"['Yes', 'No']\",x\n"
    )
    result = persona(tmp_path / "home", "run", source=bad)
    assert result.returncode == 2
    assert f"{bad}, row 3, field 'selections['Aldoria']'" in result.stderr
    assert "Traceback" not in result.stderr
    assert row_counts(tmp_path / "home") == {}
