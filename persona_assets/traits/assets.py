"""Traits: screened monologue chunks, probe questions (with human review), monologue prompts,
agent profiles."""

import polars as pl
from dagster import AssetExecutionContext, AssetIn, AssetKey, AssetsDefinition, AssetSpec, Config, asset
from pydantic import Field

from persona_platform.partitions import DISPLAY_NAMES, agents_partitions
from persona_platform.persona_assets.common import (
    AGENT_PARTITION,
    OWNERS,
    experiment_model_step,
    results_table,
    table_columns,
)
from persona_platform.persona_assets.experiments import Experiment
from persona_platform.persona_assets.review import REVIEW_SCHEMA, REVIEW_TABLE
from persona_platform.persona_assets.steps import model_step, partition_metadata
from persona_platform.persona_assets.structured_output import ask_structured
from persona_platform.persona_assets.traits import prompts
from persona_platform.persona_assets.traits.extraction import (
    build_profiles,
    kept,
    longest_first,
    monologue_chunks,
    pack_remarks,
    screen_until_cap,
)
from persona_platform.persona_assets.traits.tables import (
    MONOLOGUE_PROMPT_SCHEMA,
    PROBE_SCHEMA,
    PROFILE_SCHEMA,
    SCREENING_SCHEMA,
    monologue_prompt_rows,
    monologues_of,
    probe_rows,
    profile_row,
    question_metadata,
    screening_id,
    screening_rows,
    screening_table,
)
from persona_platform.resources.llm import ChatPrompt
from persona_platform.resources.llm.resource import LLMResource
from persona_platform.resources.warehouse import WarehouseResource, experiment_schema

GROUP = "traits"


def experiment_assets(x: Experiment) -> list[AssetsDefinition]:
    """An experiment's trait screenings, agent profiles and the probe questions and prompts they yield."""
    return [trait_screenings(x), probe_questions(x), monologue_prompts(x), agent_profiles(x)]


def x_table(x: Experiment, table: str) -> str:
    """The experiment's table as its rows and their reviews name it: the generator wrote these questions, so
    a review of one experiment's question is not another's."""
    return f"{experiment_schema(x.name, GROUP)}.{table}"


MONOLOGUES_IN = {"monologues": AssetIn(key=["agents", "monologues"])}
REVIEWS = AssetKey([GROUP, REVIEW_TABLE])

question_reviews = AssetSpec(
    REVIEWS,
    group_name=GROUP,
    owners=OWNERS,
    kinds={"duckdb"},
    metadata=table_columns(REVIEW_SCHEMA),
    description="People's reviews of probe questions and monologue prompts (keep, edit, drop), written by "
    "`persona review-questions --kind traits|monologues`; applied when those assets next materialize.",
)


class SamplingConfig(Config):
    temperature: float = Field(default=0.7, description="Upstream: 0.7.")
    top_p: float = Field(default=0.9, description="Upstream: 0.9.")
    seed: int = Field(default=0)


class ScreeningConfig(SamplingConfig):
    chunk_words: int = Field(default=200, description="Monologues are cut into chunks of this many words.")
    max_items_per_trait: int = Field(
        default=25, description="Relevant items kept per agent and trait (the cap holds)."
    )
    summary_chars: int = Field(default=300, description="Longest summary a screening reply may hold.")


class QuestionConfig(SamplingConfig):
    question_chars: int = Field(default=200, description="Longest question a reply may hold.")


class MonologuePromptConfig(QuestionConfig):
    max_monologues: int = Field(
        default=20, description="Monologues per agent that get a prompt (upstream: 20)."
    )


class ProfileConfig(Config):
    longest_monologues: int = Field(default=20, description="The longest monologues read for the profile.")
    block_chars: int = Field(
        default=5000, description="Monologues are packed into blocks of at most this many characters."
    )
    partial_tokens: int = Field(default=500, description="New tokens for each block's partial profile.")
    profile_tokens: int = Field(default=700, description="New tokens for the consolidated profile.")
    interview_questions: int = Field(default=10, description="Interview questions per agent.")
    question_chars: int = Field(default=200)


