import csv
import json

import pytest

from persona_platform.resources.inputs.survey import (
    FORMAT_FLAT_JSON,
    FORMAT_HF_CSV,
    FORMAT_WIDE_CSV,
    SurveyFormatError,
    country_key,
    question_id,
    read_survey,
)
from persona_platform.resources.settings import SAMPLE_GOQA_SOURCE
from tests.survey_files import mean_position, write_flat_json, write_wide_csv

HF_HEADER = "question,selections,options,source\n"


def hf_row(
    question="Q?", selections="defaultdict(<class 'list'>, {'Aldoria': [0.6, 0.4]})", options="['Yes', 'No']"
):
    return f'"{question}","{selections}","{options}",test\n'


@pytest.fixture(scope="module")
def sample():
    return read_survey(SAMPLE_GOQA_SOURCE)


def test_sample_is_hugging_face_format(sample):
    assert sample.format == FORMAT_HF_CSV
    assert sample.countries == ["Aldoria", "Borvania", "Caldera", "Dunmere"]
    assert len({(r.question, r.options) for r in sample.records}) == 32
    assert len(sample.records) == 32 * 4
    for r in sample.records:
        assert len(r.distribution) == len(r.options)
        assert r.row >= 2


def test_flat_json_reader_gives_the_same_records(sample, tmp_path):
    path = write_flat_json(list(sample.records), tmp_path / "flat.json")
    flat = read_survey(path)
    assert flat.format == FORMAT_FLAT_JSON
    assert [(r.question, r.options, r.country, r.distribution) for r in flat.records] == [
        (r.question, r.options, r.country, r.distribution) for r in sample.records
    ]
    assert [r.row for r in flat.records] == list(range(1, len(sample.records) + 1))


def test_wide_reader_recovers_two_option_distributions(sample, tmp_path):
    wide = read_survey(write_wide_csv(list(sample.records), tmp_path / "wide.csv"))
    assert wide.format == FORMAT_WIDE_CSV
    by_key = {(r.question, r.options, r.country): r for r in wide.records}
    assert len(by_key) == len(sample.records)
    for r in sample.records:
        w = by_key[(r.question, r.options, r.country)]
        assert w.mean_position == pytest.approx(mean_position(r.distribution), abs=1e-6)
        if len(r.options) == 2:
            total = sum(r.distribution)
            assert w.distribution == pytest.approx([p / total for p in r.distribution], abs=1e-6)
        else:
            assert w.distribution is None


def test_real_wide_csv(real_wide_csv):
    source = read_survey(real_wide_csv)
    assert source.format == FORMAT_WIDE_CSV
    assert len(source.countries) == 14
    assert "United States" in source.countries and "Japan" in source.countries
    questions = {(r.question, r.options) for r in source.records}
    assert len(questions) == 180
    counts = {}
    for _, options in questions:
        counts[len(options)] = counts.get(len(options), 0) + 1
    assert counts == {2: 57, 3: 34, 4: 79, 5: 1, 11: 9}
    assert len(source.records) == 180 * 14
    assert all(r.row >= 2 for r in source.records)


def test_question_id_ignores_case_and_spacing_but_not_options():
    assert question_id("Do you  agree?", ("Yes", "No")) == question_id("do you agree?", ("Yes", "No"))
    assert question_id("Do you agree?", ("Yes", "No")) != question_id("Do you agree?", ("Yes", "No", "Maybe"))


# -- bad input: each error names the file, the row and the field -----------------------------


