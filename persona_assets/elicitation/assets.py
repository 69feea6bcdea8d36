"""Persona elicitation per country: ICM label search, zero-shot baselines, few-shot evaluations."""

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetOut,
    AssetsDefinition,
    Config,
    MetadataValue,
    Output,
    asset,
    multi_asset,
)
from pydantic import Field

from persona_platform.partitions import countries_partitions
from persona_platform.persona_assets.common import (
    COUNTRY_PARTITION,
    MODEL_KINDS,
    OWNERS,
    experiment_model_step,
    gpu_step,
    model_backfill,
    results_table,
    table_columns,
)
from persona_platform.persona_assets.elicitation.evaluation import build_conditions, chat_answers
from persona_platform.persona_assets.elicitation.icm import ClaimScorer, IcmParams, IcmSearch, SearchState
from persona_platform.persona_assets.elicitation.prompts import (
    CANDIDATES,
    CHAT_HASH,
    FEW_SHOT_HASH,
    ZERO_SHOT_HASH,
    chat_messages,
    zero_shot_prompt,
)
from persona_platform.persona_assets.elicitation.tables import (
    CHAT_SCHEMA,
    FEW_SHOT_SCHEMA,
    LABEL_SCHEMA,
    TRACE_SCHEMA,
    ZERO_SHOT_SCHEMA,
    chat_metadata,
    chat_rows,
    demo_pool,
    few_shot_accuracy_table,
    few_shot_rows,
    icm_claims,
    label_rows,
    search_table,
    split_claims,
    test_claims,
    test_split_claims,
    trace_rows,
    zero_shot_accuracy_table,
    zero_shot_rows,
)
from persona_platform.persona_assets.experiments import Experiment
from persona_platform.persona_assets.opinions.splits import VARIANTS
from persona_platform.persona_assets.plots import saved_plot, search_trace
from persona_platform.persona_assets.progress import Tracker
from persona_platform.persona_assets.steps import model_step, partition_metadata
from persona_platform.resources.artifacts import ArtifactStore
from persona_platform.resources.llm import Engine, ScoreRequest
from persona_platform.resources.llm.resource import LLMResource

GROUP = "elicitation"
ICM_VERSION = f"icm-2-{FEW_SHOT_HASH}"
ZERO_SHOT_VERSION = f"zero-shot-1-{ZERO_SHOT_HASH}"
EVALUATION_VERSION = f"few-shot-1-{FEW_SHOT_HASH}"
CHAT_VERSION = f"zero-shot-chat-2-{CHAT_HASH}"
# The chat baseline's method: an instruction model of its own, or the generator through a chat template.
CHAT, BASE_CHAT_TEMPLATE = "zero_shot_chat", "zero_shot_base_chat_template"
SPLITS_IN = {
    "goqa_splits": AssetIn(key=["opinions", "goqa_splits"]),
    "goqa_claims": AssetIn(key=["opinions", "goqa_claims"]),
}


class IcmConfig(Config):
    alpha: float = Field(default=3.5, description="Weight of mutual predictability against inconsistency.")
    num_seed: int = Field(default=12, description="Claims labelled at random to start (half True).")
    iterations: int = Field(default=1000, description="Annealing iterations K.")
    consistency_fix_iterations: int = Field(default=20, description="Repair rounds at the start.")
    proposal_fix_iterations: int = Field(default=10, description="Repair rounds inside each proposal.")
    initial_temperature: float = Field(default=10.0)
    final_temperature: float = Field(default=0.1)
    schedule_constant: float = Field(
        default=2.75, description="T = max(final, initial / (1 + c ln(1 + accepted)))."
    )
    consistency: str = Field(default="exactly_one", description="exactly_one, at_most_one or none.")
    pool_order: str = Field(
        default="tree", description="tree (prefix reuse, seeded leaf order) or naive leave-one-out prompts."
    )
    seed: int = Field(
        default=0, description="Seeds every random choice of the search, and the tree's leaf order."
    )
    checkpoint_every: int = Field(default=25, description="Save the search state every N iterations.")
    variants: list[str] = Field(default=list(VARIANTS), description="Claim variants to search.")

    def params(self) -> IcmParams:
        return IcmParams(
            alpha=self.alpha,
            num_seed=self.num_seed,
            iterations=self.iterations,
            consistency_fix_iterations=self.consistency_fix_iterations,
            proposal_fix_iterations=self.proposal_fix_iterations,
            initial_temperature=self.initial_temperature,
            final_temperature=self.final_temperature,
            schedule_constant=self.schedule_constant,
            consistency=self.consistency,
            pool_order=self.pool_order,
            seed=self.seed,
        )


