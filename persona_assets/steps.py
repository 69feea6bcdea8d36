"""How a step turns rows into a warehouse table, and how a step that asks a model is written.

Provenance comes from the asset definition itself (its code version, its partition columns) and the run, so
an asset function states only what it computes.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import polars as pl
from dagster import AssetExecutionContext, AssetKey

from persona_platform.persona_assets.experiments import EXPERIMENT_TABLES
from persona_platform.persona_assets.progress import Tracker
from persona_platform.persona_assets.provenance import Provenance, result_frame
from persona_platform.resources.llm import Engine, EngineUsage
from persona_platform.resources.llm.resource import LLMResource, UsageMeter
from persona_platform.resources.warehouse import experiment_schema


def engine_metadata(usage: EngineUsage, model_id: str, scope: str) -> dict:
    """What the engine did, and for what: one partition's work, or the whole step's (steps that batch
    every partition's requests together cannot split it)."""
    return {"engine/model_id": model_id, "engine/usage_of": scope, **usage.as_metadata()}


def _asset_key(context: AssetExecutionContext, output: str | None) -> AssetKey:
    assets_def = context.assets_def
    return assets_def.keys_by_output_name[output] if output else assets_def.key


def asset_frame(
    context: AssetExecutionContext,
    rows: list[dict],
    schema: dict[str, pl.DataType],
    *,
    output: str | None = None,
    model_id: str | None = None,
    prompt_hash: str | None = None,
) -> pl.DataFrame:
    """``rows`` as the table of the asset (or of the multi-asset's ``output``): run id and code version from
    the run and the definition, and each row's ``partition_key`` from the asset's partition columns unless
    it sets one."""
    key = _asset_key(context, output)
    assets_def = context.assets_def
    provenance = Provenance(
        context.run.run_id,
        assets_def.code_versions_by_key[key] or "",
        model_id=model_id,
        prompt_hash=prompt_hash,
    )
    frame = result_frame(rows, schema, provenance, assets_def.metadata_by_key[key].get("partition_expr"))
    if len(key.path) == 3:
        frame = qualified_refs(frame, key.path[0], frozenset(EXPERIMENT_TABLES))
    if assets_def.partitions_def is not None:  # else the IO manager's count is the table's
        partition_metadata(context, frame, lambda part: {"dagster/row_count": part.height}, output)
    return frame


def qualified_refs(frame: pl.DataFrame, experiment: str, tables: frozenset[str]) -> pl.DataFrame:
    """``input_ids`` that name one of ``tables`` point at the experiment's own copy: the table builders name
    rows as ``elicitation.icm_labels:id`` whichever experiment runs them, and the experiment's rows live in
    ``{experiment}__elicitation.icm_labels``."""
    if not tables or frame.is_empty():
        return frame
    pattern = "^(" + "|".join(re.escape(t) for t in sorted(tables)) + "):"
    qualified = pl.element().str.replace(pattern, experiment_schema(experiment, "${1}") + ":")
    return frame.with_columns(pl.col("input_ids").list.eval(qualified))


def partition_metadata(
    context: AssetExecutionContext,
    frame: pl.DataFrame,
    describe: Callable[[pl.DataFrame], dict],
    output: str | None = None,
) -> None:
    """``describe`` of each partition's own rows, attached to that partition: a run over a range of
    partitions writes one frame, and metadata added to the output would land on every partition alike.
    Unpartitioned, ``describe`` of the whole frame."""
    key = _asset_key(context, output)
    if context.assets_def.partitions_def is None:
        context.add_asset_metadata(describe(frame), asset_key=key)
        return
    for partition in context.partition_keys:
        rows = frame.filter(pl.col("partition_key") == partition)
        context.add_asset_metadata(describe(rows), asset_key=key, partition_key=partition)


class ReportingEngine:
    """The step's engine, reporting how many generate and loglikelihood requests of the step are done, as
    the backend finishes them (a backend that reports nothing on the way counts at the end of each call).
    ``score`` goes unreported: ICM reports its iterations itself."""

    def __init__(self, engine: Engine, log: Callable[[str], None]):
        self._engine = engine
        kinds = ("generate", "loglikelihood")
        self._trackers = {kind: Tracker(log, f"{kind} requests", 0, log_last=False) for kind in kinds}
        self._done = dict.fromkeys(kinds, 0)
        self._lock = threading.Lock()  # a server backend finishes requests on several threads

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def generate(self, requests: Sequence) -> list[str]:
        return self._reported("generate", self._engine.generate, requests)

    def loglikelihood(self, requests: Sequence) -> list:
        return self._reported("loglikelihood", self._engine.loglikelihood, requests)

    def _reported(self, kind: str, call: Callable[[Sequence], list], requests: Sequence) -> list:
        tracker = self._trackers[kind]
        tracker.total += len(requests)
        expected = self._done[kind] + len(requests)

        def finished(count: int) -> None:
            with self._lock:
                self._done[kind] += count
                tracker(self._done[kind])

        self._engine.progress = finished
        try:
            results = call(requests)
        finally:
            self._engine.progress = None
        if self._done[kind] < expected:
            finished(expected - self._done[kind])
        return results


@dataclass
class ModelStep:
    """A step's engine, for as long as its ``model_step`` block lasts."""

    context: AssetExecutionContext
    engine: ReportingEngine
    meter: UsageMeter
    prompt_hash: str | None = None
    usage_by_partition: dict[str, EngineUsage] = field(default_factory=dict)

    @contextmanager
    def partition(self, key: str) -> Iterator[None]:
        """Count what the block asks of the engine as partition ``key``'s own usage."""
        before = self.engine.usage.snapshot()
        yield
        self.usage_by_partition[key] = self.engine.usage.since(before)

    def frame(
        self, rows: list[dict], schema: dict[str, pl.DataType], output: str | None = None
    ) -> pl.DataFrame:
        return asset_frame(
            self.context,
            rows,
            schema,
            output=output,
            model_id=self.engine.model_id,
            prompt_hash=self.prompt_hash,
        )


@contextmanager
def model_step(
    context: AssetExecutionContext, llm: LLMResource, prompt_hash: str | None = None
) -> Iterator[ModelStep]:
    """The engine of ``llm`` for one step; when the block ends, what the step asked of it (model loads,
    forward passes, tokens) becomes metadata of every asset the step materializes."""
    with llm.metered() as (engine, meter):
        context.log.info(f"engine {engine.model_id} ready ({llm.backend} backend)")
        step = ModelStep(context, ReportingEngine(engine, context.log.info), meter, prompt_hash)
        yield step
    used = meter.usage
    context.log.info(
        f"engine {engine.model_id}: {used.requests} requests, {used.forward_passes} forward passes, "
        f"{used.tokens_computed} tokens computed, {used.tokens_reused} reused, {used.model_loads} model loads"
    )
    loaded = {"engine/model_loaded": "in this step" if used.model_loads else "earlier in this process"}
    partitions = context.partition_keys if context.assets_def.partitions_def is not None else []
    whole_step = engine_metadata(used, engine.model_id, f"the whole step ({len(partitions) or 1} partitions)")
    for key in context.selected_asset_keys:
        context.add_asset_metadata(loaded, asset_key=key)
        for partition in partitions or [None]:
            own = step.usage_by_partition.get(partition)
            usage = engine_metadata(own, engine.model_id, "this partition") if own else whole_step
            context.add_asset_metadata(usage, asset_key=key, partition_key=partition)
