"""Zero-shot baselines on each country's test split: the base model, and an instruction (chat) model."""

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
from persona_assets.elicitation.prompts import (
    CANDIDATES,
    CHAT_CANDIDATES,
    CHAT_HASH,
    ZERO_SHOT_HASH,
    chat_messages,
    parse_true_false,
    predicted_label,
    zero_shot_prompt,
)
from persona_assets.elicitation.tables import test_split_claims
from persona_assets.provenance import Provenance, result_frame, row_ref
from resources.llm import ChatPrompt, GenerateRequest, ScoreRequest
from resources.llm.resource import LLMResource

GROUP = "elicitation"
ZERO_SHOT_VERSION = f"zero-shot-1-{ZERO_SHOT_HASH}"
CHAT_VERSION = f"zero-shot-chat-2-{CHAT_HASH}"
BASELINE = dict(
    key_prefix=GROUP,
    group_name=GROUP,
    owners=OWNERS,
    kinds=MODEL_KINDS, **gpu_step(),
    partitions_def=countries_partitions,
    metadata=COUNTRY_PARTITION,
    backfill_policy=ONE_RUN_PER_BACKFILL,
    ins={"goqa_splits": AssetIn(key=["opinions", "goqa_splits"]), "goqa_claims": AssetIn(key=["opinions", "goqa_claims"])},
)

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


@asset(**BASELINE, code_version=ZERO_SHOT_VERSION)
def zero_shot_base_predictions(
    context: AssetExecutionContext, llm: LLMResource, goqa_splits: pl.DataFrame, goqa_claims: pl.DataFrame
) -> pl.DataFrame:
    """Zero-shot base-model baseline: log P(" True") vs log P(" False") for each test claim, no demonstrations."""
    test, claims = test_split_claims(goqa_splits, goqa_claims)
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


CHAT_SCHEMA = {
    "variant": pl.String,
    "country": pl.String,
    "claim_id": pl.String,
    "method": pl.String,
    "repeat": pl.Int64,
    "answered_by": pl.String,
    "reply": pl.String,
    "predicted_label": pl.Int64,
    "label": pl.Int64,
    "correct": pl.Boolean,
    "parse_failed": pl.Boolean,
}
CHAT = "zero_shot_chat"
BASE_CHAT_TEMPLATE = "zero_shot_base_chat_template"


class ChatBaselineConfig(Config):
    repeats: int = Field(default=1, description="Times an API is asked each claim (a server may not be deterministic even "
                                                "at temperature 0); the local engine scores exactly, once.")


@asset(**BASELINE, code_version=CHAT_VERSION)
def zero_shot_chat_predictions(
    context: AssetExecutionContext,
    config: ChatBaselineConfig,
    llm: LLMResource,
    chat_llm: LLMResource,
    goqa_splits: pl.DataFrame,
    goqa_claims: pl.DataFrame,
) -> pl.DataFrame:
    """Zero-shot instruction-model baseline: asked in a chat whether each test claim is the most popular answer.

    The chat model (PERSONA_CHAT_MODEL) scores "True" against "False" after its chat template where its
    engine can (a local backend); an OpenAI-compatible API (PERSONA_CHAT_BASE_URL) applies the template
    itself, so there the reply is asked for, must be exactly True or False, and anything else is stored as a
    parse failure, counted apart from wrong answers. With no chat model of its own, the base model answers
    through a chat template, and the rows say so: method `zero_shot_base_chat_template`, never `zero_shot_chat`.
    """
    test, claims = test_split_claims(goqa_splits, goqa_claims)
    messages = [chat_messages(r["question"], r["option"], r["country"]) for r in claims.iter_rows(named=True)]
    method = CHAT if chat_llm.model != llm.model else BASE_CHAT_TEMPLATE
    with chat_llm.metered() as (engine, meter):
        if engine.scores_chat_prompts:
            scores = engine.score([ScoreRequest(ChatPrompt(m), CHAT_CANDIDATES) for m in messages])
            predictions = [[predicted_label(t, f) for t, f in scores]]
            replies = [["True" if p else "False" for p in predictions[0]]]
            answered_by = f"local:{engine.model_id}"
        else:
            # Each repeat is its own seed: a server that honours seeds still answers each repeat independently.
            replies = [engine.generate([GenerateRequest(ChatPrompt(m), max_new_tokens=5, temperature=0.0, seed=repeat)
                                        for m in messages])
                       for repeat in range(config.repeats)]
            predictions = [[parse_true_false(reply) for reply in repeat] for repeat in replies]
            answered_by = f"api:{engine.model_id}"
    rows = chat_rows(test, list(claims["claim_id"]), replies, predictions, method, answered_by)
    frame = result_frame(rows, CHAT_SCHEMA, Provenance(context.run.run_id, CHAT_VERSION, model_id=engine.model_id,
                                                       prompt_hash=CHAT_HASH))
    context.add_output_metadata(
        {
            **engine_metadata(meter, engine.model_id),
            "method": method,
            "answered_by": answered_by,
            "repeats": len(replies),
            "parse_failures": int(frame["parse_failed"].sum()),
        }
    )
    return frame


def chat_rows(test: pl.DataFrame, claim_ids: list[str], replies: list[list[str]], predictions: list[list[int | None]],
              method: str, answered_by: str) -> list[dict]:
    """One row per (repeat, variant, test claim); replies and predictions are per repeat, in claim_ids order."""
    rows = []
    for repeat, (repeat_replies, repeat_predictions) in enumerate(zip(replies, predictions, strict=True)):
        by_claim = dict(zip(claim_ids, zip(repeat_replies, repeat_predictions, strict=True), strict=True))
        for r in test.sort("variant", "country", "position").iter_rows(named=True):
            reply, predicted = by_claim[r["claim_id"]]
            rows.append({
                "row_id": f"{r['variant']}/r{repeat}/{r['claim_id']}", "variant": r["variant"], "country": r["country"],
                "claim_id": r["claim_id"], "method": method, "repeat": repeat, "answered_by": answered_by,
                "reply": reply, "predicted_label": predicted, "label": r["label"],
                "correct": None if predicted is None else predicted == r["label"], "parse_failed": predicted is None,
                "partition_key": r["country"],
                "input_ids": [row_ref("opinions.goqa_splits", r["row_id"]), row_ref("opinions.goqa_claims", r["claim_id"])],
            })
    return rows
