"""Every engine backend, in one place: its name, what it is, how it loads and the settings it reads.

A backend's loader is a function whose keyword parameters are the ``LLMResource`` fields it
reads; the settings are taken from its signature, so the list cannot drift from what the
loader uses. ``LLMResource`` loads through ``load_engine`` and keys its engine cache on exactly
those settings; ``persona_platform.resources.settings`` validates engine names against
``BACKENDS``. Each loader imports its backend's module when called: torch, transformers and
vllm load only where used.

The backends that serve adapters without training them (vllm, openai) get a ``PeftTrainer``
(``resources.llm.peft_trainer``): adapters are trained and merged with transformers + PEFT on a
load of the base of its own (``train_model``, by default the served model), then served by the
engine.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from persona_platform.resources.llm.engine import Engine

if TYPE_CHECKING:
    from persona_platform.resources.llm.peft_trainer import PeftTrainer

TINY = "tiny"  # the default embedded model (is_embedded: any locally built one)


def is_embedded(model: str) -> bool:
    from persona_platform.resources.llm.tiny import SEEDS

    return model in SEEDS


class UnknownBackendError(ValueError):
    pass


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    load: Callable[..., Engine]

    @property
    def settings(self) -> tuple[str, ...]:
        """The resource fields this backend reads (the loader's parameters)."""
        return tuple(inspect.signature(self.load).parameters)

    @property
    def reads_base_url(self) -> bool:
        return "base_url" in self.settings


def model_path(model: str, models_dir: str, corpus_dir: str) -> str:
    """Where the weights are: the embedded model is built (once) under ``models_dir``; anything else is a
    Hugging Face id or a local path, passed through."""
    if is_embedded(model):
        from persona_platform.resources.llm.tiny import tiny_model_dir

        return str(tiny_model_dir(Path(models_dir), Path(corpus_dir), model))
    return model


def peft_trainer(
    model: str, train_model: str, models_dir: str, corpus_dir: str, device: str, dtype: str
) -> PeftTrainer:
    """The trainer of an engine that serves ``model`` but cannot train: on ``train_model``, else on the
    served model itself where that is weights this machine has (a directory, a cached Hugging Face id, the
    embedded model). Where there are none, the trainer says why when asked to train, not before: an engine
    that never trains needs none."""
    from persona_platform.resources.llm.peft_trainer import PeftTrainer

    base = train_model or model
    problem = check_model_available("transformers", base)
    if problem is not None and train_model:
        problem = f"PERSONA_TRAIN_MODEL={base!r}: {problem}"
    elif problem is not None:
        problem = (
            f"the served model {model!r} is not weights this machine has ({problem}); set "
            "PERSONA_TRAIN_MODEL (the train_model setting) to its base weights, a directory or a Hugging "
            "Face id in the local cache, to train adapters for it"
        )
    return PeftTrainer(
        model_id=base,
        locate=lambda: model_path(base, models_dir, corpus_dir),
        device=device,
        dtype=dtype,
        problem=problem,
    )


def _transformers(
    model: str, models_dir: str, corpus_dir: str, device: str, dtype: str, max_batch_tokens: int
) -> Engine:
    from persona_platform.resources.llm.transformers_backend import load_transformers_engine

    return load_transformers_engine(
        model, model_path(model, models_dir, corpus_dir), device, dtype, max_batch_tokens
    )


def _vllm(
    model: str,
    models_dir: str,
    corpus_dir: str,
    dtype: str,
    tensor_parallel_size: int,
    quantization: str,
    max_model_len: int,
    max_batch_tokens: int,
    gpu_memory_utilization: float,
    max_lora_rank: int,
    max_loras: int,
    sleep_for_training: bool,
    train_model: str,
    device: str,
) -> Engine:
    from persona_platform.resources.llm.vllm_backend import load_vllm_engine

    engine = load_vllm_engine(
        model,
        model_path(model, models_dir, corpus_dir),
        dtype=dtype,
        tensor_parallel_size=tensor_parallel_size,
        quantization=quantization,
        max_model_len=max_model_len,
        max_num_batched_tokens=max_batch_tokens,
        gpu_memory_utilization=gpu_memory_utilization,
        max_lora_rank=max_lora_rank,
        max_loras=max_loras,
        sleep_for_training=sleep_for_training,
    )
    engine.trainer = peft_trainer(model, train_model, models_dir, corpus_dir, device, dtype)
    return engine


def _openai(
    model: str,
    base_url: str,
    api_key_variables: tuple[str, ...],
    timeout_s: float,
    max_retries: int,
    max_concurrency: int,
    train_model: str,
    models_dir: str,
    corpus_dir: str,
    device: str,
    dtype: str,
) -> Engine:
    from persona_platform.resources.llm.openai_backend import OpenAIEngine

    if not base_url:
        raise ValueError(
            "the openai backend needs base_url, the server (PERSONA_ENGINE_BASE_URL, or the chat or judge "
            "role's own PERSONA_CHAT_BASE_URL, PERSONA_JUDGE_BASE_URL)"
        )
    return OpenAIEngine(
        model_id=model,
        base_url=base_url,
        api_key_variables=tuple(api_key_variables),
        timeout_s=timeout_s,
        max_retries=max_retries,
        max_concurrency=max_concurrency,
        trainer=peft_trainer(model, train_model, models_dir, corpus_dir, device, dtype),
    )


def _simulated(model: str) -> Engine:
    from persona_platform.resources.llm.simulated import PlantedSignalEngine, WorldSpec

    spec = WorldSpec.parse("" if model == TINY else model)  # the default model name means the default world
    return PlantedSignalEngine(model_id=f"simulated:{spec.label()}", spec=spec)


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "transformers",
            "Hugging Face transformers on this machine (CPU, or the GPU where present): exact scoring, "
            "LoRA adapters served, trained and merged",
            _transformers,
        ),
        Backend(
            "vllm",
            "one in-process vLLM engine on CUDA GPUs (the gpu extra): exact scoring, adapters served; "
            "adapters trained and merged with transformers + PEFT beside it",
            _vllm,
        ),
        Backend(
            "openai",
            "an OpenAI-compatible server at base_url serving the model by name (scoring needs prompt "
            "log-probabilities, as vLLM's server returns); adapters trained here with transformers + PEFT "
            "(on train_model) and registered with the server",
            _openai,
        ),
        Backend(
            "simulated",
            "a planted-signal learner that only scores True/False claims; the model names its worlds, "
            "e.g. seed=3,countries=2",
            _simulated,
        ),
    )
}


def backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise UnknownBackendError(
            f"unknown engine backend {name!r}; registered: {', '.join(BACKENDS)}"
        ) from None


def split_backend(text: str) -> tuple[str | None, str]:
    """``backend:model`` -> (backend, model); anything else -> (None, text). A prefix is a backend only when
    it is a registered name, so a model name with a colon of its own is left whole."""
    prefix, colon, model = text.partition(":")
    if colon and prefix in BACKENDS:
        return prefix, model
    return None, text


def load_engine(name: str, settings: Mapping[str, object]) -> Engine:
    """Load backend ``name`` with ``settings`` (at least the fields it reads; others are ignored)."""
    chosen = backend(name)
    return chosen.load(**{field: settings[field] for field in chosen.settings})


def check_model_available(backend_name: str, model: str, hf_cache: str | None = None) -> str | None:
    """Why ``backend_name`` cannot load ``model`` on this machine, or None when it can (as far as can be told
    without loading it). Only the backends that load weights here are checked: transformers (a directory, or
    a Hugging Face id from the local cache, as runs never download) and vllm (a local path; an id vLLM
    resolves itself). The embedded models are built locally, so always available."""
    if backend_name not in ("transformers", "vllm") or is_embedded(model):
        return None
    path = Path(model).expanduser()
    if path.exists():
        return "not a directory" if backend_name == "transformers" and not path.is_dir() else None
    if model.startswith(("/", ".", "~")) or (os.sep != "/" and os.sep in model):
        return "no such directory"
    if backend_name == "vllm":
        return None
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    cache = hf_cache or constants.HF_HUB_CACHE
    try:
        cached = try_to_load_from_cache(model, "config.json", cache_dir=cache)
    except HFValidationError as exc:
        return f"no such directory, nor a Hugging Face id ({exc})"
    if not isinstance(cached, str):
        return f"not in the local Hugging Face cache ({cache}); download it first or give a directory"
    return None
