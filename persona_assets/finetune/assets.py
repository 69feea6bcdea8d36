"""From ICM labels to trained personas: datasets per label source, a LoRA adapter per (country, variant, label
source), their zero-shot predictions on the country's test claims, their answers to the whole survey and the
country x country alignment of those answers."""

import hashlib
import json
from dataclasses import asdict, dataclass, field

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
from persona_platform.persona_assets.agents.adapters import serve_adapters
from persona_platform.persona_assets.common import (
    COUNTRY_PARTITION,
    MODEL_KINDS,
    ONE_RUN_PER_BACKFILL,
    OWNERS,
    REPORT_STEP,
    TABLE_KINDS,
    WAREHOUSE_POOL,
    experiment_model_step,
    experiment_step,
    gpu_step,
    model_backfill,
    results_table,
    table_columns,
)
from persona_platform.persona_assets.elicitation.prompts import ZERO_SHOT_HASH
from persona_platform.persona_assets.elicitation.tables import test_split_claims
from persona_platform.persona_assets.experiments import Experiment
from persona_platform.persona_assets.finetune.examples import LABEL_SOURCES, dataset_rows, labelled_claims
from persona_platform.persona_assets.finetune.tables import (
    ADAPTER_SCHEMA,
    ALIGNMENT_SCHEMA,
    LOSS_SCHEMA,
    OPINION_SCHEMA,
    PREDICTION_SCHEMA,
    PREFERENCE_SCHEMA,
    SFT_SCHEMA,
    adapter_name,
    adapter_row,
    alignment_matrix,
    alignment_rows,
    diagonal_table,
    diagonal_tests,
    loss_rows,
    opinion_rows,
    prediction_rows,
    survey_questions,
)
from persona_platform.persona_assets.plots import heatmap, loss_curve, saved_plot
from persona_platform.persona_assets.progress import Tracker
from persona_platform.persona_assets.steps import asset_frame, model_step, partition_metadata
from persona_platform.persona_assets.verdicts import diagonal_verdict
from persona_platform.resources.artifacts import ArtifactStore
from persona_platform.resources.llm import Engine
from persona_platform.resources.llm.resource import LLMResource
from persona_platform.resources.preference import PreferencePair
from persona_platform.resources.training import LoraTraining, TrainingOutcome, run_fingerprint

GROUP = "finetune"
VERSION = f"finetune-1-{ZERO_SHOT_HASH}"
OBJECTIVES = ("sft", "dpo")
SPLITS_IN = {
    "goqa_splits": AssetIn(key=["opinions", "goqa_splits"]),
    "goqa_claims": AssetIn(key=["opinions", "goqa_claims"]),
}
SURVEY_IN = {"goqa_survey": AssetIn(key=["opinions", "goqa_survey"])}


class DatasetConfig(Config):
    seed: int = Field(
        default=0, description="Seeds which claims the random labels flip (per country, variant)."
    )


class CountryTrainingConfig(Config):
    objective: str = Field(
        default="sft",
        description="sft: cross-entropy on ' True'/' False' after each claim prompt; dpo: TRL's DPO trainer "
        "on the preference pairs (the base model with adapters off is the reference).",
    )
    beta: float = Field(default=0.1, description="DPO's beta (strength of the pull towards the reference).")
    labels: list[str] = Field(default=list(LABEL_SOURCES), description="Label sources to train on.")
    rank: int = Field(default=8, description="LoRA rank r.")
    alpha: int = Field(default=16, description="LoRA alpha (scaling alpha / r).")
    dropout: float = Field(default=0.05, description="LoRA dropout.")
    target_modules: list[str] = Field(default=["q_proj", "k_proj", "v_proj", "o_proj"])
    learning_rate: float = Field(default=1e-4, description="The embedded model needs far more.")
    epochs: int = Field(default=3)
    batch_size: int = Field(default=8)
    max_length: int = Field(default=512, description="Tokens per example; longer ones are truncated.")
    checkpoint_every: int = Field(
        default=50, description="Save a checkpoint every N steps (and every epoch)."
    )
    seed: int = Field(default=0)

    def settings(self) -> LoraTraining:
        """The LoRA run's settings; a bad objective or label source is refused before anything trains."""
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        unknown = sorted(set(self.labels) - set(LABEL_SOURCES))
        if unknown:
            raise ValueError(f"labels: unknown {', '.join(unknown)}; known: {', '.join(LABEL_SOURCES)}")
        return LoraTraining(
            rank=self.rank,
            alpha=self.alpha,
            dropout=self.dropout,
            target_modules=tuple(self.target_modules),
            learning_rate=self.learning_rate,
            epochs=self.epochs,
            batch_size=self.batch_size,
            max_length=self.max_length,
            checkpoint_every=self.checkpoint_every,
            seed=self.seed,
        )