def _screening_metadata(screenings: pl.DataFrame) -> dict:
    return {
        "failures": int(screenings["failure"].is_not_null().sum()),
        "per_agent_and_trait": results_table(*screening_table(screenings)),
    }


def _sampling(config: SamplingConfig) -> dict:
    return {"temperature": config.temperature, "top_p": config.top_p, "seed": config.seed}


def trait_screenings(x: Experiment) -> AssetsDefinition:
    @asset(
        **experiment_model_step(x, GROUP, "trait_screenings", agents_partitions),
        metadata=AGENT_PARTITION | table_columns(SCREENING_SCHEMA),
        ins=MONOLOGUES_IN,
        code_version=f"screenings-1-{prompts.TRAIT_HASH}",
    )
    def trait_screenings(
        context: AssetExecutionContext,
        config: x.configured(ScreeningConfig, "trait_screenings"),
        llm: LLMResource,
        monologues: pl.DataFrame,
    ) -> pl.DataFrame:
        """Each monologue chunk screened for each trait (belief, memory, personality): a verdict and a
        summary, as constrained JSON. Chunks are screened in order until an agent has its cap of relevant
        items per trait; `kept` marks the first ones up to the cap. Replies that fail to parse are rows with
        a `failure`."""
        rows = []
        with model_step(context, x.role("generator", llm), prompts.TRAIT_HASH) as step:
            for agent in context.partition_keys:
                name = DISPLAY_NAMES[agent]
                chunks = monologue_chunks(monologues_of(monologues, agent), config.chunk_words)
                schema = prompts.screening_schema(config.summary_chars)

                def screen(batch, name=name, schema=schema):
                    chats = [
                        ChatPrompt(prompts.screening_messages(trait, name, chunk.text))
                        for trait, chunk in batch
                    ]
                    return ask_structured(
                        step.engine, chats, schema, config.summary_chars, **_sampling(config)
                    )

                made = screen_until_cap(chunks, prompts.TRAITS, config.max_items_per_trait, screen)
                for screenings in made.values():  # per trait; each screening carries its trait
                    kept_ids = {screening_id(s) for s in kept(screenings, config.max_items_per_trait)}
                    rows += screening_rows(agent, screenings, kept_ids)
            frame = step.frame(rows, SCREENING_SCHEMA)
        partition_metadata(context, frame, _screening_metadata)
        return frame

    return trait_screenings


def probe_questions(x: Experiment) -> AssetsDefinition:
    @asset(
        **experiment_model_step(x, GROUP, "probe_questions", agents_partitions),
        metadata=AGENT_PARTITION | table_columns(PROBE_SCHEMA),
        ins={"trait_screenings": AssetIn(key=x.key(GROUP, "trait_screenings"))},
        deps=[REVIEWS],
        code_version=f"probe-questions-1-{prompts.TRAIT_HASH}",
    )
    def probe_questions(
        context: AssetExecutionContext,
        config: x.configured(QuestionConfig, "probe_questions"),
        llm: LLMResource,
        warehouse: WarehouseResource,
        trait_screenings: pl.DataFrame,
    ) -> pl.DataFrame:
        """One probe question per kept trait item, generated from its summary; the reviewed text replaces it
        where a person reviewed it (`persona review-questions --kind traits`) and a dropped question is left
        out."""
        reviews = warehouse.read_optional(GROUP, REVIEW_TABLE)
        items = trait_screenings.filter(pl.col("kept") & pl.col("agent").is_in(context.partition_keys)).sort(
            "agent", "trait", "chunk_id"
        )
        schema = prompts.question_schema(config.question_chars)
        chats = [
            ChatPrompt(prompts.question_messages(r["trait"], DISPLAY_NAMES[r["agent"]], r["summary"]))
            for r in items.iter_rows(named=True)
        ]
        with model_step(context, x.role("generator", llm), prompts.TRAIT_HASH) as step:
            answers = ask_structured(step.engine, chats, schema, config.question_chars, **_sampling(config))
            rows, dropped = probe_rows(items, answers, reviews, x_table(x, "probe_questions"))
            frame = step.frame(rows, PROBE_SCHEMA)
        partition_metadata(context, frame, lambda part: question_metadata(part, dropped))
        return frame

    return probe_questions


