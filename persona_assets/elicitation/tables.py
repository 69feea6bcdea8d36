"""Claims for ICM and evaluation, read from the opinions tables (no Dagster here)."""

from __future__ import annotations

import polars as pl

from persona_assets.elicitation.evaluation import DemoClaim, TestClaim
from persona_assets.elicitation.icm import IcmClaim


def split_claims(splits: pl.DataFrame, claims: pl.DataFrame, country: str, variant: str, split: str) -> pl.DataFrame:
    """One country's claims of one split, in split order, with their text."""
    return (
        splits.filter((pl.col("country") == country) & (pl.col("variant") == variant) & (pl.col("split") == split))
        .join(claims.select("row_id", "question", "option"), left_on="claim_id", right_on="row_id")
        .sort("position")
    )


def test_split_claims(splits: pl.DataFrame, claims: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Test rows of every variant with their text, and the distinct claims among them (a claim in
    both variants is scored once)."""
    test = splits.filter(pl.col("split") == "test").join(
        claims.select("row_id", "question", "option"), left_on="claim_id", right_on="row_id"
    )
    return test, test.unique("claim_id", keep="first").sort("claim_id")


def icm_claims(train: pl.DataFrame) -> list[IcmClaim]:
    return [
        IcmClaim(uid, r["question_id"], r["question"], r["option"], r["label"])
        for uid, r in enumerate(train.iter_rows(named=True))
    ]


def demo_pool(labels: pl.DataFrame) -> list[DemoClaim]:
    """ICM-labelled train claims (in split order) with both their gold and ICM labels."""
    labelled = labels.filter(pl.col("icm_label").is_not_null()).sort("position")
    return [
        DemoClaim(r["claim_id"], r["question"], r["option"], r["label"], r["icm_label"])
        for r in labelled.iter_rows(named=True)
    ]


def test_claims(test: pl.DataFrame) -> list[TestClaim]:
    return [TestClaim(r["claim_id"], r["question"], r["option"], r["label"]) for r in test.iter_rows(named=True)]
