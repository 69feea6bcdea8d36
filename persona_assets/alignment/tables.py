"""The alignment tables: each persona's answer distribution per survey question, and the mean per country."""

import polars as pl

from persona_platform.persona_assets.alignment.similarity import (
    LETTERS,
    normalize,
    normalize_logprobs,
    opinion_prompt,
    option_letters,
    similarity,
)
from persona_platform.persona_assets.columns import columns
from persona_platform.persona_assets.provenance import row_ref
from persona_platform.resources.llm import ScoreRequest

BASE = "base"
_COUNTRY = ("country", pl.String, "the country whose survey answers the persona is compared with")
ANSWER_SCHEMA = columns(
    ("agent", pl.String, "the persona answering: an agent (the base model with its adapter) or base"),
    _COUNTRY,
    (
        "question_id",
        pl.String,
        "the question in opinions.goqa_questions (its survey row in opinions.goqa_survey)",
    ),
    (
        "model_distribution",
        pl.List(pl.Float64),
        "the persona's probabilities of the option letters A, B, ... in option order, renormalised over them",
    ),
    (
        "country_distribution",
        pl.List(pl.Float64),
        "the country's shares of answers per option, normalised to sum 1",
    ),
    (
        "similarity",
        pl.Float64,
        "1 - Jensen-Shannon distance (base 2) of the two distributions: 1 identical, 0 disjoint",
    ),
)
SUMMARY_SCHEMA = columns(
    ("persona", pl.String, "base (the base model) or an agent (the base model with its adapter)"),
    _COUNTRY,
    ("questions", pl.Int64, "the country's survey questions the persona answered"),
    ("similarity", pl.Float64, "mean over those questions of 1 - Jensen-Shannon distance (base 2)"),
)


def answer_rows(
    engine, survey: pl.DataFrame, pairs: list[tuple[str, str]], adapter_of
) -> tuple[list[dict], int]:
    """For each (persona, country): the persona's letter distribution on every question with shares
    that sum above 0 (ties count: a distribution is compared whole) and options that can be lettered;
    the rest are counted."""
    rows, skipped = [], 0
    answerable = (pl.col("distribution").list.sum().fill_null(0) > 0) & (
        pl.col("options").list.len() <= len(LETTERS)
    )
    for persona, country in pairs:
        of_country = survey.filter(pl.col("country") == country)
        questions = of_country.filter(answerable).sort("question_id")
        skipped += of_country.height - questions.height
        requests = [
            ScoreRequest(
                opinion_prompt(r["question"], r["options"]),
                option_letters(len(r["options"])),
                adapter=adapter_of(persona),
            )
            for r in questions.iter_rows(named=True)
        ]
        for r, logprobs in zip(questions.iter_rows(named=True), engine.score(requests), strict=True):
            model = normalize_logprobs(logprobs)
            survey_distribution = normalize(r["distribution"])
            rows.append(
                {
                    "row_id": f"{persona}/{country}/{r['question_id']}",
                    "agent": persona,
                    "adapter": adapter_of(persona),
                    "country": country,
                    "question_id": r["question_id"],
                    "model_distribution": model,
                    "country_distribution": survey_distribution,
                    "similarity": similarity(model, survey_distribution),
                    "input_ids": [row_ref("opinions.goqa_survey", r["row_id"])]
                    + ([] if persona == BASE else [row_ref("agents.lora_adapters", persona)]),
                }
            )
    return rows, skipped


def summary_rows(answers: pl.DataFrame) -> list[dict]:
    """The mean similarity per (persona, country), from every answer row of it."""
    means = (
        answers.group_by("agent", "country")
        .agg(pl.len().alias("questions"), pl.col("similarity").mean(), pl.col("row_id"))
        .sort("agent", "country")
    )
    return [
        {
            "row_id": f"{a}/{c}",
            "persona": a,
            "country": c,
            "questions": n,
            "similarity": s,
            "input_ids": [row_ref(f"alignment.{'base' if a == BASE else 'agent'}_opinions", i) for i in ids],
        }
        for a, c, n, s, ids in means.iter_rows()
    ]
