"""Rows of the opinions tables, built from parsed records (no Dagster here)."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

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

QUESTIONS_SCHEMA = {
    "question_id": pl.String,
    "question_index": pl.Int64,
    "question": pl.String,
    "options": pl.List(pl.String),
    "source_options": pl.List(pl.String),
    "n_options": pl.Int64,
    "source_format": pl.String,
}
COUNTRIES_SCHEMA = {
    "country": pl.String,
    "country_name": pl.String,
    "survey_rows": pl.Int64,
    "usable_rows": pl.Int64,
    **{reason: pl.Int64 for reason in UNUSABLE_REASONS},
}
SURVEY_SCHEMA = {
    "question_id": pl.String,
    "country": pl.String,
    "country_name": pl.String,
    "question": pl.String,
    "options": pl.List(pl.String),
    "source_options": pl.List(pl.String),
    "distribution": pl.List(pl.Float64),
    "mean_position": pl.Float64,
    "usable": pl.Boolean,
    "unusable_reason": pl.String,
    "source_file": pl.String,
    "source_sha256": pl.String,
    "source_row": pl.Int64,
}
CLAIMS_SCHEMA = {
    "question_id": pl.String,
    "country": pl.String,
    "question": pl.String,
    "option_index": pl.Int64,
    "option": pl.String,
    "probability": pl.Float64,
    "label": pl.Int64,
    "n_options": pl.Int64,
}
SPLITS_SCHEMA = {
    "variant": pl.String,
    "country": pl.String,
    "split": pl.String,
    "position": pl.Int64,
    "claim_id": pl.String,
    "question_id": pl.String,
    "label": pl.Int64,
}


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
