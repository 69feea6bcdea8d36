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

    model: str = Field(default=TINY, description="'tiny' (embedded), a Hugging Face id or local path, or the model "
                                                 "name an OpenAI-compatible server serves.")
    backend: str = Field(default="transformers", description="transformers, vllm (a GPU, the gpu extra), openai, or "
                                                             "simulated (a planted-signal learner; model = its world settings).")
    base_url: str = Field(default="", description="openai backend: the server, e.g. http://host:8000/v1.")
    api_key_variables: list[str] = Field(default=["PERSONA_ENGINE_API_KEY"],
                                         description="openai backend: environment variables that may hold the key, "
                                                     "first set one wins (read at each call, never stored).")
    max_concurrency: int = Field(default=8, description="openai backend: calls in flight at once.")
    max_retries: int = Field(default=5, description="openai backend: retries on 429, 5xx, timeouts and malformed bodies.")
    timeout_s: float = Field(default=120.0, description="openai backend: seconds per call.")
    tensor_parallel_size: int = Field(default=1, description="vllm backend: GPUs one model is split over.")
    quantization: str = Field(default="", description="vllm backend: e.g. awq, gptq, fp8; empty for none.")
    max_model_len: int = Field(default=0, description="vllm backend: longest sequence; 0 = the model's own.")
    gpu_memory_utilization: float = Field(default=0.85, description="vllm backend: share of GPU memory it may take.")
    max_lora_rank: int = Field(default=16, description="vllm backend: the largest adapter rank it serves.")
    device: str = Field(default="auto", description="'auto', 'cpu' or 'cuda[:n]'.")
    dtype: str = Field(default="auto", description="'auto', 'float32', 'bfloat16' or 'float16'.")
    max_batch_tokens: int = Field(default=16384, description="Padded tokens per forward pass.")
    models_dir: str = Field(description="Where the embedded model is built.")
    corpus_dir: str = Field(description="The sample corpus the embedded tokenizer is trained on.")

    def _key(self) -> tuple:
        where = (self.models_dir, self.corpus_dir) if self.model == TINY else ()
        return (self.backend, self.model, self.base_url, *where, self.device, self.dtype, self.max_batch_tokens)

    def model_path(self) -> str:
        if self.model == TINY:
            from resources.llm.tiny import tiny_model_dir

            return str(tiny_model_dir(Path(self.models_dir), Path(self.corpus_dir)))
        return self.model

    def engine(self) -> Engine:
        key = self._key()
        with _LOCK:
            if key not in _ENGINES:
                _ENGINES[key] = self._load()
            return _ENGINES[key]

    def _load(self) -> Engine:
        if self.backend == "transformers":
            from resources.llm.transformers_backend import load_transformers_engine

            return load_transformers_engine(self.model, self.model_path(), self.device, self.dtype, self.max_batch_tokens)
        if self.backend == "openai":
            from resources.llm.openai_backend import OpenAIEngine

            if not self.base_url:
                raise ValueError("the openai engine backend needs base_url (PERSONA_ENGINE_BASE_URL)")
            return OpenAIEngine(model_id=self.model, base_url=self.base_url, api_key_variables=tuple(self.api_key_variables),
                                timeout_s=self.timeout_s, max_retries=self.max_retries, max_concurrency=self.max_concurrency)
        if self.backend == "vllm":
            from resources.llm.vllm_backend import load_vllm_engine

            return load_vllm_engine(self.model, self.model_path(), dtype=self.dtype,
                                    tensor_parallel_size=self.tensor_parallel_size, quantization=self.quantization,
                                    max_model_len=self.max_model_len, max_num_batched_tokens=self.max_batch_tokens,
                                    gpu_memory_utilization=self.gpu_memory_utilization, max_lora_rank=self.max_lora_rank)
        if self.backend == "simulated":
            from resources.llm.simulated import PlantedSignalEngine, WorldSpec

            spec = WorldSpec.parse("" if self.model == TINY else self.model)
            return PlantedSignalEngine(model_id=f"simulated:{spec.label()}", spec=spec)
        raise ValueError(f"unknown engine backend {self.backend!r}; available: transformers, vllm, openai, simulated")

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
