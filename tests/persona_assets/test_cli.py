"""The ``persona`` command as a user runs it: ``persona run`` in a separate process with a fresh home and the
summary on stdout; every usage mistake one line on stderr, exit 2 and nothing created; ``persona show`` on a
real warehouse."""

import hashlib
from pathlib import Path

import duckdb
import polars as pl
import pytest

from persona_platform.partitions import COUNTRIES
from persona_platform.persona_assets.cli import main
from persona_platform.resources.inputs.survey import read_survey
from persona_platform.resources.llm.backends import check_model_available
from persona_platform.resources.settings import SAMPLE_GOQA_SOURCE
from persona_platform.resources.warehouse import Warehouse
from tests.conftest import persona
from tests.survey_files import write_flat_json


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


@pytest.mark.slow
def test_persona_run_materializes_everything_and_prints_a_summary(sample_run):
    assert sample_run.returncode == 0, sample_run.stderr
    out = sample_run.stdout
    # Two models (tiny, tiny-b) for two experiments: their judges share one engine (tiny).
    assert "runs succeeded" in out and "model loads 2," in out
    assert "Open the UI" in out and "Plots:" in out
    counts = row_counts(sample_run.home)
    assert counts["opinions.goqa_questions"] == 32
    assert counts["opinions.goqa_survey"] == 128
    assert counts["opinions.goqa_claims"] == 256
    assert counts["primary__elicitation.zero_shot_base_predictions"] > 0
    assert (
        counts["primary__agents.lora_adapters"] == 3 and counts["primary__agents.perplexity_matrix"] == 4 * 3
    )
    for experiment in ("primary", "tiny_b"):  # both complete: every model-dependent table of each
        own = {t.split("__", 1)[1]: n for t, n in counts.items() if t.startswith(f"{experiment}__")}
        assert len(own) >= 25 and all(n > 0 for n in own.values()), (experiment, own)
        assert countries_in(sample_run.home, f"{experiment}__elicitation.few_shot_predictions") == set(
            COUNTRIES
        )
    assert counts["reports.experiment_comparison"] > 0
    for table, n in counts.items():
        assert f"{n:>9,} rows" in out and table in out


@pytest.mark.slow
def test_run_limited_to_a_country_of_a_json_source(tmp_path):
    source = write_flat_json(list(read_survey(SAMPLE_GOQA_SOURCE).records), tmp_path / "survey.json")
    result = persona(
        tmp_path / "home", "run", "--countries", "Caldera", "--select", "group:opinions", source=source
    )
    assert result.returncode == 0, result.stderr
    assert countries_in(tmp_path / "home", "opinions.goqa_claims") == {"Caldera"}
    assert countries_in(tmp_path / "home", "opinions.goqa_splits") == {"Caldera"}
    assert "primary__elicitation.zero_shot_base_predictions" not in row_counts(tmp_path / "home")


@pytest.mark.slow
def test_run_on_the_real_wide_csv_writes_that_country(tmp_path, real_wide_csv):
    result = persona(
        tmp_path, "run", "--countries", "Japan", "--select", "group:opinions", source=real_wide_csv
    )
    assert result.returncode == 0, result.stderr
    assert countries_in(tmp_path, "opinions.goqa_claims") == {"Japan"}
    counts = row_counts(tmp_path)
    assert counts["opinions.goqa_claims"] == 114
    assert counts["opinions.goqa_splits"] > 0


@pytest.mark.slow
def test_unknown_country_is_refused_before_anything_runs(tmp_path):
    result = persona(tmp_path, "run", "--countries", "Atlantis")
    assert result.returncode == 2
    assert "unknown country Atlantis" in result.stderr and "field 'country'" in result.stderr
    assert row_counts(tmp_path) == {}


@pytest.mark.slow
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


# -- usage mistakes: one line, exit 2, nothing created -------------------------------------------------------


