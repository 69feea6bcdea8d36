"""The vLLM backend: one in-process ``vllm.LLM`` on the GPU (the ``gpu`` extra), imported lazily.

- ``score``: exact log-probabilities of each candidate's tokens, read from the prompt
  log-probabilities of prompt + candidate (``prompt_logprobs=0`` returns the
  log-probability of every actual prompt token); prefix caching computes a shared
  prompt once.
- ``generate``: vLLM sampling, with a JSON schema as guided (structured) decoding.
- ``loglikelihood``: the same prompt log-probabilities, with the counted mask.
- Adapters: every agent's LoRA adapter is served on the one base model through a
  ``LoRARequest``; nothing is merged.

Prompts are tokenized here with the model's own tokenizer (chat prompts through its
chat template) and passed as token ids, so segment boundaries are exactly those of
the transformers backend. vLLM cannot be installed on CPU-only machines; these paths
are tested where a GPU is lent (tests/resources/llm/test_vllm_backend.py skips elsewhere).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from persona_platform.resources.llm.chat import prompt_ids
from persona_platform.resources.llm.engine import (
    Engine,
    GenerateRequest,
    LoglikelihoodRequest,
    Prompt,
    ScoreRequest,
    TokenLogprobs,
    per_request,
)


def load_vllm_engine(
    model_id: str,
    model_path: str,
    *,
    dtype: str = "auto",
    tensor_parallel_size: int = 1,
    quantization: str = "",
    max_model_len: int = 0,
    max_num_batched_tokens: int = 16384,
    gpu_memory_utilization: float = 0.85,
    max_lora_rank: int = 16,
    max_loras: int = 8,
) -> VllmEngine:
    try:
        from vllm import LLM
    except ImportError as exc:
        raise RuntimeError(
            "the vllm backend needs the gpu extra (pip install -e '.[gpu]') on a CUDA machine"
        ) from exc

    options = dict(
        model=model_path,
        dtype=dtype,
        tensor_parallel_size=tensor_parallel_size,
        enable_prefix_caching=True,
        max_num_batched_tokens=max_num_batched_tokens,
        gpu_memory_utilization=gpu_memory_utilization,
        enable_lora=True,
        max_lora_rank=max_lora_rank,
        max_loras=max_loras,
    )
    if quantization:
        options["quantization"] = quantization
    if max_model_len:
        options["max_model_len"] = max_model_len
    llm = LLM(**options)
    engine = VllmEngine(model_id=model_id, llm=llm, tokenizer=llm.get_tokenizer())
    engine.usage.model_loads += 1
    return engine


@dataclass
class VllmEngine(Engine):
    backend: ClassVar[str] = "vllm"

    llm: object = None
    tokenizer: object = None
    # public adapter name -> (LoRARequest, fingerprint)
    adapters: dict = field(default_factory=dict)
    lora_ids: int = 0

    def add_adapter(self, name: str, path: str, fingerprint: str) -> None:
        from vllm.lora.request import LoRARequest

        if self.adapters.get(name, (None, None))[1] == fingerprint:
            return
        # A changed adapter gets a new id: vLLM caches adapters by id.
        self.lora_ids += 1
        self.adapters[name] = (LoRARequest(f"{name}-{fingerprint[:12]}", self.lora_ids, path), fingerprint)

    def _lora(self, name: str | None):
        if name is None:
            return None
        if name not in self.adapters:
            raise KeyError(f"adapter {name!r} is not loaded; known: {', '.join(self.adapters) or 'none'}")
        return self.adapters[name][0]

    # -- the interface ---------------------------------------------------------

    def score(self, requests: Sequence[ScoreRequest], reuse_prefix: bool | None = None) -> list[list[float]]:
        items = []
        for request in requests:
            prompt_ids = self._encode_prompt(request.prompt)
            for candidate in request.candidates:
                candidate_ids = self._encode(candidate, first=False)
                items.append((prompt_ids + candidate_ids, len(prompt_ids), request.adapter))
        totals = [
            sum(values[start:])
            for values, start in zip(self._prompt_logprobs(items), (i[1] for i in items), strict=True)
        ]
        return per_request(totals, requests)

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[TokenLogprobs]:
        encoded = []
        for request in requests:
            ids, counted = [], []
            for index, (piece, counts) in enumerate(request.segments):
                piece_ids = self._encode_prompt(piece) if index == 0 else self._encode(piece, first=False)
                ids += piece_ids
                counted += [counts] * len(piece_ids)
            if counted:
                counted[0] = False
            encoded.append((ids, counted, request.adapter))
        values = self._prompt_logprobs([(ids, 1, adapter) for ids, _, adapter in encoded])
        return [
            TokenLogprobs(tuple(ids), tuple(v), tuple(counted))
            for (ids, counted, _), v in zip(encoded, values, strict=True)
        ]

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        from vllm import SamplingParams

        prompts, params, loras = [], [], []
        for request in requests:
            options = dict(
                max_tokens=request.max_new_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                top_k=request.top_k if request.top_k > 0 else -1,
                repetition_penalty=request.repetition_penalty,
                seed=request.seed,
            )
            if request.json_schema is not None:
                options.update(_structured(json.loads(request.json_schema)))
            prompts.append(self._tokens(self._encode_prompt(request.prompt)))
            params.append(SamplingParams(**options))
            loras.append(self._lora(request.adapter))
        outputs = self.llm.generate(prompts, params, lora_request=loras, use_tqdm=False)
        self._count(outputs, generated=True)
        return [o.outputs[0].text for o in outputs]

    # -- internals -------------------------------------------------------------

    def _prompt_logprobs(self, items: list[tuple[list[int], int, str | None]]) -> list[list[float]]:
        """Per item (ids, first position wanted, adapter): log P(ids[i] | ids[:i]) for every i >= 1, with 0.0
        at i = 0."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        outputs = self.llm.generate(
            [self._tokens(ids) for ids, _, _ in items],
            params,
            lora_request=[self._lora(adapter) for _, _, adapter in items],
            use_tqdm=False,
        )
        self._count(outputs, generated=False)
        values = []
        for (ids, _, _), output in zip(items, outputs, strict=True):
            row = [0.0]
            for position in range(1, len(ids)):
                row.append(float(output.prompt_logprobs[position][ids[position]].logprob))
            values.append(row)
        return values

    def _count(self, outputs, generated: bool) -> None:
        self.usage.requests += len(outputs)
        for output in outputs:
            cached = getattr(output, "num_cached_tokens", 0) or 0
            self.usage.tokens_reused += cached
            self.usage.tokens_computed += len(output.prompt_token_ids) - cached
            if generated:
                self.usage.tokens_computed += len(output.outputs[0].token_ids)

    @staticmethod
    def _tokens(ids: list[int]):
        from vllm.inputs import TokensPrompt

        return TokensPrompt(prompt_token_ids=ids)

    def _encode(self, text: str, first: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=first)["input_ids"])

    def _encode_prompt(self, prompt: Prompt) -> list[int]:
        return prompt_ids(self.tokenizer, prompt, self._encode)


def _structured(schema: dict) -> dict:
    """The sampling option for JSON-schema decoding, by vLLM version (structured_outputs from 0.10.2 on)."""
    try:
        from vllm.sampling_params import StructuredOutputsParams

        return {"structured_outputs": StructuredOutputsParams(json=schema)}
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(json=schema)}