def checkpoint_name(
    country: str, variant: str, params: IcmParams, claim_ids: list[str], model_id: str
) -> tuple[str, ...]:
    """A checkpoint only resumes the same search: same claims, parameters, model and prompt."""
    key = json.dumps([asdict(params), claim_ids, model_id, FEW_SHOT_HASH]).encode()
    return ("checkpoints", "icm", country, variant, f"{hashlib.sha256(key).hexdigest()[:16]}.json")


def resumable_search(
    engine: Engine,
    artifacts: ArtifactStore,
    country: str,
    variant: str,
    train: pl.DataFrame,
    config: IcmConfig,
    log: Callable[[str], None],
) -> tuple[IcmSearch, SearchState, int | None]:
    """Run (or resume from its checkpoint) one country's search over one variant's train claims; the search,
    its final state and the iteration it resumed from."""
    params, claims = config.params(), icm_claims(train)
    search = IcmSearch(claims, params, ClaimScorer(engine, country, claims, params.pool_order, params.seed))
    name = checkpoint_name(country, variant, params, train["claim_id"].to_list(), engine.model_id)
    saved = artifacts.read_text(*name)
    state = SearchState.from_json(saved) if saved else None
    resumed_at = state.iteration if state else None
    state = search.run(
        state,
        lambda s: artifacts.write(s.to_json().encode(), *name),
        config.checkpoint_every,
        Tracker(log, f"ICM {country} ({variant})", params.iterations),
    )
    return search, state, resumed_at


def search_summary(search: IcmSearch, state: SearchState, resumed_at: int | None) -> dict:
    agreement = search.gold_agreement(state.labels)
    return {
        "labelled": sum(label is not None for label in state.labels),
        "train_claims": len(state.labels),
        "accepted": state.accepted,
        "final_energy": round(state.metric.energy, 4),
        "gold_agreement": None if agreement is None else round(agreement, 4),
        "resumed_from_iteration": resumed_at,
    }


def _trace_plot(artifacts: ArtifactStore, country: str, variant: str, state: SearchState) -> MetadataValue:
    """One search's energy and agreement with gold per iteration, plotted and stored; its path."""
    figure = search_trace(
        f"ICM search - {country} ({variant})",
        [t["iteration"] for t in state.trace],
        [t["energy"] for t in state.trace],
        [t["gold_agreement"] for t in state.trace],
    )
    return saved_plot(artifacts, figure, "icm_trace", f"{country}-{variant}")


class FewShotConfig(Config):
    repeats: int = Field(
        default=10, description="Demonstration draws (subset and order) per number of examples."
    )
    example_counts: list[int] = Field(
        default=[10, 20, 50, 75, 100, 125, 150, 200, 250],
        description="Numbers of in-context examples; every ICM-labelled claim (k = M) is always added.",
    )
    seed: int = Field(default=0, description="Seeds the draws of demonstrations and of random-label errors.")


class ChatBaselineConfig(Config):
    repeats: int = Field(
        default=1,
        description="Times an API is asked each claim (a server may not be deterministic even "
        "at temperature 0); the local engine scores exactly, once.",
    )


def experiment_assets(x: Experiment) -> list[AssetsDefinition]:
    """The elicitation assets of experiment ``x``: its label searches and its evaluations."""
    return [
        icm_search(x),
        zero_shot_base_predictions(x),
        few_shot_predictions(x),
        zero_shot_chat_predictions(x),
    ]


