"""Checks on the survey, claims and splits. Blocking where a failure makes every downstream
result meaningless."""

import polars as pl
from dagster import AssetCheckResult, AssetCheckSeverity, AssetKey, MetadataValue, asset_check

from persona_platform.persona_assets.common import schema_change_checks

SURVEY = AssetKey(["opinions", "goqa_survey"])
CLAIMS = AssetKey(["opinions", "goqa_claims"])
SPLITS = AssetKey(["opinions", "goqa_splits"])


def groups_without_one_positive(claims: pl.DataFrame) -> pl.DataFrame:
    return (
        claims.group_by("question_id", "country")
        .agg(pl.col("label").sum().alias("positives"), pl.len().alias("claims"))
        .filter((pl.col("positives") != 1) | (pl.col("claims") != 2))
    )


def questions_in_train_and_test(splits: pl.DataFrame) -> pl.DataFrame:
    roles = splits.group_by("variant", "question_id").agg(pl.col("split").n_unique().alias("roles"))
    return roles.filter(pl.col("roles") > 1)


@asset_check(
    asset=SURVEY,
    description="Every survey row can make a claim; rows that cannot are counted by reason (warns).",
)
def survey_rows_usable(goqa_survey: pl.DataFrame) -> AssetCheckResult:
    unusable = goqa_survey.filter(~pl.col("usable"))
    by_reason = dict(unusable.group_by("unusable_reason").len().sort("unusable_reason").iter_rows())
    return AssetCheckResult(
        passed=unusable.height == 0,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "survey_rows": goqa_survey.height,
            "unusable_rows": unusable.height,
            "unusable_by_reason": MetadataValue.json(by_reason),
        },
    )


@asset_check(
    asset=CLAIMS,
    blocking=True,
    description="Every (question, country) has exactly two claims, one of them True.",
)
def one_positive_claim_per_group(goqa_claims: pl.DataFrame) -> AssetCheckResult:
    bad = groups_without_one_positive(goqa_claims)
    return AssetCheckResult(
        passed=bad.height == 0,
        metadata={"bad_groups": bad.height, "examples": MetadataValue.json(bad.head(5).to_dicts())},
    )


@asset_check(asset=CLAIMS, description="Claims are balanced: the share of True labels is 0.5 (within 0.05).")
def claim_label_balance(goqa_claims: pl.DataFrame) -> AssetCheckResult:
    share = float(goqa_claims["label"].mean()) if goqa_claims.height else float("nan")
    return AssetCheckResult(
        passed=abs(share - 0.5) <= 0.05, severity=AssetCheckSeverity.WARN, metadata={"positive_share": share}
    )


@asset_check(
    asset=SPLITS, blocking=True, description="No question is in train for one claim and in test for another."
)
def no_question_in_train_and_test(goqa_splits: pl.DataFrame) -> AssetCheckResult:
    leaked = questions_in_train_and_test(goqa_splits)
    return AssetCheckResult(passed=leaked.height == 0, metadata={"leaked_questions": leaked.height})


schema_checks = schema_change_checks(CLAIMS.path, SPLITS.path)