def write(tmp_path, text, name="bad.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def assert_error(path, row, field, words):
    with pytest.raises(SurveyFormatError) as info:
        read_survey(path)
    error = info.value
    message = str(error)
    assert str(path) in message
    assert error.row == row
    assert error.field == field
    if row is not None:
        assert f"row {row}" in message
    if field is not None:
        assert f"field '{field}'" in message
    assert words in message


def test_empty_file(tmp_path):
    assert_error(write(tmp_path, ""), None, None, "empty")


def test_header_only_file(tmp_path):
    assert_error(write(tmp_path, HF_HEADER), None, None, "no survey records")


def test_missing_column(tmp_path):
    path = write(tmp_path, "question,options,source\nQ?,\"['a','b']\",x\n")
    assert_error(path, 1, "header", "missing columns selections")


def test_distribution_length_differs_from_options(tmp_path):
    row = hf_row(selections="defaultdict(<class 'list'>, {'Aldoria': [0.5, 0.3, 0.2]})")
    assert_error(
        write(tmp_path, HF_HEADER + hf_row().replace("Q?", "Other?") + row),
        3,
        "selections['Aldoria']",
        "3 probabilities for 2 options",
    )


def test_empty_selection(tmp_path):
    assert_error(
        write(tmp_path, HF_HEADER + hf_row(selections="defaultdict(<class 'list'>, {})")),
        2,
        "selections",
        "empty selection",
    )


def test_empty_country_list(tmp_path):
    row = hf_row(selections="defaultdict(<class 'list'>, {'Aldoria': []})")
    assert_error(write(tmp_path, HF_HEADER + row), 2, "selections['Aldoria']", "empty selection")


def test_selections_are_not_evaluated_as_code(tmp_path):
    row = hf_row(selections="defaultdict(<class 'list'>, {'Aldoria': __import__('os').getpid()})")
    assert_error(write(tmp_path, HF_HEADER + row), 2, "selections", "not a defaultdict")


def test_wrong_type_in_distribution(tmp_path):
    row = hf_row(selections="defaultdict(<class 'list'>, {'Aldoria': ['high', 'low']})")
    assert_error(write(tmp_path, HF_HEADER + row), 2, "selections['Aldoria']", "finite numbers")


def test_malformed_options(tmp_path):
    assert_error(write(tmp_path, HF_HEADER + hf_row(options="[Yes, No")), 2, "options", "not a list literal")


def write_hf(tmp_path, *rows):
    """Rows of (question, selections dict, options list), written as the published CSV writes them."""
    path = tmp_path / "survey.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "selections", "options", "source"])
        writer.writerows(
            [q, f"defaultdict(<class 'list'>, {sel!r})", repr(opts), "x"] for q, sel, opts in rows
        )
    return path


def test_country_names_dagster_refuses_get_a_key_and_keep_their_name(tmp_path):
    selections = {"A|B": [0.6, 0.4], "Korea, South": [0.3, 0.7], "Côte d'Ivoire": [0.2, 0.8]}
    source = read_survey(write_hf(tmp_path, ("Q?", selections, ["Yes", "No"])))
    assert source.country_names == {
        "A/B": "A|B",
        "Côte d'Ivoire": "Côte d'Ivoire",
        "Korea; South": "Korea, South",
    }
    assert [r.country_name for r in source.records_for("Korea; South")] == ["Korea, South"]


def test_country_key_is_stable_and_valid_for_dagster():
    from dagster import MultiPartitionsDefinition, StaticPartitionsDefinition

    names = [
        "Bosnia and Herzegovina",
        "Côte d'Ivoire",
        "Great Britain",
        "Congo (Kinshasa)",
        "x...y",
        "a[1]",
        "tab\there",
    ]
    keys = [country_key(n) for n in names]
    assert keys[:4] == names[:4]
    assert keys[4:] == ["x\u2026y", "a(1)", "tab here"]
    assert country_key("Co\u0302te  d'Ivoire ") == "Côte d'Ivoire"  # decomposed accent, double space
    MultiPartitionsDefinition(
        {"agent": StaticPartitionsDefinition(["a"]), "country": StaticPartitionsDefinition(keys)}
    )


def test_two_names_with_one_key_are_refused(tmp_path):
    path = write_hf(tmp_path, ("Q?", {"A|B": [0.6, 0.4], "A/B": [0.3, 0.7]}, ["Yes", "No"]))
    assert_error(path, 2, "country", "would share the partition key 'A/B'")


def test_options_may_mix_text_and_numbers_in_every_format(tmp_path):
    ladder = "['Not important at all', 1.0, 2, 3.5, 'Very important']"
    row = hf_row(
        selections="defaultdict(<class 'list'>, {'Aldoria': [0.1, 0.2, 0.3, 0.3, 0.1]})", options=ladder
    )
    hf = read_survey(write(tmp_path, HF_HEADER + row))
    items = [
        {
            "country": "Aldoria",
            "question": "Q?",
            "options": ["Not important at all", 1.0, 2, 3.5, "Very important"],
            "distribution": [0.1, 0.2, 0.3, 0.3, 0.1],
        }
    ]
    flat = read_survey(write(tmp_path, json.dumps(items), "s.json"))
    wide = read_survey(write(tmp_path, 'Country,"Q?\nA. 1.0\nB. 2\nC. 3.50\n"\nAldoria,0.4\n'))
    expected = ("Not important at all", "1", "2", "3.5", "Very important")
    for source in (hf, flat):
        (record,) = source.records
        assert record.options == expected
        assert record.source_options == ("Not important at all", "1.0", "2", "3.5", "Very important")
    assert hf.records[0].options == flat.records[0].options
    assert question_id("Q?", hf.records[0].options) == question_id("Q?", flat.records[0].options)
    assert wide.records[0].options == ("1", "2", "3.5") and wide.records[0].source_options == (
        "1.0",
        "2",
        "3.50",
    )


def test_zero_and_off_one_distributions_are_read_as_written(tmp_path):
    row = hf_row(
        selections="defaultdict(<class 'list'>, {'Aldoria': [0.0, 0.0], 'Borvania': [0.504, 0.504]})"
    )
    source = read_survey(write(tmp_path, HF_HEADER + row))
    assert {r.country: r.distribution for r in source.records} == {
        "Aldoria": (0.0, 0.0),
        "Borvania": (0.504, 0.504),
    }


def test_text_with_newlines_quotes_and_accents_survives_csv(tmp_path):
    question = 'Some say "it\'s fine"\nor not — é?'
    (record,) = read_survey(write_hf(tmp_path, (question, {"Perú": [0.6, 0.4]}, ["Sí", 'No "way"']))).records
    assert (record.question, record.options, record.country) == (question, ("Sí", 'No "way"'), "Perú")


@pytest.mark.parametrize("options", ["[None, 'b']", "[['a'], 'b']", "[True, 'b']", "[]"])
def test_options_that_are_neither_text_nor_numbers_are_malformed(tmp_path, options):
    assert_error(
        write(tmp_path, HF_HEADER + hf_row(options=options)),
        2,
        "options",
        "texts or numbers" if options == "[]" else "text or a finite number",
    )


def test_non_numeric_share_in_json_is_malformed(tmp_path):
    items = [{"country": "Aldoria", "question": "Q?", "options": ["a", "b"], "distribution": [0.5, "half"]}]
    assert_error(write(tmp_path, json.dumps(items), "bad.json"), 1, "distribution", "finite numbers")


def test_duplicate_record(tmp_path):
    assert_error(write(tmp_path, HF_HEADER + hf_row() + hf_row()), 3, "question", "duplicate of row 2")


def test_unknown_country(sample):
    with pytest.raises(SurveyFormatError) as info:
        sample.records_for("Atlantis")
    assert info.value.field == "country"
    assert str(SAMPLE_GOQA_SOURCE) in str(info.value)
    assert "Atlantis" in str(info.value) and "Aldoria" in str(info.value)


def test_malformed_json(tmp_path):
    assert_error(write(tmp_path, '[{"country": "Aldoria",', "bad.json"), 1, None, "malformed JSON")


def test_json_missing_field(tmp_path):
    items = [{"country": "Aldoria", "question": "Q?", "options": ["a", "b"]}]
    assert_error(write(tmp_path, json.dumps(items), "bad.json"), 1, "distribution", "missing")


def test_json_mismatched_distribution(tmp_path):
    items = [
        {"country": "Aldoria", "question": "Q?", "options": ["a", "b"], "distribution": [0.5, 0.5]},
        {"country": "Aldoria", "question": "R?", "options": ["a", "b"], "distribution": [1.0]},
    ]
    assert_error(
        write(tmp_path, json.dumps(items), "bad.json"), 2, "distribution", "1 probabilities for 2 options"
    )


def test_wide_csv_wrong_type(tmp_path):
    text = 'Country,"Q?\nA. Yes\nB. No\n"\nAldoria,0.4\nBorvania,lots\n'
    assert_error(write(tmp_path, text), 3, "Q?", "not a number")


def test_wide_csv_out_of_range(tmp_path):
    text = 'Country,"Q?\nA. Yes\nB. No\n"\nAldoria,1.4\n'
    assert_error(write(tmp_path, text), 2, "Q?", "outside [0, 1]")


def test_wide_csv_header_without_options(tmp_path):
    text = 'Country,"Q? no options here"\nAldoria,0.4\n'
    assert_error(write(tmp_path, text), 1, "column 2", "option lines")


def test_row_with_wrong_cell_count(tmp_path):
    assert_error(write(tmp_path, HF_HEADER + '"Q?","x"\n'), 2, None, "2 cells")
