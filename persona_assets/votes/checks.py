"""Checks on the vote tables."""

import polars as pl
from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from persona_platform.persona_assets.common import schema_change_checks
from persona_platform.persona_assets.experiments import Experiment

GROUP = "votes"


@asset_check(
    asset=[GROUP, "vote_records"], description="Every voter name resolves to an agent of the registry."
)
def unknown_voter_names(vote_records: pl.DataFrame) -> AssetCheckResult:
    unknown = sorted(set(vote_records.filter(pl.col("agent").is_null())["name_as_written"]))
    return AssetCheckResult(
        passed=not unknown,
        severity=AssetCheckSeverity.WARN,
        metadata={"unknown_names": MetadataValue.json(unknown), "count": len(unknown)},
    )


def experiment_checks(x: Experiment) -> list:
    return schema_change_checks(list(x.key(GROUP, "vote_predictions").path))