def _country_out(x: Experiment, name: str, version: str, schema, description: str) -> AssetOut:
    return AssetOut(
        key=x.key(GROUP, name),
        code_version=x.code_version(version),
        owners=OWNERS,
        kinds=MODEL_KINDS,
        tags=x.tags(GROUP),
        metadata=COUNTRY_PARTITION | table_columns(schema),
        description=description,
    )


def icm_search(x: Experiment) -> AssetsDefinition:
    @multi_asset(
        name=x.op_name("icm_search"),
        outs={
            "icm_labels": _country_out(
                x,
                "icm_labels",
                ICM_VERSION,
                LABEL_SCHEMA,
                "ICM labels of each country's train claims (null = never labelled), beside the gold labels.",
            ),
            "icm_search_trace": _country_out(
                x,
                "icm_search_trace",
                ICM_VERSION,
                TRACE_SCHEMA,
                "Every ICM iteration: temperature, energy change, acceptance, agreement with gold.",
            ),
        },
        group_name=x.name,
        **gpu_step(gpus=x.gpus()),
        partitions_def=countries_partitions,
        backfill_policy=model_backfill(countries_partitions),
        ins=SPLITS_IN,
    )
    def search(
        context: AssetExecutionContext,
        config: x.configured(IcmConfig, "icm_search"),
        llm: LLMResource,
        artifacts: ArtifactStore,
        goqa_splits: pl.DataFrame,
        goqa_claims: pl.DataFrame,
    ):
        """Internal Coherence Maximization over each country's train split, per variant."""
        store = x.artifacts(artifacts)
        labels, trace = [], []
        searches, plots = {}, {}  # per country: its searches' summaries, its trace plots
        with model_step(context, x.role("generator", llm), FEW_SHOT_HASH) as step:
            for country in context.partition_keys:
                searches[country], plots[country] = {}, {}
                with step.partition(country):
                    for variant in config.variants:
                        train = split_claims(goqa_splits, goqa_claims, country, variant, "train")
                        if train.is_empty():
                            continue
                        search, state, resumed_at = resumable_search(
                            step.engine, store, country, variant, train, config, context.log.info
                        )
                        labels += label_rows(train, state.labels, variant, country)
                        trace += trace_rows(state.trace, train["claim_id"].to_list(), variant, country)
                        searches[country][variant] = search_summary(search, state, resumed_at)
                        plots[country][f"plot/{variant}"] = _trace_plot(store, country, variant, state)
            label_frame = step.frame(labels, LABEL_SCHEMA, "icm_labels")
            trace_frame = step.frame(trace, TRACE_SCHEMA, "icm_search_trace")
        params = MetadataValue.json(asdict(config.params()))
        for country in context.partition_keys:
            own = {"params": params, "searches": results_table(*search_table(searches[country]))}
            context.add_asset_metadata(own, asset_key=x.key(GROUP, "icm_labels"), partition_key=country)
            own = {"params": params, **plots[country]}
            context.add_asset_metadata(own, asset_key=x.key(GROUP, "icm_search_trace"), partition_key=country)
        yield Output(label_frame, "icm_labels")
        yield Output(trace_frame, "icm_search_trace")

    return search


def zero_shot_base_predictions(x: Experiment) -> AssetsDefinition:
    @asset(
        **experiment_model_step(x, GROUP, "zero_shot_base_predictions", countries_partitions),
        metadata=COUNTRY_PARTITION | table_columns(ZERO_SHOT_SCHEMA),
        code_version=x.code_version(ZERO_SHOT_VERSION),
        ins=SPLITS_IN,
    )
    def predictions(
        context: AssetExecutionContext, llm: LLMResource, goqa_splits: pl.DataFrame, goqa_claims: pl.DataFrame
    ) -> pl.DataFrame:
        """Zero-shot base-model baseline: log P(" True") vs log P(" False") for each test claim,
        no demonstrations."""
        test, claims = test_split_claims(goqa_splits, goqa_claims)
        requests = [
            ScoreRequest(zero_shot_prompt(r["question"], r["option"], r["country"]), CANDIDATES)
            for r in claims.iter_rows(named=True)
        ]
        with model_step(context, x.role("generator", llm), ZERO_SHOT_HASH) as step:
            scores = dict(zip(claims["claim_id"], step.engine.score(requests), strict=True))
            frame = step.frame(zero_shot_rows(test, scores), ZERO_SHOT_SCHEMA)
        partition_metadata(
            context, frame, lambda rows: {"accuracy": results_table(*zero_shot_accuracy_table(rows))}
        )
        return frame

    return predictions


