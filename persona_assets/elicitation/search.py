"""ICM label search per country and variant, with checkpoints and a trace of every iteration."""

import hashlib
import json
from dataclasses import asdict

import polars as pl
from dagster import AssetExecutionContext, AssetIn, AssetOut, Config, MetadataValue, Output, multi_asset
from pydantic import Field

from partitions import countries_partitions
from persona_assets.common import (
    COUNTRY_PARTITION,
    MODEL_KINDS,
    ONE_RUN_PER_BACKFILL,
    OWNERS,
    engine_metadata,
    gpu_step,
)
from persona_assets.elicitation.icm import ClaimScorer, IcmParams, IcmSearch, SearchState
from persona_assets.elicitation.prompts import FEW_SHOT_HASH
from persona_assets.elicitation.tables import icm_claims, split_claims
from persona_assets.opinions.splits import VARIANTS
from persona_assets.provenance import Provenance, result_frame, row_ref
from persona_assets.reports.plots import inline, search_trace
from resources.artifacts import ArtifactStore
from resources.llm.resource import LLMResource

GROUP = "elicitation"
ICM_VERSION = f"icm-2-{FEW_SHOT_HASH}"

LABEL_SCHEMA = {
    "variant": pl.String,
    "country": pl.String,
    "position": pl.Int64,
    "claim_id": pl.String,
    "question_id": pl.String,
    "question": pl.String,
    "option": pl.String,
    "icm_label": pl.Int64,
    "label": pl.Int64,
}
TRACE_SCHEMA = {
    "variant": pl.String,
    "country": pl.String,
    "iteration": pl.Int64,
    "uid": pl.Int64,
    "previous_label": pl.Int64,
    "proposed_label": pl.Int64,
    "temperature": pl.Float64,
    "pool_order": pl.String,
    "energy_before": pl.Float64,
    "delta": pl.Float64,
    "accepted": pl.Boolean,
    "energy": pl.Float64,
    "inconsistent": pl.Int64,
    "labelled": pl.Int64,
    "gold_agreement": pl.Float64,
}


class IcmConfig(Config):
    alpha: float = Field(default=3.5, description="Weight of mutual predictability against inconsistency.")
    num_seed: int = Field(default=12, description="Claims labelled at random to start (half True).")
    iterations: int = Field(default=1000, description="Annealing iterations K.")
    consistency_fix_iterations: int = Field(default=20, description="Repair rounds at the start.")
    proposal_fix_iterations: int = Field(default=10, description="Repair rounds inside each proposal.")
    initial_temperature: float = Field(default=10.0)
    final_temperature: float = Field(default=0.1)
    schedule_constant: float = Field(default=2.75, description="T = max(final, initial / (1 + c ln(1 + accepted))).")
    consistency: str = Field(default="exactly_one", description="exactly_one, at_most_one or none.")
    pool_order: str = Field(default="tree", description="tree (prefix reuse, seeded leaf order) or naive leave-one-out prompts.")
    seed: int = Field(default=0, description="Seeds every random choice of the search, and the tree's leaf order.")
    checkpoint_every: int = Field(default=25, description="Save the search state every N iterations.")
    variants: list[str] = Field(default=list(VARIANTS), description="Claim variants to search.")

    def params(self) -> IcmParams:
        return IcmParams(
            alpha=self.alpha, num_seed=self.num_seed, iterations=self.iterations,
            consistency_fix_iterations=self.consistency_fix_iterations,
            proposal_fix_iterations=self.proposal_fix_iterations,
            initial_temperature=self.initial_temperature, final_temperature=self.final_temperature,
            schedule_constant=self.schedule_constant, consistency=self.consistency,
            pool_order=self.pool_order, seed=self.seed,
        )


def checkpoint_name(country: str, variant: str, params: IcmParams, claim_ids: list[str], model_id: str) -> tuple[str, ...]:
    """A checkpoint only resumes the same search: same claims, parameters, model and prompt."""
    key = json.dumps([asdict(params), claim_ids, model_id, FEW_SHOT_HASH]).encode()
    return ("checkpoints", "icm", country, variant, f"{hashlib.sha256(key).hexdigest()[:16]}.json")


