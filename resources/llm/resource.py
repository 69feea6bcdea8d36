"""The engine resource: one model per process, shared by every partition of a run.

The only module of resources.llm that imports Dagster: the engines, the registry and the
logic that calls them stay importable (and testable) without it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from dagster import ConfigurableResource
from pydantic import Field

from persona_platform.resources.llm.backends import BACKENDS, TINY, backend, load_engine, model_path
from persona_platform.resources.llm.engine import Engine, EngineUsage
from persona_platform.resources.settings import DATA_DIR, Settings

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
        total = EngineUsage(
            *(a + b for a, b in zip(vars(total).values(), vars(engine.usage).values(), strict=True))
        )
    return total


class LLMResource(ConfigurableResource):
    """The engine behind ``score``, ``generate`` and ``loglikelihood`` (and, where the backend can,
    adapters)."""

    model: str = Field(
        default=TINY,
        description="'tiny' (embedded), a Hugging Face id or local path, or the model "
        "name an OpenAI-compatible server serves.",
    )
    backend: str = Field(
        default="transformers", description="; ".join(f"{b.name}: {b.description}" for b in BACKENDS.values())
    )
    base_url: str = Field(default="", description="openai backend: the server, e.g. http://host:8000/v1.")
    api_key_variables: list[str] = Field(
        default=["PERSONA_ENGINE_API_KEY"],
        description="openai backend: environment variables that may hold the key, "
        "first set one wins (read at each call, never stored).",
    )
    max_concurrency: int = Field(default=8, description="openai backend: calls in flight at once.")
    max_retries: int = Field(
        default=5,
        description="openai backend: the openai SDK's retries of one call on 408, 409, 429, 5xx, timeouts "
        "and dropped connections (capped jittered backoff, honouring Retry-After); as many again for a "
        "200 whose body is malformed.",
    )
    timeout_s: float = Field(
        default=120.0,
        description="openai backend: the SDK's timeout, seconds one attempt may wait to connect, send or "
        "read; a timed-out attempt is retried.",
    )
    tensor_parallel_size: int = Field(default=1, description="vllm backend: GPUs one model is split over.")
    quantization: str = Field(default="", description="vllm backend: e.g. awq, gptq, fp8; empty for none.")
    max_model_len: int = Field(default=0, description="vllm backend: longest sequence; 0 = the model's own.")
    gpu_memory_utilization: float = Field(
        default=0.85, description="vllm backend: share of GPU memory it may take."
    )
    max_lora_rank: int = Field(default=16, description="vllm backend: the largest adapter rank it serves.")
    max_loras: int = Field(
        default=8, description="vllm backend: adapters in one batch (each holds GPU memory for its weights)."
    )
    sleep_for_training: bool = Field(
        default=True,
        description="vllm backend: vLLM sleeps (weights to CPU memory, KV cache dropped) while adapters are "
        "trained or merged beside it on the same GPU.",
    )
    train_model: str = Field(
        default="",
        description="vllm and openai backends: the base adapters are trained and merged on (transformers + "
        "PEFT): a local directory, a Hugging Face id in the local cache, or 'tiny'; empty: the served model "
        "itself, where it is one of those. It must be the weights the engine serves.",
    )
    device: str = Field(default="auto", description="transformers backend: 'auto', 'cpu' or 'cuda[:n]'.")
    dtype: str = Field(default="auto", description="'auto', 'float32', 'bfloat16' or 'float16'.")
    max_batch_tokens: int = Field(default=16384, description="Padded tokens per forward pass.")
    models_dir: str = Field(description="Where the embedded model is built.")
    corpus_dir: str = Field(description="The sample corpus the embedded tokenizer is trained on.")

    def _settings(self) -> dict[str, object]:
        """The fields the chosen backend reads, lists as tuples (hashable, for the cache key)."""
        values = {name: getattr(self, name) for name in backend(self.backend).settings}
        return {name: tuple(value) if isinstance(value, list) else value for name, value in values.items()}

    def _key(self) -> tuple:
        # Every setting the backend reads, and no other: two resources that would load the same engine
        # share it (the generator and a judge on the same model), two that differ in anything it reads
        # do not.
        return (self.backend, *sorted(self._settings().items()))

    def model_path(self) -> str:
        return model_path(self.model, self.models_dir, self.corpus_dir)

    def engine(self) -> Engine:
        key = self._key()
        with _LOCK:
            if key not in _ENGINES:
                _ENGINES[key] = load_engine(self.backend, self._settings())
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


def role_resources(settings: Settings) -> dict[str, LLMResource]:
    """The three model roles as resources: the generator (``llm``), the chat baseline's model
    (``chat_llm``) and the judge (``judge_llm``). Roles naming the same model share one loaded engine
    (see ``LLMResource._key``). The training base (``PERSONA_TRAIN_MODEL``) belongs to the generator, whose
    adapters the agents train, and to roles on the generator's own model."""
    return {
        name: LLMResource(
            model=role.model,
            backend=role.backend,
            base_url=role.base_url,
            api_key_variables=list(role.api_key_variables),
            models_dir=str(settings.models_dir),
            corpus_dir=str(DATA_DIR),
            tensor_parallel_size=settings.deployment.tensor_parallel_size,
            max_loras=settings.max_loras,
            train_model=settings.train_model if _same_model(role, settings.llm) else "",
        )
        for name, role in settings.roles().items()
    }


def _same_model(role, generator) -> bool:
    return (role.backend, role.model, role.base_url) == (
        generator.backend,
        generator.model,
        generator.base_url,
    )
