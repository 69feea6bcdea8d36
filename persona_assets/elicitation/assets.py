"""Persona elicitation assets (per country): baselines on the test split."""

import polars as pl
from dagster import AssetExecutionContext, AssetIn, asset

from partitions import countries_partitions
from persona_assets.common import (
    COUNTRY_PARTITION,
    MODEL_KINDS,
    ONE_RUN_PER_BACKFILL,
    OWNERS,
    engine_metadata,
    markdown_table,
)
from persona_assets.elicitation.prompts import (
    CANDIDATES,
    ZERO_SHOT_HASH,
    predicted_label,
    zero_shot_prompt,
)
from persona_assets.provenance import Provenance, result_frame, row_ref
from resources.llm import LLMResource, ScoreRequest

GROUP = "elicitation"
ZERO_SHOT_VERSION = f"zero-shot-1-{ZERO_SHOT_HASH}"

PREDICTION_SCHEMA = {
    "variant": pl.String,
    "country": pl.String,
    "claim_id": pl.String,
    "logprob_true": pl.Float64,
    "logprob_false": pl.Float64,
    "predicted_label": pl.Int64,
    "label": pl.Int64,
    "correct": pl.Boolean,
}


@asset(
    key_prefix=GROUP,
    group_name=GROUP,
    owners=OWNERS,
    kinds=MODEL_KINDS,
    code_version=ZERO_SHOT_VERSION,
    partitions_def=countries_partitions,
    metadata=COUNTRY_PARTITION,
    backfill_policy=ONE_RUN_PER_BACKFILL,
    ins={
        "goqa_splits": AssetIn(key=["opinions", "goqa_splits"]),
        "goqa_claims": AssetIn(key=["opinions", "goqa_claims"]),
    },
)
def zero_shot_base_predictions(
    context: AssetExecutionContext, llm: LLMResource, goqa_splits: pl.DataFrame, goqa_claims: pl.DataFrame
) -> pl.DataFrame:
    """Zero-shot base-model baseline: log P(" True") vs log P(" False") for each test claim, no demonstrations."""
    test = goqa_splits.filter(pl.col("split") == "test").join(
        goqa_claims.select("row_id", "question", "option"), left_on="claim_id", right_on="row_id"
    )
    # A claim in both variants is scored once.
    claims = test.unique("claim_id", keep="first").sort("claim_id")
    with llm.metered() as (engine, meter):
        scores = engine.score(
            [ScoreRequest(zero_shot_prompt(r["question"], r["option"], r["country"]), CANDIDATES)
             for r in claims.iter_rows(named=True)]
        )
    by_claim = dict(zip(claims["claim_id"], scores, strict=True))
    rows = []
    for r in test.sort("variant", "country", "position").iter_rows(named=True):
        lp_true, lp_false = by_claim[r["claim_id"]]
        predicted = predicted_label(lp_true, lp_false)
        rows.append(
            {
                "row_id": f"{r['variant']}/{r['claim_id']}",
                "variant": r["variant"],
                "country": r["country"],
                "claim_id": r["claim_id"],
                "logprob_true": lp_true,
                "logprob_false": lp_false,
                "predicted_label": predicted,
                "label": r["label"],
                "correct": predicted == r["label"],
                "partition_key": r["country"],
                "input_ids": [row_ref("opinions.goqa_splits", r["row_id"]), row_ref("opinions.goqa_claims", r["claim_id"])],
            }
        )
    provenance = Provenance(context.run.run_id, ZERO_SHOT_VERSION, model_id=engine.model_id, prompt_hash=ZERO_SHOT_HASH)
    frame = result_frame(rows, PREDICTION_SCHEMA, provenance)
    accuracy = frame.group_by("country", "variant").agg(pl.len(), pl.col("correct").mean()).sort("country", "variant")
    context.add_output_metadata(
        {
            **engine_metadata(meter, engine.model_id),
            "accuracy": markdown_table(
                ["country", "variant", "test claims", "accuracy"],
                [[c, v, n, f"{a:.3f}"] for c, v, n, a in accuracy.iter_rows()],
            ),
        }
    )
    return frame