@multi_asset(
    outs={
        "icm_labels": AssetOut(
            key=[GROUP, "icm_labels"], metadata=COUNTRY_PARTITION, owners=OWNERS, kinds=MODEL_KINDS,
            code_version=ICM_VERSION, description="ICM labels of each country's train claims (null = never labelled), beside the gold labels.",
        ),
        "icm_search_trace": AssetOut(
            key=[GROUP, "icm_search_trace"], metadata=COUNTRY_PARTITION, owners=OWNERS, kinds=MODEL_KINDS,
            code_version=ICM_VERSION, description="Every ICM iteration: temperature, energy change, acceptance, agreement with gold.",
        ),
    },
    group_name=GROUP,
    **gpu_step(),
    partitions_def=countries_partitions,
    backfill_policy=ONE_RUN_PER_BACKFILL,
    ins={"goqa_splits": AssetIn(key=["opinions", "goqa_splits"]), "goqa_claims": AssetIn(key=["opinions", "goqa_claims"])},
)
def icm_search(
    context: AssetExecutionContext,
    config: IcmConfig,
    llm: LLMResource,
    artifacts: ArtifactStore,
    goqa_splits: pl.DataFrame,
    goqa_claims: pl.DataFrame,
):
    """Internal Coherence Maximization over each country's train split, per variant."""
    params = config.params()
    label_rows, trace_rows, plots, summary = [], [], [], {}
    with llm.metered() as (engine, meter):
        for country in context.partition_keys:
            for variant in config.variants:
                train = split_claims(goqa_splits, goqa_claims, country, variant, "train")
                claims = icm_claims(train)
                if not claims:
                    continue
                search = IcmSearch(claims, params, ClaimScorer(engine, country, claims, params.pool_order, params.seed))
                name = checkpoint_name(country, variant, params, train["claim_id"].to_list(), engine.model_id)
                saved = artifacts.read_text(*name)
                state = SearchState.from_json(saved) if saved else None
                resumed_at = state.iteration if state else None
                state = search.run(
                    state, lambda s, name=name: artifacts.write(s.to_json().encode(), *name), config.checkpoint_every
                )
                for r, label in zip(train.iter_rows(named=True), state.labels, strict=True):
                    label_rows.append(
                        {
                            "row_id": f"{variant}/{r['claim_id']}", "variant": variant, "country": country,
                            "position": r["position"], "claim_id": r["claim_id"], "question_id": r["question_id"],
                            "question": r["question"], "option": r["option"], "icm_label": label, "label": r["label"],
                            "partition_key": country, "input_ids": [row_ref("opinions.goqa_splits", r["row_id"])],
                        }
                    )
                claim_ids = train["claim_id"].to_list()
                for t in state.trace:
                    trace_rows.append(
                        {"row_id": f"{variant}/{country}/{t['iteration']}", "variant": variant, "country": country, **t,
                         "partition_key": country,
                         "input_ids": [row_ref("elicitation.icm_labels", f"{variant}/{claim_ids[t['uid']]}")]}
                    )
                agreement = search.gold_agreement(state.labels)
                summary[f"{country}/{variant}"] = {
                    "labelled": sum(label is not None for label in state.labels), "train_claims": len(claims),
                    "accepted": state.accepted, "final_energy": round(state.metric.energy, 4),
                    "gold_agreement": None if agreement is None else round(agreement, 4),
                    "resumed_from_iteration": resumed_at,
                }
                png = search_trace(
                    f"ICM search - {country} ({variant})", [t["iteration"] for t in state.trace],
                    [t["energy"] for t in state.trace], [t["gold_agreement"] for t in state.trace],
                )
                path, sha = artifacts.write(png, "plots", "icm_trace", f"{country}-{variant}.png")
                plots.append(f"**{country} ({variant})** `{path}` sha256 {sha[:12]}\n\n{inline(png, f'{country} {variant}')}")
    provenance = Provenance(context.run.run_id, ICM_VERSION, model_id=engine.model_id, prompt_hash=FEW_SHOT_HASH)
    shared = {**engine_metadata(meter, engine.model_id), "params": MetadataValue.json(asdict(params))}
    yield Output(
        result_frame(label_rows, LABEL_SCHEMA, provenance), "icm_labels",
        metadata={**shared, "searches": MetadataValue.json(summary)},
    )
    yield Output(
        result_frame(trace_rows, TRACE_SCHEMA, provenance), "icm_search_trace",
        metadata={**shared, "trace_plots": MetadataValue.md("\n\n".join(plots) or "no search ran")},
    )