def few_shot_predictions(x: Experiment) -> AssetsDefinition:
    @asset(
        **experiment_model_step(x, GROUP, "few_shot_predictions", countries_partitions),
        metadata=COUNTRY_PARTITION | table_columns(FEW_SHOT_SCHEMA),
        code_version=x.code_version(EVALUATION_VERSION),
        ins={"icm_labels": AssetIn(key=x.key(GROUP, "icm_labels")), **SPLITS_IN},
    )
    def predictions(
        context: AssetExecutionContext,
        config: x.configured(FewShotConfig, "few_shot_predictions"),
        llm: LLMResource,
        icm_labels: pl.DataFrame,
        goqa_splits: pl.DataFrame,
        goqa_claims: pl.DataFrame,
    ) -> pl.DataFrame:
        """Test predictions with k demonstrations labelled by gold, ICM or accuracy-matched random labels."""
        rows = []
        with model_step(context, x.role("generator", llm), FEW_SHOT_HASH) as step:
            for country in context.partition_keys:
                for variant in icm_labels.filter(pl.col("country") == country)["variant"].unique().sort():
                    pool = demo_pool(
                        icm_labels.filter((pl.col("country") == country) & (pl.col("variant") == variant))
                    )
                    tests = test_claims(split_claims(goqa_splits, goqa_claims, country, variant, "test"))
                    if pool and tests:
                        conditions = build_conditions(
                            pool, config.example_counts, config.repeats, config.seed
                        )
                        with step.partition(country):
                            rows += few_shot_rows(step.engine, country, variant, tests, conditions)
            frame = step.frame(rows, FEW_SHOT_SCHEMA)
        partition_metadata(
            context, frame, lambda part: {"accuracy_by_k": results_table(*few_shot_accuracy_table(part))}
        )
        return frame

    return predictions


def zero_shot_chat_predictions(x: Experiment) -> AssetsDefinition:
    @asset(
        **experiment_model_step(x, GROUP, "zero_shot_chat_predictions", countries_partitions),
        metadata=COUNTRY_PARTITION | table_columns(CHAT_SCHEMA),
        code_version=x.code_version(CHAT_VERSION),
        ins=SPLITS_IN,
    )
    def predictions(
        context: AssetExecutionContext,
        config: x.configured(ChatBaselineConfig, "zero_shot_chat_predictions"),
        llm: LLMResource,
        chat_llm: LLMResource,
        goqa_splits: pl.DataFrame,
        goqa_claims: pl.DataFrame,
    ) -> pl.DataFrame:
        """Zero-shot instruction-model baseline: asked in a chat whether each test claim is the most
        popular answer.

        The experiment's chat model scores "True" against "False" after its chat template where its
        engine can (a local backend); an OpenAI-compatible API applies the template itself, so there the
        reply is asked for, must be exactly True or False, and anything else is stored as a parse failure,
        counted apart from wrong answers. With no chat model of its own, the generator answers through a
        chat template, and the rows say so: method `zero_shot_base_chat_template`, never `zero_shot_chat`.
        """
        test, claims = test_split_claims(goqa_splits, goqa_claims)
        chats = [
            chat_messages(r["question"], r["option"], r["country"]) for r in claims.iter_rows(named=True)
        ]
        generator, chat = x.role("generator", llm), x.role("chat", chat_llm)
        method = CHAT if chat.model != generator.model else BASE_CHAT_TEMPLATE
        with model_step(context, chat, CHAT_HASH) as step:
            answers = chat_answers(step.engine, chats, config.repeats)
            rows = chat_rows(
                test,
                list(claims["claim_id"]),
                answers.replies,
                answers.predictions,
                method,
                answers.answered_by,
            )
            frame = step.frame(rows, CHAT_SCHEMA)
        partition_metadata(context, frame, lambda part: chat_metadata(part, method, answers))
        return frame

    return predictions
