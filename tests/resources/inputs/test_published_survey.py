"""A survey with every quirk of the published GlobalOpinionQA, in both published formats, through
`persona run`."""

from collections import Counter

import duckdb
import pytest

from persona_platform.benchmarks.survey_generator import (
    expected_cells,
    generate_survey,
    write_flat_json,
    write_hf_csv,
)
from persona_platform.resources.inputs.survey import read_survey
from tests.conftest import persona

SLICE = dict(seed=11, questions=36, countries=14)


@pytest.fixture(scope="module")
def survey():
    return generate_survey(**SLICE)


def test_the_slice_holds_every_quirk(survey, tmp_path):
    cells = expected_cells(survey)
    assert {"usable", "no_answers", "tied"} == {outcome for outcome, _ in cells.values()}
    assert any(
        any(isinstance(o, float) for o in q.options) and any(isinstance(o, str) for o in q.options)
        for q in survey
    )
    assert max(len(q.options) for q in survey) > 10
    texts = Counter(q.question for q in survey)
    assert any(n > 1 for n in texts.values())  # one text, two option lists
    assert any("\n" in q.question and '"' in q.question for q in survey)
    assert any(not q.question.isascii() for q in survey)
    assert any(abs(sum(s) - 1) > 1e-3 and sum(s) > 0 for q in survey for s in q.selections.values())
    assert {"Bosnia and Herzegovina", "Côte d'Ivoire", "Great Britain", "Congo (Kinshasa)"} <= {
        c for q in survey for c in q.selections
    }


@pytest.mark.parametrize("writer", [write_hf_csv, write_flat_json], ids=["hf_csv", "flat_json"])
def test_the_same_records_from_both_formats(survey, tmp_path, writer):
    source = read_survey(writer(survey, tmp_path / "survey"))
    assert len(source.records) == len(expected_cells(survey))
    assert {(r.question, r.options, r.country_name) for r in source.records} == set(expected_cells(survey))


@pytest.mark.slow
@pytest.mark.parametrize("writer", [write_hf_csv, write_flat_json], ids=["hf_csv", "flat_json"])
def test_every_country_through_the_opinions_group(survey, tmp_path, writer):
    path = writer(survey, tmp_path / "survey")
    result = persona(tmp_path / "home", "run", "--select", "group:opinions", source=path)
    assert result.returncode == 0, result.stderr
    cells = expected_cells(survey)
    with duckdb.connect(str(tmp_path / "home" / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT question, options, country_name, usable, unusable_reason, question_id, country "
            "FROM opinions.goqa_survey"
        ).fetchall()
        positives = con.execute(
            "SELECT question_id, country, option_index FROM opinions.goqa_claims WHERE label = 1"
        ).fetchall()
        groups = con.execute(
            "SELECT count(*), sum(label) FROM opinions.goqa_claims GROUP BY question_id, country"
        ).fetchall()
        countries = dict(con.execute("SELECT country, country_name FROM opinions.goqa_countries").fetchall())
    # Every record is in the survey table; usable exactly where the numbers allow a claim, the reason
    # otherwise.
    assert len(rows) == len(cells)
    by_key = {}
    for question, options, name, usable, reason, qid, country in rows:
        outcome, best = cells[(question, tuple(options), name)]
        assert (usable, reason) == ((True, None) if outcome == "usable" else (False, outcome))
        by_key[(qid, country)] = best
    # Every usable row has exactly one positive claim, the argmax option; nothing else is left out.
    assert set(groups) == {(2, 1)}
    assert {(q, c): i for q, c, i in positives} == {k: v for k, v in by_key.items() if v is not None}
    # Every country is a partition; names the UI lists beside their keys.
    assert set(countries.values()) == {c for q in survey for c in q.selections}
    assert countries["Côte d'Ivoire"] == "Côte d'Ivoire"


@pytest.mark.slow
def test_countries_by_name_with_spaces_accents_and_parentheses(survey, tmp_path):
    path = write_hf_csv(survey, tmp_path / "survey.csv")
    result = persona(
        tmp_path / "home",
        "run",
        "--countries",
        "Côte d'Ivoire,Congo (Kinshasa)",
        "--select",
        'key:"opinions/goqa_survey"',
        source=path,
    )
    assert result.returncode == 0, result.stderr
    with duckdb.connect(str(tmp_path / "home" / "warehouse.duckdb"), read_only=True) as con:
        written = {r[0] for r in con.execute("SELECT DISTINCT country FROM opinions.goqa_survey").fetchall()}
    assert written == {"Côte d'Ivoire", "Congo (Kinshasa)"}


def test_the_usable_rows_check_warns_and_counts_by_reason():
    import polars as pl
    from dagster import AssetCheckSeverity

    from persona_platform.persona_assets.opinions.checks import survey_rows_usable

    survey = pl.DataFrame(
        {"usable": [True, False, False, False], "unusable_reason": [None, "tied", "no_answers", "tied"]}
    )
    result = survey_rows_usable(goqa_survey=survey)
    assert not result.passed and result.severity == AssetCheckSeverity.WARN
    assert result.metadata["unusable_by_reason"].value == {"no_answers": 1, "tied": 2}
    assert survey_rows_usable(goqa_survey=survey.head(1)).passed
