"""Where the pipelines meet: every persona model answers the survey; how close is it to each country?"""

import polars as pl
from dagster import AssetExecutionContext, AssetIn, MetadataValue, asset

from partitions import agent_country_partitions, countries_partitions
from persona_assets.agents.assets import ensure_adapters
from persona_assets.alignment.similarity import (
    LETTERS,
    OPINION_HASH,
    normalize,
    normalize_logprobs,
    opinion_prompt,
    option_letters,
    similarity,
)
from persona_assets.common import (
    AGENT_COUNTRY_PARTITION,
    COUNTRY_PARTITION,
    MODEL_KINDS,
    ONE_RUN_PER_BACKFILL,
    OWNERS,
    TABLE_KINDS,
    WAREHOUSE_POOL,
    engine_metadata,
    gpu_step,
    markdown_table,
)
from persona_assets.provenance import Provenance, result_frame, row_ref
from persona_assets.reports.plots import heatmap, inline
from resources.artifacts import ArtifactStore
from resources.llm import ScoreRequest
from resources.llm.resource import LLMResource

GROUP = "alignment"
VERSION = f"alignment-1-{OPINION_HASH}"
BASE = "base"
ANSWER_SCHEMA = {"agent": pl.String, "country": pl.String, "question_id": pl.String,
                 "model_distribution": pl.List(pl.Float64), "country_distribution": pl.List(pl.Float64),
                 "similarity": pl.Float64}
SURVEY_IN = AssetIn(key=["opinions", "goqa_survey"])


def answer_rows(engine, survey: pl.DataFrame, pairs: list[tuple[str, str]], adapter_of) -> tuple[list[dict], int]:
    """For each (persona, country): the persona's letter distribution on every question with shares that sum above 0
    (ties count: a distribution is compared whole) and options that can be lettered; the rest are counted."""
    rows, skipped = [], 0
    answerable = (pl.col("distribution").list.sum().fill_null(0) > 0) & (pl.col("options").list.len() <= len(LETTERS))
    for persona, country in pairs:
        of_country = survey.filter(pl.col("country") == country)
        questions = of_country.filter(answerable).sort("question_id")
        skipped += of_country.height - questions.height
        requests = [ScoreRequest(opinion_prompt(r["question"], r["options"]), option_letters(len(r["options"])),
                                 adapter=adapter_of(persona)) for r in questions.iter_rows(named=True)]
        for r, logprobs in zip(questions.iter_rows(named=True), engine.score(requests), strict=True):
            model = normalize_logprobs(logprobs)
            survey_distribution = normalize(r["distribution"])
            rows.append({
                "row_id": f"{persona}/{country}/{r['question_id']}", "agent": persona, "adapter": adapter_of(persona), "country": country,
                "question_id": r["question_id"], "model_distribution": model, "country_distribution": survey_distribution,
                "similarity": similarity(model, survey_distribution),
                "partition_key": country if persona == BASE else f"{persona}|{country}",
                "input_ids": [row_ref("opinions.goqa_survey", r["row_id"])]
                + ([] if persona == BASE else [row_ref("agents.lora_adapters", persona)]),
            })
    return rows, skipped


def _metadata(meter, engine, frame: pl.DataFrame, skipped: int) -> dict:
    means = frame.group_by("agent", "country").agg(pl.col("similarity").mean()).sort("agent", "country")
    return {**engine_metadata(meter, engine.model_id), "questions_not_answerable": skipped,
            "mean_similarity": markdown_table(["persona", "country", "similarity"],
                                              [[a, c, f"{s:.3f}"] for a, c, s in means.iter_rows()])}


@asset(key_prefix=GROUP, group_name=GROUP, owners=OWNERS, kinds=MODEL_KINDS, **gpu_step(), code_version=VERSION,
       partitions_def=agent_country_partitions, metadata=AGENT_COUNTRY_PARTITION, backfill_policy=ONE_RUN_PER_BACKFILL,
       ins={"goqa_survey": SURVEY_IN, "lora_adapters": AssetIn(key=["agents", "lora_adapters"])})