def experiment_assets(x: Experiment) -> list[AssetsDefinition]:
    """An experiment's datasets from its ICM labels, its country adapters and what they answer."""
    return [
        label_datasets(x),
        country_adapters(x),
        finetuned_predictions(x),
        persona_opinions(x),
        country_alignment(x),
    ]


def _out(x: Experiment, name: str, schema, description: str, kinds=MODEL_KINDS) -> AssetOut:
    return AssetOut(
        key=x.key(GROUP, name),
        metadata=COUNTRY_PARTITION | table_columns(schema),
        owners=OWNERS,
        kinds=kinds,
        tags=x.tags(GROUP),
        code_version=x.code_version(VERSION),
        description=description,
    )


def label_datasets(x: Experiment) -> AssetsDefinition:
    @multi_asset(
        name=x.op_name("label_datasets"),
        outs={
            "sft_examples": _out(
                x,
                "sft_examples",
                SFT_SCHEMA,
                "SFT examples (prompt -> ' True'/' False') of the ICM-labelled train claims under ICM, gold "
                "and accuracy-matched random labels; `persona export labels --format sft` writes them for "
                "TRL.",
                kinds=TABLE_KINDS,
            ),
            "preference_pairs": _out(
                x,
                "preference_pairs",
                PREFERENCE_SCHEMA,
                "Preference pairs per question: the claim labelled True against each sibling labelled False, "
                "per label source; `persona export labels --format dpo` writes them for TRL's DPO trainer.",
                kinds=TABLE_KINDS,
            ),
        },
        group_name=x.name,
        pool=WAREHOUSE_POOL,
        partitions_def=countries_partitions,
        backfill_policy=ONE_RUN_PER_BACKFILL,
        ins={"icm_labels": AssetIn(key=x.key("elicitation", "icm_labels"))},
    )
    def datasets(
        context: AssetExecutionContext,
        config: x.configured(DatasetConfig, "label_datasets"),
        icm_labels: pl.DataFrame,
    ):
        """Training data from each country's labels, the same claims under every label source."""
        sft, pairs = [], []
        for country in context.partition_keys:
            of_country = icm_labels.filter(pl.col("country") == country)
            for variant in sorted(of_country["variant"].unique()):
                rows = dataset_rows(
                    labelled_claims(icm_labels, country, variant), country, variant, config.seed
                )
                sft += rows[0]
                pairs += rows[1]
        sft_frame = asset_frame(context, sft, SFT_SCHEMA, output="sft_examples")
        pair_frame = asset_frame(context, pairs, PREFERENCE_SCHEMA, output="preference_pairs")
        partition_metadata(context, sft_frame, _dataset_counts, "sft_examples")
        partition_metadata(context, pair_frame, _dataset_counts, "preference_pairs")
        yield Output(sft_frame, "sft_examples")
        yield Output(pair_frame, "preference_pairs")

    return datasets


def _dataset_counts(part: pl.DataFrame) -> dict:
    counts = part.group_by("variant", "labels").len().sort("variant", "labels")
    return {"examples": results_table(["variant", "labels", "rows"], [list(r) for r in counts.rows()])}


def _dpo_run(settings: LoraTraining, pairs: list[PreferencePair], beta: float, base: str) -> str:
    """A DPO run's identity (settings, beta, pairs, base): its checkpoints resume only the same run."""
    key = json.dumps([asdict(settings), beta, [asdict(p) for p in pairs], base]).encode()
    return hashlib.sha256(key).hexdigest()[:16]


def train_country(
    engine: Engine,
    store: ArtifactStore,
    name: str,
    place: tuple[str, ...],
    config: CountryTrainingConfig,
    examples: pl.DataFrame,
    log,
) -> TrainingOutcome:
    """Train (or resume) one country adapter on its examples (SFT rows or preference pairs); checkpoints and
    the adapter live under the run's fingerprint."""
    settings = config.settings()
    progress = Tracker(log, f"training {name}", 0)
    if config.objective == "dpo":
        pairs = [
            PreferencePair(r["prompt"], r["chosen"], r["rejected"]) for r in examples.iter_rows(named=True)
        ]
        run = _dpo_run(settings, pairs, config.beta, engine.training_base)
        return engine.train_preference_adapter(
            name,
            pairs,
            settings,
            config.beta,
            checkpoint_dir=store.path("checkpoints", "dpo", *place, run),
            adapter_dir=store.path("adapters", "countries", *place, run),
            log=log,
            progress=progress,
        )
    tokens = engine.completion_examples(list(zip(examples["prompt"], examples["completion"], strict=True)))
    run = run_fingerprint(settings, tokens, engine.training_base)
    return engine.train_adapter(
        name,
        tokens,
        settings,
        checkpoint_path=store.path("checkpoints", "lora", *place, f"{run}.pt"),
        adapter_dir=store.path("adapters", "countries", *place, run),
        log=log,
        progress=progress,
    )


