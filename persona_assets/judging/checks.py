"""Checks on the judges' tables: too many replies that failed to parse make every score meaningless."""

import polars as pl
from dagster import AssetCheckResult, AssetChecksDefinition, AssetCheckSeverity, asset_check

from persona_platform.persona_assets.experiments import Experiment
from persona_platform.persona_assets.judging.tables import (
    COMPARISON_FAILURES,
    JUDGMENT_FAILURES,
    failure_metadata,
)
from persona_platform.resources.settings import load_settings

GROUP = "judging"


def _check_failure_rate(frame: pl.DataFrame, failure_columns: list[str]) -> AssetCheckResult:
    limit = load_settings().judge_max_failure_rate
    metadata = failure_metadata(frame, failure_columns)
    return AssetCheckResult(
        passed=metadata["judge_failure_rate"] <= limit,
        severity=AssetCheckSeverity.ERROR,
        metadata={**metadata, "threshold (PERSONA_JUDGE_MAX_FAILURE_RATE)": limit, "rows": frame.height},
    )


def judgments_failure_rate(judgments: pl.DataFrame) -> AssetCheckResult:
    return _check_failure_rate(judgments, JUDGMENT_FAILURES)


def pairwise_failure_rate(pairwise_comparisons: pl.DataFrame) -> AssetCheckResult:
    return _check_failure_rate(pairwise_comparisons, COMPARISON_FAILURES)


def experiment_checks(x: Experiment) -> list[AssetChecksDefinition]:
    """Blocking checks on an experiment's judge replies: too many failures stop what reads them."""

    @asset_check(
        name="judgments_failure_rate",
        asset=x.key(GROUP, "judgments"),
        blocking=True,
        description=(
            "The share of judgments whose reply failed to parse is at most PERSONA_JUDGE_MAX_FAILURE_RATE."
        ),
    )
    def judgments_check(judgments: pl.DataFrame) -> AssetCheckResult:
        return judgments_failure_rate(judgments)

    @asset_check(
        name="pairwise_failure_rate",
        asset=x.key(GROUP, "pairwise_comparisons"),
        blocking=True,
        description="The share of pairs with a failed verdict is at most PERSONA_JUDGE_MAX_FAILURE_RATE.",
    )
    def pairwise_check(pairwise_comparisons: pl.DataFrame) -> AssetCheckResult:
        return pairwise_failure_rate(pairwise_comparisons)

    return [judgments_check, pairwise_check]
