"""Few-shot evaluations per country: gold, ICM and accuracy-matched random demonstrations."""

import polars as pl
from dagster import AssetExecutionContext, AssetIn, Config, asset
from pydantic import Field

from partitions import countries_partitions
from persona_assets.common import (
    COUNTRY_PARTITION,
    MODEL_KINDS,
    ONE_RUN_PER_BACKFILL,
    OWNERS,
    engine_metadata,
    gpu_step,
    markdown_table,
)
from persona_assets.elicitation.evaluation import build_conditions, condition_margins
from persona_assets.elicitation.prompts import FEW_SHOT_HASH
from persona_assets.elicitation.tables import demo_pool, split_claims, test_claims
from persona_assets.provenance import Provenance, result_frame, row_ref
from resources.llm.resource import LLMResource

GROUP = "elicitation"
EVALUATION_VERSION = f"few-shot-1-{FEW_SHOT_HASH}"

PREDICTION_SCHEMA = {
    "variant": pl.String,
    "country": pl.String,
    "method": pl.String,
    "k": pl.Int64,
    "repeat": pl.Int64,
    "claim_id": pl.String,
    "margin": pl.Float64,
    "predicted_label": pl.Int64,
    "label": pl.Int64,
    "correct": pl.Boolean,
}


class FewShotConfig(Config):
    repeats: int = Field(default=10, description="Demonstration draws (subset and order) per number of examples.")
    example_counts: list[int] = Field(
        default=[10, 20, 50, 75, 100, 125, 150, 200, 250],
        description="Numbers of in-context examples; every ICM-labelled claim (k = M) is always added.",
    )
    seed: int = Field(default=0, description="Seeds the draws of demonstrations and of random-label errors.")


@asset(
    key_prefix=GROUP,
    group_name=GROUP,
    owners=OWNERS,
    kinds=MODEL_KINDS, **gpu_step(),
    code_version=EVALUATION_VERSION,
    partitions_def=countries_partitions,
    metadata=COUNTRY_PARTITION,
    backfill_policy=ONE_RUN_PER_BACKFILL,
    ins={
        "icm_labels": AssetIn(key=[GROUP, "icm_labels"]),
        "goqa_splits": AssetIn(key=["opinions", "goqa_splits"]),
        "goqa_claims": AssetIn(key=["opinions", "goqa_claims"]),
    },
)
def few_shot_predictions(
    context: AssetExecutionContext,
    config: FewShotConfig,
    llm: LLMResource,
    icm_labels: pl.DataFrame,
    goqa_splits: pl.DataFrame,
    goqa_claims: pl.DataFrame,
) -> pl.DataFrame:
    """Test predictions with k demonstrations labelled by gold, ICM or accuracy-matched random labels."""
    rows = []
    with llm.metered() as (engine, meter):
        for country in context.partition_keys:
            for variant in icm_labels.filter(pl.col("country") == country)["variant"].unique().sort():
                pool = demo_pool(icm_labels.filter((pl.col("country") == country) & (pl.col("variant") == variant)))
                tests = test_claims(split_claims(goqa_splits, goqa_claims, country, variant, "test"))
                if not pool or not tests:
                    continue
                for condition in build_conditions(pool, config.example_counts, config.repeats, config.seed):
                    demo_refs = [row_ref("elicitation.icm_labels", f"{variant}/{d}") for d in condition.demo_ids]
                    margins = condition_margins(engine, country, condition, tests)
                    for test, margin in zip(tests, margins, strict=True):
                        predicted = int(margin > 0)
                        rows.append(
                            {
                                "row_id": f"{variant}/{condition.method}/k{condition.k}/r{condition.repeat}/{test.claim_id}",
                                "variant": variant, "country": country, "method": condition.method,
                                "k": condition.k, "repeat": condition.repeat, "claim_id": test.claim_id,
                                "margin": margin, "predicted_label": predicted, "label": test.label,
                                "correct": predicted == test.label, "partition_key": country,
                                "input_ids": [row_ref("opinions.goqa_splits", f"{variant}/{test.claim_id}"), *demo_refs],
                            }
                        )
    provenance = Provenance(context.run.run_id, EVALUATION_VERSION, model_id=engine.model_id, prompt_hash=FEW_SHOT_HASH)
    frame = result_frame(rows, PREDICTION_SCHEMA, provenance)
    accuracy = (
        frame.group_by("country", "variant", "method", "k")
        .agg(pl.col("correct").mean().alias("accuracy"))
        .sort("country", "variant", "k", "method")
    )
    context.add_output_metadata(
        {
            **engine_metadata(meter, engine.model_id),
            "accuracy_by_k": markdown_table(
                ["country", "variant", "method", "k", "mean accuracy"],
                [[c, v, m, k, f"{a:.3f}"] for c, v, m, k, a in accuracy.iter_rows()],
            ),
        }
    )
    return frame