@pytest.fixture
def persona_here(tmp_path, monkeypatch, capsys):
    """``persona`` in this process with its own home (absent until something creates it); returns the exit
    code, stdout and stderr."""
    home = tmp_path / "home"
    monkeypatch.setenv("PERSONA_HOME", str(home))

    def run(*args, **environ):
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    run.home = home
    return run


@pytest.mark.parametrize(
    ("select", "expected"),
    [
        (
            "goqa_survey",
            """--select 'goqa_survey' matches no asset; did you mean 'key:"opinions/goqa_survey"'?""",
        ),
        (
            "opinions.goqa_survey",
            "--select 'opinions.goqa_survey' matches no asset; "
            """did you mean 'key:"opinions/goqa_survey"'?""",
        ),
        (
            "group:opinions and",
            "--select 'group:opinions and' is not a valid selection; did you mean 'group:opinions'?",
        ),
        (
            "goqa_survey or group:agents",
            "--select 'goqa_survey or group:agents' is not a valid selection; "
            """did you mean 'key:"opinions/goqa_survey" or group:agents'?""",
        ),
        (
            "group:opinion",
            "--select 'group:opinion' matches no asset; did you mean 'group:opinions'? (groups: agents, "
            "opinions, primary, reports, traits, votes)",
        ),
        (
            "key:goqa_survey",
            """--select 'key:goqa_survey' matches no asset; did you mean 'key:"opinions/goqa_survey"'?""",
        ),
    ],
)
def test_a_bad_selection_is_one_line_with_a_suggestion(persona_here, select, expected):
    code, out, err = persona_here("run", "--select", select)
    assert (code, out, err) == (2, "", f"persona: {expected}\n")
    assert not persona_here.home.exists()


def test_a_selection_that_matches_nothing_lists_the_groups_and_creates_nothing(persona_here):
    code, out, err = persona_here("run", "--select", "group:nosuchgroup")
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(
        "persona: --select 'group:nosuchgroup' matches no asset; groups: agents, opinions, primary,"
    )
    code, out, err = persona_here("run", "--select", "group:opinions and group:agents")
    assert code == 2 and len(err.splitlines()) == 1 and "together none" in err
    assert not persona_here.home.exists()


def test_a_model_directory_that_does_not_exist_is_refused_before_any_run(persona_here):
    code, out, err = persona_here("run", PERSONA_MODEL="/nonexistent")
    assert (code, out, err) == (2, "", "persona: PERSONA_MODEL=/nonexistent: no such directory\n")
    assert not persona_here.home.exists()


def test_a_model_id_not_in_the_hugging_face_cache_is_refused_before_any_run(persona_here):
    code, out, err = persona_here("run", PERSONA_MODEL="persona-test/no-such-model")
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(
        "persona: PERSONA_MODEL=persona-test/no-such-model: not in the local Hugging Face cache ("
    )
    assert err.endswith("); download it first or give a directory\n")
    assert not persona_here.home.exists()


JUDGING = "tag:persona/domain=judging"  # the judging assets of every experiment


def test_only_the_models_the_selected_assets_use_are_checked(persona_here):
    code, _, err = persona_here("run", "--select", JUDGING, PERSONA_JUDGE_MODEL="/no/judge")
    assert (code, err) == (2, "persona: PERSONA_JUDGE_MODEL=/no/judge: no such directory\n")
    # The judge defaults to the generator: the message names the variable that holds the path.
    code, _, err = persona_here(
        "run", "--select", JUDGING, PERSONA_JUDGE_MODEL="", PERSONA_MODEL="vllm:./no/such/dir"
    )
    assert (code, err) == (2, "persona: PERSONA_MODEL=vllm:./no/such/dir: no such directory\n")
    assert not persona_here.home.exists()


def test_an_unreadable_run_config_is_refused_before_anything_is_created(persona_here, tmp_path):
    code, _, err = persona_here("run", "--config", str(tmp_path / "absent.yaml"))
    assert code == 2 and len(err.splitlines()) == 1 and "cannot read the run config" in err
    assert not persona_here.home.exists()


