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
    gpu_step,
    markdown_table,
)
from persona_assets.elicitation.prompts import CHAT_CANDIDATES, CHAT_HASH, chat_messages, parse_true_false, predicted_label
from persona_assets.elicitation.tables import CHAT_SCHEMA, chat_rows, test_split_claims
from persona_assets.provenance import Provenance, result_frame
from persona_assets.steps import engine_metadata
from resources.llm import ChatPrompt, LLMResource, ScoreRequest
from resources.llm.chat_api import ChatApiResource

GROUP = "elicitation"
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
    chat_api: ChatApiResource,
    goqa_splits: pl.DataFrame,
    goqa_claims: pl.DataFrame,
) -> pl.DataFrame:
    """Zero-shot instruction-model baseline: asked in a chat whether each test claim is the most popular answer.

    Through an OpenAI-compatible API when one is set (the reply must be exactly True or False;
    anything else is stored as a parse failure, counted apart from wrong answers), else through a
    local instruction model (PERSONA_CHAT_MODEL) scoring "True" against "False" after its chat
    template. With neither, the base model answers through a chat template, and the rows say so:
    method `zero_shot_base_chat_template`, never `zero_shot_chat`.
    """
    test, claims = test_split_claims(goqa_splits, goqa_claims)
    messages = [chat_messages(r["question"], r["option"], r["country"]) for r in claims.iter_rows(named=True)]
    if chat_api.enabled:
        method, answered_by, model_id = CHAT, chat_api.describe(), chat_api.model
        replies = [[chat_api.complete(list(m)) for m in messages] for _ in range(config.repeats)]
        predictions = [[parse_true_false(reply) for reply in repeat] for repeat in replies]
        meter, engine_id = None, None
    else:
        method = CHAT if chat_llm.model != llm.model else BASE_CHAT_TEMPLATE
        with chat_llm.metered() as (engine, meter):
            scores = engine.score([ScoreRequest(ChatPrompt(m), CHAT_CANDIDATES) for m in messages])
        answered_by, model_id, engine_id = f"local:{engine.model_id}", engine.model_id, engine.model_id
        predictions = [[predicted_label(t, f) for t, f in scores]]
        replies = [["True" if p else "False" for p in predictions[0]]]
    rows = chat_rows(test, list(claims["claim_id"]), replies, predictions, method, answered_by)
    frame = result_frame(rows, CHAT_SCHEMA, Provenance(context.run.run_id, CHAT_VERSION, model_id=model_id, prompt_hash=CHAT_HASH))
    context.add_output_metadata(
        {
            **(engine_metadata(meter, engine_id) if meter else {}),
            "method": method,
            "answered_by": answered_by,
            "repeats": len(replies),
            "parse_failures": int(frame["parse_failed"].sum()),
        }
    )
    return frame