@dataclass
class TrainedCountries:
    adapters: list[dict] = field(default_factory=list)  # country_adapters rows
    losses: list[dict] = field(default_factory=list)  # country_training_loss rows
    plots: dict[str, dict] = field(default_factory=dict)  # per country: its loss plots' metadata


def train_countries(step, store: ArtifactStore, config, data: pl.DataFrame, countries: list[str], log):
    """Every adapter of ``countries`` on the step's engine (one load of the base for all): their rows and
    loss plots."""
    table = f"{GROUP}.{'preference_pairs' if config.objective == 'dpo' else 'sft_examples'}"
    trained = TrainedCountries(plots={country: {} for country in countries})
    for country, variant, labels, examples in training_sets(data, countries, config.labels):
        place = (country, variant, labels)
        with step.partition(country):
            name = adapter_name(*place)
            outcome = train_country(step.engine, store, name, place, config, examples, log)
        ids = examples["row_id"].to_list()
        row = adapter_row(*place, config.objective, outcome, config.settings(), ids, table)
        trained.adapters.append(row)
        trained.losses += loss_rows(*place, outcome)
        trained.plots[country][f"plot/{variant}-{labels}"] = _loss_plot(store, row["row_id"], outcome)
    return trained


def training_sets(data: pl.DataFrame, countries: list[str], sources: list[str]):
    """(country, variant, label source, its examples) for each adapter to train, in a fixed order."""
    for country in countries:
        for variant in sorted(data.filter(pl.col("country") == country)["variant"].unique()):
            for labels in sources:
                examples = data.filter(
                    (pl.col("country") == country)
                    & (pl.col("variant") == variant)
                    & (pl.col("labels") == labels)
                ).sort("row_id")
                if not examples.is_empty():
                    yield country, variant, labels, examples


def _loss_plot(store: ArtifactStore, adapter: str, outcome: TrainingOutcome) -> MetadataValue:
    figure = loss_curve(
        f"Country adapter - {adapter}",
        [p["step"] for p in outcome.losses],
        [p["loss"] for p in outcome.losses],
        ylabel="training loss",
    )
    return saved_plot(store, figure, "country_training", adapter.replace("/", "-"))


def _adapter_metadata(adapters: pl.DataFrame) -> dict:
    rows = adapters.sort("row_id").select(
        "variant", "labels", "objective", "examples", "steps", "tokens_per_second", "final_loss"
    )
    return {"adapters": results_table(list(rows.columns), [list(r) for r in rows.rows()])}


def country_adapters(x: Experiment) -> AssetsDefinition:
    @multi_asset(
        name=x.op_name("country_adapters"),
        outs={
            "country_adapters": _out(
                x,
                "country_adapters",
                ADAPTER_SCHEMA,
                "A LoRA adapter per country, variant and label source (PEFT + Accelerate for SFT, TRL for "
                "DPO), on the experiment's generator: path, sha256, training numbers.",
            ),
            "country_training_loss": _out(
                x, "country_training_loss", LOSS_SCHEMA, "Training loss per step of every country adapter."
            ),
        },
        group_name=x.name,
        # One process on the model the step serves, like the experiment's other model steps (the agents'
        # training profile is for several processes, one GPU each).
        **gpu_step(gpus=x.gpus()),
        partitions_def=countries_partitions,
        backfill_policy=model_backfill(countries_partitions),
        ins={
            "sft_examples": AssetIn(key=x.key(GROUP, "sft_examples")),
            "preference_pairs": AssetIn(key=x.key(GROUP, "preference_pairs")),
        },
    )
    def training(
        context: AssetExecutionContext,
        config: x.configured(CountryTrainingConfig, "country_adapters"),
        llm: LLMResource,
        artifacts: ArtifactStore,
        sft_examples: pl.DataFrame,
        preference_pairs: pl.DataFrame,
    ):
        """Fine-tune a persona adapter per (country, variant, label source); resumes from its last checkpoint
        after a crash. Every adapter of the run shares one load of the base."""
        config.settings()  # refuses bad settings before anything trains
        data = preference_pairs if config.objective == "dpo" else sft_examples
        with model_step(context, x.role("generator", llm)) as step:
            trained = train_countries(
                step, x.artifacts(artifacts), config, data, context.partition_keys, context.log.info
            )
            adapter_frame = step.frame(trained.adapters, ADAPTER_SCHEMA, "country_adapters")
            loss_frame = step.frame(trained.losses, LOSS_SCHEMA, "country_training_loss")
        partition_metadata(context, adapter_frame, _adapter_metadata, "country_adapters")
        for country, own in trained.plots.items():
            if own:
                context.add_asset_metadata(
                    own, asset_key=x.key(GROUP, "country_training_loss"), partition_key=country
                )
        yield Output(adapter_frame, "country_adapters")
        yield Output(loss_frame, "country_training_loss")

    return training


