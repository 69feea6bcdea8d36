"""The vLLM backend: one in-process ``vllm.LLM`` on the GPU (the ``gpu`` extra), imported lazily.

- ``score``, two paths, both exact full-softmax log-probabilities:

  * a candidate that is one token (" True"/" False", option letters): one generated token after
    the prompt, asking for the log-probabilities of exactly the candidates' tokens
    (``SamplingParams.logprob_token_ids``), one request per (prompt, adapter) for all its one-token
    candidates. Generation reads vLLM's prefix cache, so prompts sharing a prefix (ICM's tree order)
    compute it once;
  * a longer candidate: the prompt log-probabilities of prompt + candidate (``prompt_logprobs=0``
    returns the log-probability of every actual prompt token). vLLM skips *reading* the prefix cache
    for requests with prompt log-probabilities (``SamplingParams.skip_reading_prefix_cache`` defaults
    to true for them), so each such candidate recomputes its prompt.

  Why the one-token path is exact, as read in vLLM's source (``vllm/sampling_params.py``,
  ``vllm/v1/sample/sampler.py``, ``vllm/v1/worker/gpu/sample/{sampler,logprob}.py``; v0.30.0 and main
  in mid 2026 — the 0.32.0 pinned by the ``gpu`` extra was not in the material at hand): with
  ``logprobs_mode="raw_logprobs"`` (set at load, also vLLM's default) the returned values are
  ``log_softmax`` of the model's logits over the whole vocabulary. The V2 GPU runner computes them
  from the logits before any sampling processor; the V1 sampler from the logits after the
  processors, which for these requests are none (greedy, no penalties, no logit bias, no
  ``allowed_token_ids``, no bad words). ``allowed_token_ids`` is deliberately not used: the V1
  sampler would then renormalise over the allowed tokens.
- ``generate``: vLLM sampling, with a JSON schema as structured decoding.
- ``loglikelihood``: the same prompt log-probabilities, with the counted mask.
- Adapters: every agent's LoRA adapter is served on the one base model through a ``LoRARequest``
  from its directory; nothing is merged. Training and merging run beside it through the engine's
  ``PeftTrainer`` (transformers + PEFT on a load of the base of its own); meanwhile vLLM sleeps
  (``LLM.sleep(level=1)``: weights to CPU memory, KV cache dropped), so both fit on the GPU.

Prompts are tokenized here with the model's own tokenizer (chat prompts through its chat template)
and passed as token ids, so segment boundaries are exactly those of the transformers backend. vLLM
cannot be installed on CPU-only machines: the decision logic of ``score`` is tested here with a
stand-in for ``vllm`` (tests/resources/llm/test_vllm_scoring.py), the real engine where a GPU is
lent (tests/resources/llm/test_vllm_backend.py skips elsewhere).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
)

# vLLM's bound on the length of SamplingParams.logprob_token_ids (MAX_LOGPROB_TOKEN_IDS).
MAX_LOGPROB_TOKEN_IDS = 128


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
    sleep_for_training: bool = True,
) -> VllmEngine:
    try:
        from vllm import LLM
    except ImportError as exc:
        raise RuntimeError(
            "the vllm backend needs the gpu extra (pip install -e '.[gpu]') on a CUDA machine"
        ) from exc

    llm = LLM(
        **engine_options(
            model_path,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            quantization=quantization,
            max_model_len=max_model_len,
            max_num_batched_tokens=max_num_batched_tokens,
            gpu_memory_utilization=gpu_memory_utilization,
            max_lora_rank=max_lora_rank,
            max_loras=max_loras,
            sleep_for_training=sleep_for_training,
        )
    )
    engine = VllmEngine(
        model_id=model_id, llm=llm, tokenizer=llm.get_tokenizer(), sleeps_for_training=sleep_for_training
    )
    engine.usage.model_loads += 1
    return engine


def engine_options(
    model_path: str,
    *,
    dtype: str,
    tensor_parallel_size: int,
    quantization: str,
    max_model_len: int,
    max_num_batched_tokens: int,
    gpu_memory_utilization: float,
    max_lora_rank: int,
    max_loras: int,
    sleep_for_training: bool,
) -> dict:
    """The keyword arguments of ``vllm.LLM`` (engine arguments, as named in vLLM 0.30-0.32)."""
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
        # Returned log-probabilities are log_softmax of the raw logits (vLLM's default, stated so that a
        # changed default cannot make scores inexact).
        logprobs_mode="raw_logprobs",
        # LLM.sleep / wake_up while the PEFT trainer holds the GPU.
        enable_sleep_mode=sleep_for_training,
    )
    if quantization:
        options["quantization"] = quantization
    if max_model_len:
        options["max_model_len"] = max_model_len
    return options


# -- which scoring request answers which candidate -------------------------------------------------------


@dataclass
class NextTokenQuery:
    """One generated token after ``prompt``; its log-probabilities of ``tokens`` answer ``owners``
    ((request, candidate, token) each)."""

    prompt: list[int]
    adapter: str | None
    tokens: list[int]
    owners: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass
class SequenceQuery:
    """Prompt log-probabilities of ``ids``; the sum from position ``start`` on answers ``owner``
    (request, candidate)."""

    ids: list[int]
    start: int
    adapter: str | None
    owner: tuple[int, int]


def plan_scores(
    requests: Sequence[ScoreRequest],
    encode_prompt: Callable[[Prompt], list[int]],
    encode_candidate: Callable[[str], list[int]],
) -> tuple[list[NextTokenQuery], list[SequenceQuery]]:
    """The vLLM requests that score ``requests``: one next-token query per (prompt, adapter) for all of its
    one-token candidates (several when they are more than vLLM returns at once), one sequence query per
    longer candidate."""
    groups: dict[tuple, tuple[list[int], str | None, list[tuple[int, int, int]]]] = {}
    sequences: list[SequenceQuery] = []
    for r, request in enumerate(requests):
        prompt = encode_prompt(request.prompt)
        for c, candidate in enumerate(request.candidates):
            ids = encode_candidate(candidate)
            if not ids:
                raise ValueError(f"empty candidate in {request.candidates!r}")
            if len(ids) == 1:
                key = (tuple(prompt), request.adapter)
                groups.setdefault(key, (prompt, request.adapter, []))[2].append((r, c, ids[0]))
            else:
                sequences.append(SequenceQuery(prompt + ids, len(prompt), request.adapter, (r, c)))
    next_token = []
    for prompt, adapter, owners in groups.values():
        tokens = list(dict.fromkeys(token for _, _, token in owners))
        for start in range(0, len(tokens), MAX_LOGPROB_TOKEN_IDS):
            chunk = tokens[start : start + MAX_LOGPROB_TOKEN_IDS]
            asked = set(chunk)
            next_token.append(
                NextTokenQuery(list(prompt), adapter, chunk, [o for o in owners if o[2] in asked])
            )
    return next_token, sequences


@dataclass
class VllmEngine(Engine):
    backend: ClassVar[str] = "vllm"

    llm: object = None
    tokenizer: object = None
    # public adapter name -> (LoRARequest, fingerprint)
    adapters: dict = field(default_factory=dict)
    lora_ids: int = 0
    sleeps_for_training: bool = False

    def add_adapter(self, name: str, path: str, fingerprint: str) -> None:
        from vllm.lora.request import LoRARequest

        if self.adapters.get(name, (None, None))[1] == fingerprint:
            return
        # A changed adapter gets a new id: vLLM caches adapters by id.
        self.lora_ids += 1
        self.adapters[name] = (LoRARequest(f"{name}-{fingerprint[:12]}", self.lora_ids, path), fingerprint)
        self.served_adapters[name] = (path, fingerprint)

    def _lora(self, name: str | None):
        if name is None:
            return None
        if name not in self.adapters:
            raise KeyError(f"adapter {name!r} is not loaded; known: {', '.join(self.adapters) or 'none'}")
        return self.adapters[name][0]

    @contextmanager
    def released_for_training(self) -> Iterator[None]:
        """vLLM asleep while the trainer holds the GPU: level 1 moves the weights to CPU memory and drops
        the KV cache, so the prefix cache is reset first (its blocks would point at dropped memory)."""
        if not self.sleeps_for_training:
            yield
            return
        self.llm.reset_prefix_cache()
        self.llm.sleep(level=1)
        try:
            yield
        finally:
            self.llm.wake_up()

    # -- the interface ---------------------------------------------------------

    def score(self, requests: Sequence[ScoreRequest], reuse_prefix: bool | None = None) -> list[list[float]]:
        # vLLM's prefix cache decides what is reused; reuse_prefix has nothing to choose here.
        from vllm import SamplingParams

        next_token, sequences = plan_scores(
            requests, self._encode_prompt, lambda candidate: self._encode(candidate, first=False)
        )
        prompts, params, loras = [], [], []
        for query in next_token:
            prompts.append(self._tokens(query.prompt))
            params.append(
                # Greedy and nothing else: no processor touches the logits whose log_softmax is returned.
                SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(query.tokens))
            )
            loras.append(self._lora(query.adapter))
        prompt_logprobs = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        for query in sequences:
            prompts.append(self._tokens(query.ids))
            params.append(prompt_logprobs)
            loras.append(self._lora(query.adapter))
        outputs = self.llm.generate(prompts, params, lora_request=loras, use_tqdm=False) if prompts else []
        self._count(outputs, generated=False)
        self.usage.requests += len(requests) - len(outputs)  # _count counted vLLM's requests, not ours

        results = [[0.0] * len(request.candidates) for request in requests]
        for query, output in zip(next_token, outputs[: len(next_token)], strict=True):
            returned = output.outputs[0].logprobs[0]
            for r, c, token in query.owners:
                if token not in returned:
                    raise RuntimeError(
                        f"vLLM returned no log-probability for token {token} asked for in logprob_token_ids "
                        "(SamplingParams.logprob_token_ids needs vLLM 0.30 or later)"
                    )
                results[r][c] = float(returned[token].logprob)
        for query, output in zip(sequences, outputs[len(next_token) :], strict=True):
            r, c = query.owner
            results[r][c] = sum(_prompt_values(query.ids, output)[query.start :])
        return results

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
        values = self._prompt_logprobs([(ids, adapter) for ids, _, adapter in encoded])
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

    def _prompt_logprobs(self, items: list[tuple[list[int], str | None]]) -> list[list[float]]:
        """Per item (ids, adapter): log P(ids[i] | ids[:i]) for every i >= 1, with 0.0 at i = 0."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        outputs = self.llm.generate(
            [self._tokens(ids) for ids, _ in items],
            params,
            lora_request=[self._lora(adapter) for _, adapter in items],
            use_tqdm=False,
        )
        self._count(outputs, generated=False)
        return [_prompt_values(ids, output) for (ids, _), output in zip(items, outputs, strict=True)]

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


def _prompt_values(ids: list[int], output) -> list[float]:
    """log P(ids[i] | ids[:i]) from a request's prompt log-probabilities, 0.0 at i = 0."""
    return [0.0] + [float(output.prompt_logprobs[i][ids[i]].logprob) for i in range(1, len(ids))]


def _structured(schema: dict) -> dict:
    """The sampling option for JSON-schema decoding, by vLLM version (structured_outputs from 0.10.2 on)."""
    try:
        from vllm.sampling_params import StructuredOutputsParams

        return {"structured_outputs": StructuredOutputsParams(json=schema)}
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(json=schema)}