def hf_cache_with(cache: Path, repo_id: str) -> Path:
    """A Hugging Face hub cache holding ``repo_id``'s config, laid out as huggingface_hub lays it out."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    (repo / "snapshots" / "0123abcd" / "config.json").write_text("{}")
    return cache


def test_model_availability_by_backend(tmp_path):
    cache = str(hf_cache_with(tmp_path / "hub", "org/cached"))
    assert check_model_available("transformers", "org/cached", cache) is None
    assert check_model_available("transformers", "org/other", cache) == (
        f"not in the local Hugging Face cache ({cache}); download it first or give a directory"
    )
    assert "nor a Hugging Face id" in check_model_available("transformers", "a/b/c", cache)
    assert check_model_available("transformers", str(tmp_path), cache) is None
    (tmp_path / "weights.bin").write_text("")
    assert check_model_available("transformers", str(tmp_path / "weights.bin"), cache) == "not a directory"
    assert check_model_available("vllm", str(tmp_path / "weights.bin"), cache) is None  # e.g. a GGUF file
    assert check_model_available("vllm", "~/no/such/model", cache) == "no such directory"
    assert check_model_available("vllm", "org/other", cache) is None  # vLLM resolves ids itself
    # Built locally, or not weights at all: never refused.
    assert check_model_available("transformers", "tiny", cache) is None
    assert check_model_available("openai", "/served/name", cache) is None
    assert check_model_available("simulated", "seed=3", cache) is None


@pytest.mark.slow
def test_the_installed_command_prints_one_line_for_a_bad_selection(tmp_path):
    result = persona(tmp_path / "home", "run", "--select", "goqa_survey")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        """persona: --select 'goqa_survey' matches no asset; did you mean 'key:"opinions/goqa_survey"'?"""
    ]
    assert not (tmp_path / "home").exists()


@pytest.mark.slow
def test_a_failed_model_load_is_one_line_with_its_step_and_log(tmp_path):
    model = tmp_path / "model"  # passes the check (a directory) but holds no weights
    model.mkdir()
    (model / "config.json").write_text("{}")
    result = persona(
        tmp_path / "home",
        "run",
        "--countries",
        "Aldoria",
        "--select",
        '+key:"primary/elicitation/zero_shot_base_predictions"',
        extra_env={"PERSONA_MODEL": str(model)},
    )
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    run_id = line.removeprefix("FAILED run ").split(" ")[0]
    log = tmp_path / "home" / "logs" / f"{run_id}.log"
    assert line == (
        f"FAILED run {run_id} (primary__elicitation__zero_shot_base_predictions): ModelLoadError: "
        f"PERSONA_MODEL='{model}': cannot load it as a local directory: "
        + line.split(": cannot load it as a local directory: ")[1].split("; full log: ")[0]
        + f"; full log: persona ui, or {log}"
    )
    text = log.read_text()
    assert "STEP_FAILURE" in text and "ModelLoadError" in text and "transformers_backend.py" in text
    assert "1 of 2 runs succeeded" in result.stdout


# -- persona show --------------------------------------------------------------------------------------------

LONG_QUESTION = "Should the national government spend more on public libraries and on the parks around them?"


@pytest.fixture
def warehouse_home(tmp_path, monkeypatch):
    """A home whose warehouse, written by the Warehouse class, holds one table with provenance columns."""
    home = tmp_path / "home"
    claims = pl.DataFrame(
        {
            "row_id": ["q1/Aldoria/0", "q1/Aldoria/1", "q1/Borvania/0"],
            "country": ["Aldoria", "Aldoria", "Borvania"],
            "question": [LONG_QUESTION, LONG_QUESTION, "Short?"],
            "probability": [0.9, 0.1, 0.5],
            "input_ids": [["opinions.goqa_survey:q1/Aldoria"]] * 2 + [["opinions.goqa_survey:q1/Borvania"]],
            "run_id": ["run-1"] * 3,
            "code_version": ["opinions-1"] * 3,
        }
    )
    Warehouse(home / "warehouse.duckdb").replace("opinions", "goqa_claims", claims)
    monkeypatch.setenv("PERSONA_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "200")
    return home


def show(capsys, *args):
    code = main(["show", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_show_prints_rows_without_provenance_and_cuts_long_strings(warehouse_home, capsys):
    before = hashlib.sha256((warehouse_home / "warehouse.duckdb").read_bytes()).hexdigest()
    code, out, err = show(capsys, "opinions.goqa_claims", "--limit", "2")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == (
        "opinions.goqa_claims: 2 of 3 rows; hidden columns: input_ids, run_id, code_version "
        "(--all-columns shows them)"
    )
    assert "q1/Aldoria/0" in out and "q1/Borvania/0" not in out and "run-1" not in out
    assert LONG_QUESTION not in out and LONG_QUESTION[:30] in out and "…" in out
    assert hashlib.sha256((warehouse_home / "warehouse.duckdb").read_bytes()).hexdigest() == before


def test_show_filters_chooses_columns_and_shows_provenance_on_request(warehouse_home, capsys):
    code, out, _ = show(
        capsys, "opinions.goqa_claims", "--where", "country = 'Borvania'", "--columns", "probability,country"
    )
    assert code == 0
    assert out.splitlines()[0] == "opinions.goqa_claims: 1 of 1 rows where country = 'Borvania'"
    header = next(line for line in out.splitlines() if "probability" in line)
    assert header.index("probability") < header.index("country") and "question" not in out
    code, out, _ = show(capsys, "opinions.goqa_claims", "--all-columns")
    assert code == 0 and "run-1" in out and "opinions-1" in out and "hidden" not in out


def test_show_lays_out_a_wide_table_one_record_at_a_time(warehouse_home, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    code, out, _ = show(capsys, "opinions.goqa_claims", "--limit", "1")
    assert code == 0
    assert "-[ row 1 ]" in out and "country      Aldoria" in out
    assert all(len(line) <= 60 for line in out.splitlines()[1:])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["goqa_claims"],
            "persona: no table 'goqa_claims' in {warehouse}; did you mean opinions.goqa_claims?",
        ),
        (
            ["opinions.goqa_claim"],
            "persona: no table 'opinions.goqa_claim' in {warehouse}; did you mean opinions.goqa_claims?",
        ),
        (
            ["opinions.goqa_claims", "--where", "nosuch = 1"],
            "persona: --where 'nosuch = 1': Binder Error: "
            'Referenced column "nosuch" not found in FROM clause!',
        ),
        (
            ["opinions.goqa_claims", "--where", "1=1; DROP TABLE opinions.goqa_claims"],
            "persona: --where '1=1; DROP TABLE opinions.goqa_claims': not one condition on the table's rows",
        ),
        (
            ["opinions.goqa_claims", "--columns", "country,probabilty"],
            "persona: --columns: opinions.goqa_claims has no column 'probabilty'; did you mean probability?",
        ),
    ],
)
def test_show_mistakes_are_one_line(warehouse_home, capsys, args, expected):
    code, out, err = show(capsys, *args)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(expected.format(warehouse=warehouse_home / "warehouse.duckdb"))
    assert Warehouse(warehouse_home / "warehouse.duckdb").read("opinions", "goqa_claims").height == 3


def test_show_creates_no_warehouse(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PERSONA_HOME", str(tmp_path / "home"))
    code, out, err = show(capsys, "opinions.goqa_claims")
    assert (code, out) == (2, "")
    assert (
        err
        == f"persona: no warehouse yet at {tmp_path / 'home' / 'warehouse.duckdb'}; run `persona run` first\n"
    )
    assert not (tmp_path / "home").exists()
