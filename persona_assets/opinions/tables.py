"""Rows of the opinions tables, built from parsed records (no Dagster here)."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from persona_platform.persona_assets.columns import columns
from persona_platform.persona_assets.opinions.claims import (
    UNUSABLE_REASONS,
    Claim,
    SurveyAnswer,
    build_claims,
    unusable_reason,
)
from persona_platform.persona_assets.opinions.splits import VARIANTS, SplitRules, split_country
from persona_platform.persona_assets.provenance import file_ref, row_ref
from persona_platform.resources.inputs.survey import SurveySource, question_id

COUNTRIES_TABLE = "opinions.goqa_countries"
QUESTIONS_TABLE = "opinions.goqa_questions"
SURVEY_TABLE = "opinions.goqa_survey"
CLAIMS_TABLE = "opinions.goqa_claims"

_QUESTION_ID = (
    "question_id",
    pl.String,
    "the question's row in opinions.goqa_questions: q + 10 hex digits of the sha256 of its text and options",
)
_COUNTRY = ("country", pl.String, "the country's partition key (its row in opinions.goqa_countries)")
_QUESTION = ("question", pl.String, "the question as written in the survey source")
_OPTIONS = (
    "options",
    pl.List(pl.String),
    "the answer options in source order, numbers written canonically (1.0 as 1)",
)
_SOURCE_OPTIONS = ("source_options", pl.List(pl.String), "the options' tokens as written in the source file")
_N_OPTIONS = ("n_options", pl.Int64, "how many answer options the question has")

QUESTIONS_SCHEMA = columns(
    (
        "question_id",
        pl.String,
        "the question's stable id (also its row_id): q + 10 hex digits of the sha256 of its text and options",
    ),
    ("question_index", pl.Int64, "0-based order of the question's first appearance in the source file"),
    _QUESTION,
    _OPTIONS,
    _SOURCE_OPTIONS,
    _N_OPTIONS,
    (
        "source_format",
        pl.String,
        "the source file's format: hf_csv (Hugging Face CSV), flat_json or wide_csv (mean positions)",
    ),
)
COUNTRIES_SCHEMA = columns(
    (
        "country",
        pl.String,
        "the country's partition key: its name normalised, characters Dagster refuses in keys replaced",
    ),
    ("country_name", pl.String, "the country's name as first written in the source file"),
    ("survey_rows", pl.Int64, "the country's survey rows (one per question it has answers to) in the source"),
    ("usable_rows", pl.Int64, "survey rows that can make claims (a unique most chosen option)"),
    *(
        (reason, pl.Int64, f"survey rows that make no claim: {why}")
        for reason, why in UNUSABLE_REASONS.items()
    ),
)
SURVEY_SCHEMA = columns(
    _QUESTION_ID,
    _COUNTRY,
    ("country_name", pl.String, "the country's name as written in this row of the source"),
    _QUESTION,
    _OPTIONS,
    _SOURCE_OPTIONS,
    (
        "distribution",
        pl.List(pl.Float64),
        "share of the country's answers per option, in option order, as in the source (not renormalised); "
        "null where the source gives only a mean position",
    ),
    (
        "mean_position",
        pl.Float64,
        "wide CSV only: the mean ordinal position of the country's answers, in [0, 1]; null otherwise",
    ),
    ("usable", pl.Boolean, "true when the row can make claims (unusable_reason is null)"),
    (
        "unusable_reason",
        pl.String,
        "why the row makes no claim: no_distribution, too_few_options, no_answers or tied; null when usable",
    ),
    ("source_file", pl.String, "path of the survey source file"),
    ("source_sha256", pl.String, "sha256 of the survey source file"),
    (
        "source_row",
        pl.Int64,
        "the record's row in the source file (CSV: the header is row 1; JSON items from 1)",
    ),
)
CLAIMS_SCHEMA = columns(
    _QUESTION_ID,
    _COUNTRY,
    _QUESTION,
    ("option_index", pl.Int64, "0-based index of the claim's option among the question's options"),
    ("option", pl.String, "the option the claim says is the country's most chosen answer"),
    ("probability", pl.Float64, "the country's share of answers for this option, shares normalised to sum 1"),
    (
        "label",
        pl.Int64,
        "gold label: 1 for the country's most chosen option, 0 for the seeded random other one",
    ),
    _N_OPTIONS,
)
SPLITS_SCHEMA = columns(
    ("variant", pl.String, "claim variant: all (every question) or binary (two-option questions only)"),
    _COUNTRY,
    ("split", pl.String, "train or test, decided per question and alike for every country"),
    (
        "position",
        pl.Int64,
        "0-based order of the claim within its country, variant and split (seeded question order)",
    ),
    (
        "claim_id",
        pl.String,
        "the claim's row in opinions.goqa_claims: {question_id}/{country}/{option index}",
    ),
    _QUESTION_ID,
    ("label", pl.Int64, "gold label of the claim: 1 for the country's most chosen option, 0 otherwise"),
)


def question_rows(source: SurveySource) -> list[dict]:
    """One row per distinct question, in order of first appearance in the file."""
    rows: dict[str, dict] = {}
    for record in source.records:
        qid = question_id(record.question, record.options)
        if qid not in rows:
            rows[qid] = {
                "row_id": qid,
                "question_id": qid,
                "question_index": len(rows),
                "question": record.question,
                "options": list(record.options),
                "source_options": list(record.source_options),
                "n_options": len(record.options),
                "source_format": source.format,
                "input_ids": [],
            }
        ref = file_ref(source.sha256, record.row)
        if ref not in rows[qid]["input_ids"]:
            rows[qid]["input_ids"].append(ref)
    return list(rows.values())


def country_rows(source: SurveySource) -> list[dict]:
    """One row per country: its partition key, its name in the file, and how many of its rows
    can make claims."""
    rows = []
    for country, name in source.country_names.items():
        reasons = [unusable_reason(len(r.options), r.distribution) for r in source.records_for(country)]
        rows.append(
            {
                "row_id": country,
                "country": country,
                "country_name": name,
                "survey_rows": len(reasons),
                "usable_rows": reasons.count(None),
                **{reason: reasons.count(reason) for reason in UNUSABLE_REASONS},
                "input_ids": list(
                    dict.fromkeys(file_ref(source.sha256, r.row) for r in source.records_for(country))
                ),
            }
        )
    return rows


def survey_rows(source: SurveySource, countries: Sequence[str]) -> list[dict]:
    rows = []
    for country in countries:
        for record in source.records_for(country):
            qid = question_id(record.question, record.options)
            reason = unusable_reason(len(record.options), record.distribution)
            rows.append(
                {
                    "row_id": f"{qid}/{country}",
                    "question_id": qid,
                    "country": country,
                    "country_name": record.country_name,
                    "question": record.question,
                    "options": list(record.options),
                    "source_options": list(record.source_options),
                    "distribution": list(record.distribution) if record.distribution else None,
                    "mean_position": record.mean_position,
                    "usable": reason is None,
                    "unusable_reason": reason,
                    "source_file": str(source.path),
                    "source_sha256": source.sha256,
                    "source_row": record.row,
                    "input_ids": [file_ref(source.sha256, record.row)],
                }
            )
    return rows


def claim_rows(survey: pl.DataFrame, seed: int) -> tuple[list[dict], list[tuple[str, str, str]]]:
    columns = survey.select("question_id", "country", "options", "distribution").to_dict(as_series=False)
    answers = [
        SurveyAnswer(question_id=q, country=c, options=tuple(o), distribution=None if d is None else tuple(d))
        for q, c, o, d in zip(*columns.values(), strict=True)
    ]
    questions = dict(zip(survey["question_id"], survey["question"], strict=True))
    claims, excluded = build_claims(answers, seed)
    rows = [
        {
            "row_id": c.claim_id,
            "question_id": c.question_id,
            "country": c.country,
            "question": questions[c.question_id],
            "option_index": c.option_index,
            "option": c.option,
            "probability": c.probability,
            "label": c.label,
            "n_options": c.n_options,
            "input_ids": [row_ref(SURVEY_TABLE, f"{c.question_id}/{c.country}")],
        }
        for c in claims
    ]
    return rows, excluded


def split_rows(
    claims: pl.DataFrame, questions: pl.DataFrame, countries: Sequence[str], rules: SplitRules
) -> list[dict]:
    ordered = questions.sort("question_index")
    question_order = list(zip(ordered["question_id"], ordered["n_options"], strict=True))
    rows = []
    for country in countries:
        country_claims = [
            Claim(**{k: r[k] for k in Claim.__dataclass_fields__ if k != "claim_id"}, claim_id=r["row_id"])
            for r in claims.filter(pl.col("country") == country).iter_rows(named=True)
        ]
        for variant in VARIANTS:
            for s in split_country(country_claims, question_order, variant, rules):
                rows.append(
                    {
                        "row_id": f"{variant}/{s.claim.claim_id}",
                        "variant": variant,
                        "country": country,
                        "split": s.split,
                        "position": s.position,
                        "claim_id": s.claim.claim_id,
                        "question_id": s.claim.question_id,
                        "label": s.claim.label,
                        "input_ids": [
                            row_ref(CLAIMS_TABLE, s.claim.claim_id),
                            row_ref(QUESTIONS_TABLE, s.claim.question_id),
                        ],
                    }
                )
    return rows
