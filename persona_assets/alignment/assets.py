"""Where the pipelines meet: every persona model answers the survey; how close is it to each country?"""

import polars as pl
from dagster import AssetExecutionContext, AssetIn, AssetsDefinition, asset

from persona_platform.partitions import agent_country_partitions, countries_partitions
from persona_platform.persona_assets.agents.adapters import serve_adapters
from persona_platform.persona_assets.alignment.similarity import OPINION_HASH
from persona_platform.persona_assets.alignment.tables import (
    ANSWER_SCHEMA,
    BASE,
    SUMMARY_SCHEMA,
    answer_rows,
    summary_rows,
)
from persona_platform.persona_assets.common import (
    AGENT_COUNTRY_PARTITION,
    COUNTRY_PARTITION,
    REPORT_STEP,
    experiment_model_step,
    experiment_step,
    results_table,
    table_columns,
)
from persona_platform.persona_assets.experiments import Experiment
from persona_platform.persona_assets.plots import heatmap, saved_plot
from persona_platform.persona_assets.steps import asset_frame, model_step, partition_metadata
from persona_platform.resources.artifacts import ArtifactStore
from persona_platform.resources.llm.resource import LLMResource

GROUP = "alignment"
VERSION = f"alignment-1-{OPINION_HASH}"
SURVEY_IN = AssetIn(key=["opinions", "goqa_survey"])


def experiment_assets(x: Experiment) -> list[AssetsDefinition]:
    """An experiment's persona models answering the survey, and how close each is to each country."""
    return [agent_opinions(x), base_opinions(x), opinion_alignment(x)]


def _similarity_metadata(frame: pl.DataFrame, skipped: int) -> dict:
    means = frame.group_by("agent", "country").agg(pl.col("similarity").mean()).sort("agent", "country")
    return {
        "questions_not_answerable_in_step": skipped,
        "mean_similarity": results_table(
            ["persona", "country", "similarity"], [[a, c, round(s, 3)] for a, c, s in means.iter_rows()]
        ),
    }


def agent_opinions(x: Experiment) -> AssetsDefinition:
    @asset(
        **experiment_model_step(x, GROUP, "agent_opinions", agent_country_partitions),
        code_version=x.code_version(VERSION),
        metadata=AGENT_COUNTRY_PARTITION | table_columns(ANSWER_SCHEMA),
        ins={"goqa_survey": SURVEY_IN, "lora_adapters": AssetIn(key=x.key("agents", "lora_adapters"))},
    )
    def agent_opinions(
        context: AssetExecutionContext,
        llm: LLMResource,
        goqa_survey: pl.DataFrame,
        lora_adapters: pl.DataFrame,
    ) -> pl.DataFrame:
        """Each agent's adapter answers the country's survey questions: a distribution over the option letters
        (normalised probabilities from score), compared with the country's by 1 - Jensen-Shannon distance."""
        dimensions = [
            agent_country_partitions.get_partition_key_from_str(k).keys_by_dimension
            for k in context.partition_keys
        ]
        with model_step(context, x.role("generator", llm), OPINION_HASH) as step:
            serve_adapters(step.engine, lora_adapters)
            rows, skipped = answer_rows(
                step.engine,
                goqa_survey,
                [(d["agent"], d["country"]) for d in dimensions],
                adapter_of=lambda persona: persona,
            )
            frame = step.frame(rows, ANSWER_SCHEMA)
        partition_metadata(context, frame, lambda part: _similarity_metadata(part, skipped))
        return frame

    return agent_opinions


def base_opinions(x: Experiment) -> AssetsDefinition:
    @asset(
        **experiment_model_step(x, GROUP, "base_opinions", countries_partitions),
        code_version=x.code_version(VERSION),
        metadata=COUNTRY_PARTITION | table_columns(ANSWER_SCHEMA),
        ins={"goqa_survey": SURVEY_IN},
    )
    def base_opinions(
        context: AssetExecutionContext, llm: LLMResource, goqa_survey: pl.DataFrame
    ) -> pl.DataFrame:
        """The base model answers each country's survey questions, compared like the agents (persona
        'base')."""
        with model_step(context, x.role("generator", llm), OPINION_HASH) as step:
            rows, skipped = answer_rows(
                step.engine,
                goqa_survey,
                [(BASE, c) for c in context.partition_keys],
                adapter_of=lambda _: None,
            )
            frame = step.frame(rows, ANSWER_SCHEMA)
        partition_metadata(context, frame, lambda part: _similarity_metadata(part, skipped))
        return frame

    return base_opinions


def opinion_alignment(x: Experiment) -> AssetsDefinition:
    @asset(
        key=x.key(GROUP, "opinion_alignment"),
        **(REPORT_STEP | experiment_step(x, GROUP)),
        metadata=table_columns(SUMMARY_SCHEMA),
        code_version=x.code_version(VERSION),
        ins={
            "agent_opinions": AssetIn(key=x.key(GROUP, "agent_opinions")),
            "base_opinions": AssetIn(key=x.key(GROUP, "base_opinions")),
        },
    )
    def opinion_alignment(
        context: AssetExecutionContext,
        artifacts: ArtifactStore,
        agent_opinions: pl.DataFrame,
        base_opinions: pl.DataFrame,
    ) -> pl.DataFrame:
        """Mean similarity (1 - Jensen-Shannon distance) of each persona model to each country, one row per
        (persona, country); the persona x country heatmap."""
        frame = asset_frame(context, summary_rows(pl.concat([base_opinions, agent_opinions])), SUMMARY_SCHEMA)
        personas = [BASE, *sorted(p for p in frame["persona"].unique() if p != BASE)]
        countries = sorted(frame["country"].unique())
        cell = {(r["persona"], r["country"]): r["similarity"] for r in frame.iter_rows(named=True)}
        values = [[cell.get((p, c), float("nan")) for c in countries] for p in personas]
        questions = dict(frame.group_by("country").agg(pl.col("questions").max()).iter_rows())
        figure = heatmap(
            "Opinion similarity to each country (1 - JS distance, mean over questions)",
            personas,
            countries,
            values,
            "similarity",
            fmt="{:.3f}",
            xlabel="country (survey answer distributions)",
            ylabel="persona model",
            higher_is_better=True,
            column_counts=[questions[c] for c in countries],
        )
        context.add_output_metadata(
            {
                "similarity": results_table(
                    list(SUMMARY_SCHEMA),
                    frame.select(list(SUMMARY_SCHEMA)).rows(),
                    SUMMARY_SCHEMA.descriptions,
                ),
                "plot/heatmap": saved_plot(x.artifacts(artifacts), figure, "alignment", "similarity"),
            }
        )
        return frame

    return opinion_alignment