def agent_opinions(context: AssetExecutionContext, llm: LLMResource, goqa_survey: pl.DataFrame, lora_adapters: pl.DataFrame) -> pl.DataFrame:
    """Each agent's adapter answers the country's survey questions: a distribution over the option letters
    (normalised probabilities from score), compared with the country's by 1 - Jensen-Shannon distance."""
    pairs = []
    for key in context.partition_keys:
        dims = agent_country_partitions.get_partition_key_from_str(key).keys_by_dimension
        pairs.append((dims["agent"], dims["country"]))
    with llm.metered() as (engine, meter):
        ensure_adapters(engine, lora_adapters)
        rows, skipped = answer_rows(engine, goqa_survey, pairs, adapter_of=lambda persona: persona)
    frame = result_frame(rows, ANSWER_SCHEMA, Provenance(context.run.run_id, VERSION, model_id=engine.model_id, prompt_hash=OPINION_HASH))
    context.add_output_metadata(_metadata(meter, engine, frame, skipped))
    return frame


@asset(key_prefix=GROUP, group_name=GROUP, owners=OWNERS, kinds=MODEL_KINDS, **gpu_step(), code_version=VERSION,
       partitions_def=countries_partitions, metadata=COUNTRY_PARTITION, backfill_policy=ONE_RUN_PER_BACKFILL,
       ins={"goqa_survey": SURVEY_IN})
def base_opinions(context: AssetExecutionContext, llm: LLMResource, goqa_survey: pl.DataFrame) -> pl.DataFrame:
    """The base model answers each country's survey questions, compared like the agents (persona 'base')."""
    with llm.metered() as (engine, meter):
        rows, skipped = answer_rows(engine, goqa_survey, [(BASE, c) for c in context.partition_keys], adapter_of=lambda _: None)
    frame = result_frame(rows, ANSWER_SCHEMA, Provenance(context.run.run_id, VERSION, model_id=engine.model_id, prompt_hash=OPINION_HASH))
    context.add_output_metadata(_metadata(meter, engine, frame, skipped))
    return frame


SUMMARY_SCHEMA = {"persona": pl.String, "country": pl.String, "questions": pl.Int64, "similarity": pl.Float64}


@asset(key_prefix=GROUP, group_name="reports", owners=OWNERS, kinds=TABLE_KINDS | {"matplotlib"}, pool=WAREHOUSE_POOL, code_version=VERSION,
       ins={"agent_opinions": AssetIn(key=[GROUP, "agent_opinions"]), "base_opinions": AssetIn(key=[GROUP, "base_opinions"])})
def opinion_alignment(context: AssetExecutionContext, artifacts: ArtifactStore, agent_opinions: pl.DataFrame,
                      base_opinions: pl.DataFrame) -> pl.DataFrame:
    """Mean similarity (1 - Jensen-Shannon distance) of each persona model to each country, one row per
    (persona, country); the persona x country heatmap."""
    answers = pl.concat([base_opinions, agent_opinions])
    means = answers.group_by("agent", "country").agg(pl.len().alias("questions"), pl.col("similarity").mean(),
                                                     pl.col("row_id")).sort("agent", "country")
    rows = [{"row_id": f"{a}/{c}", "persona": a, "country": c, "questions": n, "similarity": s, "partition_key": None,
             "input_ids": [row_ref(f"alignment.{'base' if a == BASE else 'agent'}_opinions", i) for i in ids]}
            for a, c, n, s, ids in means.iter_rows()]
    frame = result_frame(rows, SUMMARY_SCHEMA, Provenance(context.run.run_id, VERSION))
    personas = [BASE, *sorted(p for p in frame["persona"].unique() if p != BASE)]
    countries = sorted(frame["country"].unique())
    cell = {(r["persona"], r["country"]): r["similarity"] for r in rows}
    values = [[cell.get((p, c), float("nan")) for c in countries] for p in personas]
    png = heatmap("Opinion similarity to each country (1 - JS distance)", personas, countries, values, "similarity", fmt="{:.3f}")
    path, sha = artifacts.write(png, "plots", "alignment", "similarity.png")
    context.add_output_metadata({"heatmap": MetadataValue.md(f"`{path}` sha256 {sha[:12]}\n\n{inline(png, 'alignment')}")})
    return frame
