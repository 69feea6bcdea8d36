"""Checks on the fine-tuning tables: does each country persona stand closest to its own country?"""

import polars as pl
from dagster import AssetCheckResult, AssetChecksDefinition, AssetCheckSeverity, asset_check

from persona_platform.persona_assets.common import schema_change_checks
from persona_platform.persona_assets.experiments import Experiment
from persona_platform.persona_assets.finetune.tables import diagonal_table, diagonal_tests
from persona_platform.persona_assets.verdicts import DIAGONAL_ALPHA, diagonal_verdict

GROUP = "finetune"


def diagonal_result(alignment: pl.DataFrame) -> AssetCheckResult:
    """Passes when the diagonal of the ICM-trained personas' matrix stands out in every variant. A warning,
    not an error: a model without the signal (the embedded one) is a finding, not a broken run."""
    tests = diagonal_tests(alignment)
    icm = [t for t in tests if t["labels"] == "icm" and t["p_value"] is not None]
    return AssetCheckResult(
        passed=bool(icm) and all(t["p_value"] <= DIAGONAL_ALPHA for t in icm),
        severity=AssetCheckSeverity.WARN,
        metadata={
            "verdict": diagonal_verdict(tests),
            "diagonal": diagonal_table(tests),
            "alpha": DIAGONAL_ALPHA,
        },
    )


def experiment_checks(x: Experiment) -> list[AssetChecksDefinition]:
    @asset_check(
        name="diagonal_stands_out",
        asset=x.key(GROUP, "country_alignment"),
        description="Each ICM-trained country persona is closer to its own country's answers than to the "
        f"others' (one-sided permutation test over pairings, p <= {DIAGONAL_ALPHA}).",
    )
    def diagonal_check(country_alignment: pl.DataFrame) -> AssetCheckResult:
        return diagonal_result(country_alignment)

    return [
        diagonal_check,
        *schema_change_checks(
            list(x.key(GROUP, "country_adapters").path), list(x.key(GROUP, "finetuned_predictions").path)
        ),
    ]
