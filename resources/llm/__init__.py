"""The engine resource: one model per process, shared by every partition of a run."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from resources.llm.engine import (
    ChatPrompt,
    Engine,
    EngineUsage,
    GenerateRequest,
    LoglikelihoodRequest,
    ScoreRequest,
    TokenLogprobs,
)

TINY = "tiny"

_ENGINES: dict[tuple, Engine] = {}
_LOCK = threading.Lock()


@dataclass
class UsageMeter:
    """What one materialization asked of the engine; filled when its block ends."""

    usage: EngineUsage = field(default_factory=EngineUsage)


def process_usage() -> EngineUsage:
    """What every engine loaded in this process has done so far."""
    total = EngineUsage()
    for engine in list(_ENGINES.values()):
        total = EngineUsage(*(a + b for a, b in zip(vars(total).values(), vars(engine.usage).values(), strict=True)))
    return total


class LLMResource(ConfigurableResource):
    """The engine behind ``score``, ``generate`` and ``loglikelihood``."""

    model: str = Field(default=TINY, description="'tiny' (embedded) or a Hugging Face id or local path.")
    backend: str = Field(default="transformers", description="Engine backend.")
    device: str = Field(default="auto", description="'auto', 'cpu' or 'cuda[:n]'.")
    dtype: str = Field(default="auto", description="'auto', 'float32', 'bfloat16' or 'float16'.")
    max_batch_tokens: int = Field(default=16384, description="Padded tokens per forward pass.")
    models_dir: str = Field(description="Where the embedded model is built.")
    corpus_dir: str = Field(description="The sample corpus the embedded tokenizer is trained on.")

    def _key(self) -> tuple:
        where = (self.models_dir, self.corpus_dir) if self.model == TINY else ()
        return (self.backend, self.model, *where, self.device, self.dtype, self.max_batch_tokens)

    def model_path(self) -> str:
        if self.model == TINY:
            from resources.llm.tiny import tiny_model_dir

            return str(tiny_model_dir(Path(self.models_dir), Path(self.corpus_dir)))
        return self.model

    def engine(self) -> Engine:
        key = self._key()
        with _LOCK:
            if key not in _ENGINES:
                if self.backend != "transformers":
                    raise ValueError(f"unknown engine backend {self.backend!r}; available: transformers")
                from resources.llm.transformers_backend import load_transformers_engine

                _ENGINES[key] = load_transformers_engine(
                    self.model, self.model_path(), self.device, self.dtype, self.max_batch_tokens
                )
            return _ENGINES[key]

    @contextmanager
    def metered(self) -> Iterator[tuple[Engine, UsageMeter]]:
        """Yield the engine and a meter holding the usage of this block (a load included)."""
        existing = _ENGINES.get(self._key())
        before = existing.usage.snapshot() if existing else EngineUsage()
        engine = self.engine()
        meter = UsageMeter()
        try:
            yield engine, meter
        finally:
            meter.usage = engine.usage.since(before)


__all__ = [
    "ChatPrompt",
    "Engine",
    "EngineUsage",
    "GenerateRequest",
    "LLMResource",
    "LoglikelihoodRequest",
    "ScoreRequest",
    "TokenLogprobs",
    "UsageMeter",
    "process_usage",
]
