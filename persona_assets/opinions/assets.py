"""GlobalOpinionQA assets: questions, survey rows, binary claims and splits (per country)."""

from collections import Counter

import polars as pl
from dagster import AssetExecutionContext, AssetIn, Config, asset
from pydantic import Field

from persona_platform.partitions import countries_partitions
from persona_platform.persona_assets.common import (
    COUNTRY_PARTITION,
    ONE_RUN_PER_BACKFILL,
    OWNERS,
    TABLE_KINDS,
    WAREHOUSE_POOL,
    results_table,
    table_columns,
    table_metadata,
)
from persona_platform.persona_assets.opinions.claims import UNUSABLE_REASONS
from persona_platform.persona_assets.opinions.splits import SplitRules
from persona_platform.persona_assets.opinions.tables import (
    CLAIMS_SCHEMA,
    COUNTRIES_SCHEMA,
    QUESTIONS_SCHEMA,
    SPLITS_SCHEMA,
    SURVEY_SCHEMA,
    claim_rows,
    country_rows,
    question_rows,
    split_rows,
    survey_rows,
)
from persona_platform.persona_assets.steps import asset_frame, partition_metadata
from persona_platform.resources.inputs.survey import is_number
from persona_platform.resources.sources import GoqaSource

GROUP = "opinions"
CODE_VERSION = "opinions-1"
SHARED = dict(
    key_prefix=GROUP,
    group_name=GROUP,
    owners=OWNERS,
    kinds=TABLE_KINDS,
    pool=WAREHOUSE_POOL,
    code_version=CODE_VERSION,
)
BY_COUNTRY = dict(partitions_def=countries_partitions, backfill_policy=ONE_RUN_PER_BACKFILL)


class ClaimsConfig(Config):
    seed: int = Field(
        default=42, description="Seeds the choice of the negative option per (question, country)."
    )


class SplitConfig(Config):
    seed: int = Field(
        default=733244742, description="Seeds the question permutation shared by all countries."
    )
    train_fraction: float = Field(default=0.75, description="Share of questions that may go to train.")
    train_cap: int = Field(default=125, description="Most train claims per country (whole question groups).")
    test_cap: int = Field(default=50, description="Most test claims per country (whole question groups).")


def _source_metadata(source) -> dict:
    return {"source_file": str(source.path), "source_sha256": source.sha256, "source_format": source.format}


def _claims_metadata(claims: pl.DataFrame, excluded: list[tuple[str, str, str]], seed: int) -> dict:
    """A country's claims and the survey rows of that country left out, by reason."""
    countries = set(claims["country"])
    reasons = Counter(reason for _, country, reason in excluded if country in countries)
    per_country = claims.group_by("country").agg(pl.len().alias("claims"), pl.col("label").mean())
    return {
        "seed": seed,
        "survey_rows_left_out": sum(reasons.values()),
        **{f"left_out/{reason}": reasons.get(reason, 0) for reason in UNUSABLE_REASONS},
        "claims_per_country": results_table(
            ["country", "claims", "positive share"],
            [[c, n, round(p, 3)] for c, n, p in per_country.sort("country").iter_rows()],
        ),
    }


def _split_metadata(splits: pl.DataFrame, seed: int) -> dict:
    sizes = splits.group_by("country", "variant", "split").agg(pl.len()).sort("country", "variant", "split")
    return {"seed": seed, "sizes": results_table(["country", "variant", "split", "claims"], sizes.rows())}


def _unusable_counts(frame: pl.DataFrame) -> dict:
    counts = Counter(frame["unusable_reason"].drop_nulls().to_list())
    return {f"unusable/{reason}": counts.get(reason, 0) for reason in UNUSABLE_REASONS}