def finetuned_predictions(x: Experiment) -> AssetsDefinition:
    @asset(
        **experiment_model_step(x, GROUP, "finetuned_predictions", countries_partitions),
        metadata=COUNTRY_PARTITION | table_columns(PREDICTION_SCHEMA),
        code_version=x.code_version(VERSION),
        ins={"country_adapters": AssetIn(key=x.key(GROUP, "country_adapters")), **SPLITS_IN},
    )
    def predictions(
        context: AssetExecutionContext,
        llm: LLMResource,
        country_adapters: pl.DataFrame,
        goqa_splits: pl.DataFrame,
        goqa_claims: pl.DataFrame,
    ) -> pl.DataFrame:
        """Each country adapter answers its country's test claims zero-shot (log P(' True') against
        log P(' False') after the zero-shot prompt): methods finetune_icm, finetune_gold, finetune_random."""
        test, _ = test_split_claims(goqa_splits, goqa_claims)
        with model_step(context, x.role("generator", llm), ZERO_SHOT_HASH) as step:
            serve_adapters(step.engine, country_adapters)
            frame = step.frame(prediction_rows(step.engine, country_adapters, test), PREDICTION_SCHEMA)
        partition_metadata(context, frame, _prediction_metadata)
        return frame

    return predictions


def _prediction_metadata(part: pl.DataFrame) -> dict:
    accuracy = (
        part.group_by("variant", "method").agg(pl.len(), pl.col("correct").mean()).sort("variant", "method")
    )
    header = ["variant", "method", "test claims", "accuracy"]
    return {"accuracy": results_table(header, [[v, m, n, round(a, 4)] for v, m, n, a in accuracy.rows()])}


def persona_opinions(x: Experiment) -> AssetsDefinition:
    @asset(
        **experiment_model_step(x, GROUP, "persona_opinions", countries_partitions),
        metadata=COUNTRY_PARTITION | table_columns(OPINION_SCHEMA),
        code_version=x.code_version(VERSION),
        ins={"country_adapters": AssetIn(key=x.key(GROUP, "country_adapters")), **SURVEY_IN},
    )
    def opinions(
        context: AssetExecutionContext,
        llm: LLMResource,
        country_adapters: pl.DataFrame,
        goqa_survey: pl.DataFrame,
    ) -> pl.DataFrame:
        """Each country adapter answers every question of the survey as its country: a distribution over the
        options from the True-vs-False probability of each option's claim."""
        with model_step(context, x.role("generator", llm), ZERO_SHOT_HASH) as step:
            serve_adapters(step.engine, country_adapters)
            rows = opinion_rows(step.engine, country_adapters, survey_questions(goqa_survey))
            frame = step.frame(rows, OPINION_SCHEMA)
        return frame

    return opinions


def country_alignment(x: Experiment) -> AssetsDefinition:
    @asset(
        key=x.key(GROUP, "country_alignment"),
        **(REPORT_STEP | experiment_step(x, GROUP)),
        metadata=table_columns(ALIGNMENT_SCHEMA),
        code_version=x.code_version(VERSION),
        ins={"persona_opinions": AssetIn(key=x.key(GROUP, "persona_opinions")), **SURVEY_IN},
    )
    def alignment(
        context: AssetExecutionContext,
        artifacts: ArtifactStore,
        persona_opinions: pl.DataFrame,
        goqa_survey: pl.DataFrame,
    ) -> pl.DataFrame:
        """How close each country persona's answers are to every country's (1 - Jensen-Shannon distance, mean
        over questions): a country x country matrix per variant and label source, whose diagonal stands out
        when the fine-tuning took."""
        frame = asset_frame(context, alignment_rows(persona_opinions, goqa_survey), ALIGNMENT_SCHEMA)
        plots = {}
        for (variant, labels), part in sorted(frame.group_by("variant", "labels"), key=lambda g: g[0]):
            countries, matrix = alignment_matrix(part)
            figure = heatmap(
                f"Country personas ({labels} labels, {variant}): similarity to each country's answers",
                countries,
                countries,
                matrix.tolist(),
                "similarity",
                fmt="{:.3f}",
                xlabel="country (survey answer distributions)",
                ylabel="persona (adapter trained on the country's labels)",
                higher_is_better=True,
            )
            plots[f"plot/{variant}-{labels}"] = saved_plot(
                x.artifacts(artifacts), figure, "country_alignment", f"{variant}-{labels}"
            )
        tests = diagonal_tests(frame)
        context.add_output_metadata(
            {"verdict": diagonal_verdict(tests), "diagonal": diagonal_table(tests), **plots}
        )
        return frame

    return alignment