def monologue_prompts(x: Experiment) -> AssetsDefinition:
    @asset(
        **experiment_model_step(x, GROUP, "monologue_prompts", agents_partitions),
        metadata=AGENT_PARTITION | table_columns(MONOLOGUE_PROMPT_SCHEMA),
        ins=MONOLOGUES_IN,
        deps=[REVIEWS],
        code_version=f"monologue-prompts-1-{prompts.MONOLOGUE_HASH}",
    )
    def monologue_prompts(
        context: AssetExecutionContext,
        config: x.configured(MonologuePromptConfig, "monologue_prompts"),
        llm: LLMResource,
        warehouse: WarehouseResource,
        monologues: pl.DataFrame,
    ) -> pl.DataFrame:
        """For each monologue (up to the per-agent limit), the open question that would draw it out:
        the monologue task's prompt, with the monologue as its reference. Reviewed like probe
        questions (`--kind monologues`)."""
        reviews = warehouse.read_optional(GROUP, REVIEW_TABLE)
        items = [
            (agent, mid, text)
            for agent in context.partition_keys
            for mid, text in monologues_of(monologues, agent)[: config.max_monologues]
        ]
        schema = prompts.question_schema(config.question_chars)
        chats = [
            ChatPrompt(prompts.monologue_messages(DISPLAY_NAMES[agent], text)) for agent, _, text in items
        ]
        with model_step(context, x.role("generator", llm), prompts.MONOLOGUE_HASH) as step:
            answers = ask_structured(step.engine, chats, schema, config.question_chars, **_sampling(config))
            rows, dropped = monologue_prompt_rows(items, answers, reviews, x_table(x, "monologue_prompts"))
            frame = step.frame(rows, MONOLOGUE_PROMPT_SCHEMA)
        partition_metadata(context, frame, lambda part: question_metadata(part, dropped))
        return frame

    return monologue_prompts


def agent_profiles(x: Experiment) -> AssetsDefinition:
    @asset(
        **experiment_model_step(x, GROUP, "agent_profiles", agents_partitions),
        metadata=AGENT_PARTITION | table_columns(PROFILE_SCHEMA),
        ins=MONOLOGUES_IN,
        code_version=f"profiles-1-{prompts.PROFILE_HASH}",
    )
    def agent_profiles(
        context: AssetExecutionContext,
        config: x.configured(ProfileConfig, "agent_profiles"),
        llm: LLMResource,
        monologues: pl.DataFrame,
    ) -> pl.DataFrame:
        """A consolidated persona profile per agent from its longest monologues (partial profiles of
        packed blocks, merged; greedy), with interview questions that test adherence to it. The
        persona baseline is prompted with it."""
        used = {
            agent: longest_first(monologues_of(monologues, agent), config.longest_monologues)
            for agent in context.partition_keys
        }
        people = [
            (DISPLAY_NAMES[agent], pack_remarks([t for _, t in used[agent]], config.block_chars))
            for agent in context.partition_keys
        ]
        with model_step(context, x.role("generator", llm), prompts.PROFILE_HASH) as step:
            profiles = build_profiles(
                step.engine,
                people,
                partial_tokens=config.partial_tokens,
                profile_tokens=config.profile_tokens,
                interview_questions=config.interview_questions,
                question_chars=config.question_chars,
            )
            rows = [
                profile_row(agent, profile, [mid for mid, _ in used[agent]])
                for agent, profile in zip(context.partition_keys, profiles, strict=True)
            ]
            frame = step.frame(rows, PROFILE_SCHEMA)
        partition_metadata(
            context, frame, lambda part: {"failures": int(part["failure"].is_not_null().sum())}
        )
        return frame

    return agent_profiles