@asset(**SHARED, metadata=table_columns(COUNTRIES_SCHEMA))
def goqa_countries(context: AssetExecutionContext, goqa_source: GoqaSource) -> pl.DataFrame:
    """Every country of the source: its partition key (what the UI and `persona run --countries` take), its
    name as written in the file, and how many of its survey rows can make claims (the rest by reason)."""
    source = goqa_source.load()
    frame = asset_frame(context, country_rows(source), COUNTRIES_SCHEMA)
    columns = {"country": "string", "country_name": "string", "survey_rows": "int", "usable_rows": "int"}
    context.add_output_metadata(
        {
            **_source_metadata(source),
            "countries": len(source.country_names),
            "renamed_for_partition_keys": sum(k != n for k, n in source.country_names.items()),
            "countries_table": table_metadata(
                columns | {r: "int" for r in UNUSABLE_REASONS}, frame.to_dicts()
            ),
        }
    )
    return frame


@asset(**SHARED, metadata=table_columns(QUESTIONS_SCHEMA))
def goqa_questions(context: AssetExecutionContext, goqa_source: GoqaSource) -> pl.DataFrame:
    """Every distinct survey question of the GlobalOpinionQA source with its options, in file order."""
    source = goqa_source.load()
    frame = asset_frame(context, question_rows(source), QUESTIONS_SCHEMA)
    numeric = sum(any(is_number(token) for token in tokens) for tokens in frame["source_options"].to_list())
    context.add_output_metadata(
        {
            **_source_metadata(source),
            "skipped_rows": len(source.skipped_rows),
            "questions_with_numeric_options": numeric,
            "questions_by_option_count": dict(sorted(Counter(frame["n_options"].to_list()).items())),
        }
    )
    return frame


@asset(**SHARED, **BY_COUNTRY, metadata=COUNTRY_PARTITION | table_columns(SURVEY_SCHEMA))
def goqa_survey(context: AssetExecutionContext, goqa_source: GoqaSource) -> pl.DataFrame:
    """The country's answer distribution per question, one row per (question, country),
    with its source row."""
    source = goqa_source.load()
    frame = asset_frame(context, survey_rows(source, context.partition_keys), SURVEY_SCHEMA)
    source_metadata = _source_metadata(source)
    partition_metadata(
        context,
        frame,
        lambda part: {**source_metadata, "usable_rows": int(part["usable"].sum()), **_unusable_counts(part)},
    )
    return frame


@asset(
    **SHARED,
    **BY_COUNTRY,
    metadata=COUNTRY_PARTITION | table_columns(CLAIMS_SCHEMA),
    ins={"goqa_survey": AssetIn(key=[GROUP, "goqa_survey"])},
)
def goqa_claims(
    context: AssetExecutionContext, config: ClaimsConfig, goqa_survey: pl.DataFrame
) -> pl.DataFrame:
    """Binary claims: the most chosen option labelled 1 and one seeded random other option labelled 0.
    Survey rows that cannot make a claim (see `goqa_survey.unusable_reason`) are left out and counted."""
    rows, excluded = claim_rows(goqa_survey, config.seed)
    frame = asset_frame(context, rows, CLAIMS_SCHEMA)
    partition_metadata(context, frame, lambda part: _claims_metadata(part, excluded, config.seed))
    return frame


@asset(
    **SHARED,
    **BY_COUNTRY,
    metadata=COUNTRY_PARTITION | table_columns(SPLITS_SCHEMA),
    ins={
        "goqa_claims": AssetIn(key=[GROUP, "goqa_claims"]),
        "goqa_questions": AssetIn(key=[GROUP, "goqa_questions"]),
    },
)
def goqa_splits(
    context: AssetExecutionContext,
    config: SplitConfig,
    goqa_claims: pl.DataFrame,
    goqa_questions: pl.DataFrame,
) -> pl.DataFrame:
    """Train/test split per country and variant (all, binary), decided on question identity."""
    rules = SplitRules(config.seed, config.train_fraction, config.train_cap, config.test_cap)
    frame = asset_frame(
        context, split_rows(goqa_claims, goqa_questions, context.partition_keys, rules), SPLITS_SCHEMA
    )
    partition_metadata(context, frame, lambda part: _split_metadata(part, config.seed))
    return frame
