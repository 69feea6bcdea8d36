"""The transformers backend: CPU here, GPU where present.

Scoring has two paths. Batched: right padding, so every real token keeps its
position and its log-probabilities do not depend on the batch (up to float
rounding). Shared prefix: sequences are taken in sorted token order, which walks
their prefix tree depth-first, and one key/value cache is cut back to the common
prefix with the previous sequence and extended, so a shared prefix is computed
once. Generation uses left padding, as causal generation needs, and constrains decoding
to a JSON schema when a request carries one.

Training examples, LoRA training and merging go through the engine
(resources/training.py holds the PEFT + Accelerate loop): this backend runs it on the very model
it serves, so training, merging and scoring in one process share one load of the base weights
(other backends train through a PeftTrainer on a load of their own). No caller touches the model
or the tokenizer.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import re
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import ClassVar

import torch
from transformers.utils import logging as transformers_logging

from persona_platform.resources import training
from persona_platform.resources.llm.chat import chat_tokens, completion_tokens, prompt_ids
from persona_platform.resources.llm.constrained import JsonSchemaGrammars
from persona_platform.resources.llm.engine import (
    Engine,
    GenerateRequest,
    LoglikelihoodRequest,
    Prompt,
    ScoreRequest,
    TokenLogprobs,
)
from persona_platform.resources.training import resolve_device, resolve_dtype

# Below this share of tokens saved by prefix reuse, padded batches are faster.
PREFIX_REUSE_MIN_SAVING = 0.6


transformers_logging.disable_progress_bar()


class ModelLoadError(RuntimeError):
    pass


# (context_length, token_id): log P(token_id | ids[:context_length])
Target = tuple[int, int]


@dataclass
class _Item:
    ids: list[int]
    targets: list[Target]


def load_transformers_engine(
    model_id: str, model_path: str, device: str = "auto", dtype: str = "auto", max_batch_tokens: int = 16384
) -> TransformersEngine:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        where = (
            "local directory" if Path(model_path).exists() else "Hugging Face id (is it in the local cache?)"
        )
        raise ModelLoadError(f"PERSONA_MODEL={model_id!r}: cannot load it as a {where}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    engine = TransformersEngine(
        model_id=model_id,
        model=model,
        tokenizer=tokenizer,
        model_path=model_path,
        device=device,
        max_batch_tokens=max_batch_tokens,
    )
    engine.usage.model_loads += 1
    return engine


@dataclass
class TransformersEngine(Engine):
    backend: ClassVar[str] = "transformers"

    model: object = None
    tokenizer: object = None
    model_path: str = ""
    device: str = "cpu"
    max_batch_tokens: int = 16384
    segment_cache: dict = field(default_factory=dict)
    # public adapter name -> (name inside the PEFT model, fingerprint of its files)
    adapters: dict = field(default_factory=dict)
    grammars: JsonSchemaGrammars | None = None

    def __post_init__(self) -> None:
        if self.grammars is None and self.tokenizer is not None:
            self.grammars = JsonSchemaGrammars(
                self.tokenizer, self.model.config.vocab_size, stop_token_ids(self.model, self.tokenizer)
            )

    # -- adapters --------------------------------------------------------------

    def add_adapter(self, name: str, path: str, fingerprint: str) -> None:
        if self.adapters.get(name, (None, None))[1] == fingerprint:
            return
        from peft import PeftModel

        internal = f"{module_name(name)}-{fingerprint[:12]}"
        if not isinstance(self.model, PeftModel):
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=internal)
        elif internal not in self.model.peft_config:
            self.model.load_adapter(path, adapter_name=internal)
        self.model.eval()
        self.adapters[name] = (internal, fingerprint)

    def new_trainable_adapter(self, name: str, lora_config) -> str:
        """Add a fresh LoRA adapter to the shared model for training; returns its internal name."""
        from peft import PeftModel, get_peft_model

        internal = f"{module_name(name)}-training-{len(getattr(self.model, 'peft_config', {}))}"
        if isinstance(self.model, PeftModel):
            self.model.add_adapter(internal, lora_config)
        else:
            self.model = get_peft_model(self.model, lora_config, adapter_name=internal)
        self.model.set_adapter(internal)
        return internal

    def register_adapter(self, name: str, internal: str, fingerprint: str) -> None:
        """Serve the adapter ``internal`` of the shared model (trained in place) as ``name``."""
        self.model.eval()
        self.adapters[name] = (internal, fingerprint)

    # -- training, on the served model itself (one shared load) ---------------

    def training_examples(
        self, chats: Sequence[Sequence[tuple[str, str]]], counted_role: str = "assistant"
    ) -> list[training.Example]:
        return [chat_tokens(self.tokenizer, list(chat), counted_role) for chat in chats]

    def completion_examples(self, pairs: Sequence[tuple[str, str]]) -> list[training.Example]:
        return [completion_tokens(self.tokenizer, prompt, completion) for prompt, completion in pairs]

    def train_adapter(
        self,
        name: str,
        examples: Sequence[training.Example],
        settings: training.LoraTraining,
        checkpoint_path: Path,
        adapter_dir: Path,
        log: Callable[[str], None] = lambda message: None,
        progress: Callable[[int, int, dict], None] | None = None,
    ) -> training.TrainingOutcome:
        training.prepare_run(name, examples, settings)
        if settings.processes > 1:
            return self._train_in_processes(
                name, examples, settings, checkpoint_path, adapter_dir, log, progress
            )
        torch.manual_seed(settings.seed)  # the LoRA initialisation
        if settings.quantization == "4bit":
            internal = f"{module_name(name)}-qlora"
            model = training.quantized_for_training(self.model_path, name, settings)
            self.usage.model_loads += 1
        else:
            internal = self.new_trainable_adapter(name, settings.lora_config())
            model = self.model
        outcome = training.train_lora(
            model,
            internal,
            name,
            examples,
            settings,
            pad_id=self.tokenizer.pad_token_id,
            cpu=self.device == "cpu",
            checkpoint_path=checkpoint_path,
            adapter_dir=adapter_dir,
            log=log,
            progress=progress,
        )
        if settings.quantization == "4bit":
            outcome.model_loads = 1
            del model  # the 4-bit copy; the adapter is served on the full-precision base
            torch.cuda.empty_cache()
            self.add_adapter(name, str(adapter_dir), outcome.fingerprint)
        else:
            self.register_adapter(name, internal, outcome.fingerprint)
        return outcome

    def _train_in_processes(
        self, name, examples, settings, checkpoint_path, adapter_dir, log, progress
    ) -> training.TrainingOutcome:
        """processes > 1: child processes (resources.launcher), each with a load of the base of its own; the
        adapter they save is then served from its directory. On a GPU the served model waits in host memory
        meanwhile, so rank 0 has its GPU to itself."""
        from persona_platform.resources.launcher import train_in_processes

        dtype = str(self.model.dtype).removeprefix("torch.")
        on_gpu = self.device.startswith("cuda")
        if on_gpu:
            self.model.to("cpu")
            torch.cuda.empty_cache()
        try:
            outcome = train_in_processes(
                name,
                examples,
                settings,
                model_path=self.model_path,
                device="cuda" if on_gpu else self.device,
                dtype=dtype,
                pad_id=self.tokenizer.pad_token_id,
                checkpoint_path=checkpoint_path,
                adapter_dir=adapter_dir,
                log=log,
                progress=progress,
            )
        finally:
            if on_gpu:
                self.model.to(self.device)
        self.usage.model_loads += outcome.model_loads
        self.add_adapter(name, str(adapter_dir), outcome.fingerprint)
        return outcome

    def train_preference_adapter(
        self,
        name: str,
        pairs: Sequence,
        settings: training.LoraTraining,
        beta: float,
        checkpoint_dir: Path,
        adapter_dir: Path,
        log: Callable[[str], None] = lambda message: None,
        progress: Callable[[int, int, dict], None] | None = None,
    ) -> training.TrainingOutcome:
        """DPO with TRL on the served model itself: a fresh adapter is the policy, the base (every adapter
        disabled) the reference."""
        from persona_platform.resources.preference import prepare_dpo, train_dpo

        prepare_dpo(name, pairs, settings)
        torch.manual_seed(settings.seed)  # the LoRA initialisation
        internal = self.new_trainable_adapter(name, settings.lora_config())
        outcome = train_dpo(
            self.model,
            internal,
            self.tokenizer,
            pairs,
            settings,
            beta,
            checkpoint_dir=checkpoint_dir,
            adapter_dir=adapter_dir,
            cpu=self.device == "cpu",
            log=log,
            progress=progress,
        )
        self.register_adapter(name, internal, outcome.fingerprint)
        return outcome

    def merge_adapter(
        self, name: str, out_dir: Path, check_texts: Sequence[str], max_check_tokens: int = 128
    ) -> tuple[str, list[float]]:
        # With no check input nothing would be compared, so that is refused before anything is written.
        if not check_texts:
            raise training.TrainingError(
                f"{name}: no sample to check the merged model against base + adapter on"
            )
        if name not in self.adapters:
            raise KeyError(f"adapter {name!r} is not loaded; known: {', '.join(self.adapters) or 'none'}")
        check_inputs = [self.tokenizer(text)["input_ids"][:max_check_tokens] for text in check_texts]
        with self.using_adapter(name):
            return training.merge_lora(
                self.model, self.adapters[name][0], self.tokenizer, out_dir, check_inputs, self.device
            )

    @contextmanager
    def using_adapter(self, name: str | None):
        """Run the block with this adapter active (None: the base model alone)."""
        from peft import PeftModel

        if name is not None and name not in self.adapters:
            raise KeyError(f"adapter {name!r} is not loaded; known: {', '.join(self.adapters) or 'none'}")
        if not isinstance(self.model, PeftModel):
            yield
        elif name is None:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(self.adapters[name][0])
            yield

    def _by_adapter(self, requests, run) -> list:
        """Run ``run`` on each group of requests that share an adapter; results in request order."""
        results: list = [None] * len(requests)
        groups: dict = {}
        for index, request in enumerate(requests):
            groups.setdefault(request.adapter, []).append(index)
        for adapter, indices in groups.items():
            with self.using_adapter(adapter):
                for index, value in zip(indices, run([requests[i] for i in indices]), strict=True):
                    results[index] = value
        return results

    # -- the interface ---------------------------------------------------------

    def score(self, requests: Sequence[ScoreRequest], reuse_prefix: bool | None = None) -> list[list[float]]:
        return self._by_adapter(requests, lambda group: self._score(group, reuse_prefix))

    def _score(self, requests: Sequence[ScoreRequest], reuse_prefix: bool | None) -> list[list[float]]:
        items: list[_Item] = []
        owners: list[list[tuple[int, int]]] = []  # per item, per target: (request, candidate)
        for r_index, request in enumerate(requests):
            prompt_ids = self._encode_prompt(request.prompt)
            candidate_ids = [self._encode(c, first=False) for c in request.candidates]
            if any(not ids for ids in candidate_ids):
                raise ValueError(f"empty candidate in {request.candidates!r}")
            single = [(c, ids[0]) for c, ids in enumerate(candidate_ids) if len(ids) == 1]
            if single:  # one pass over the prompt scores every one-token candidate
                items.append(_Item(prompt_ids, [(len(prompt_ids), tok) for _, tok in single]))
                owners.append([(r_index, c) for c, _ in single])
            for c, ids in enumerate(candidate_ids):
                if len(ids) > 1:
                    items.append(
                        _Item(prompt_ids + ids[:-1], [(len(prompt_ids) + j, t) for j, t in enumerate(ids)])
                    )
                    owners.append([(r_index, c)] * len(ids))
        self.usage.requests += len(requests)
        if reuse_prefix is None:
            reuse_prefix = prefix_saving([item.ids for item in items]) >= PREFIX_REUSE_MIN_SAVING
        values_per_item = (
            self._shared_prefix_logprobs(items) if reuse_prefix else self._target_logprobs(items)
        )
        results = [[0.0] * len(r.candidates) for r in requests]
        for item_owners, values in zip(owners, values_per_item, strict=True):
            for (r_index, c), value in zip(item_owners, values, strict=True):
                results[r_index][c] += value
        return results

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[TokenLogprobs]:
        return self._by_adapter(requests, self._loglikelihood)

    def _loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[TokenLogprobs]:
        encoded = []
        for request in requests:
            ids: list[int] = []
            counted: list[bool] = []
            for index, (text, counts) in enumerate(request.segments):
                piece = self._encode_prompt(text) if index == 0 else self._encode(text, first=False)
                ids += piece
                counted += [counts] * len(piece)
            if counted:
                counted[0] = False  # the first token has no context to be predicted from
            encoded.append((ids, counted))
        items = [_Item(ids, [(i, ids[i]) for i in range(1, len(ids))]) for ids, _ in encoded]
        self.usage.requests += len(requests)
        return [
            TokenLogprobs(tuple(ids), (0.0, *values), tuple(counted))
            for (ids, counted), values in zip(encoded, self._target_logprobs(items), strict=True)
        ]

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        return self._by_adapter(requests, self._generate)

    def _generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        outputs: list[str] = [""] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            params = (
                request.max_new_tokens,
                request.temperature,
                request.top_p,
                request.top_k,
                request.repetition_penalty,
                request.seed,
                request.json_schema,
            )
            groups.setdefault(params, []).append(index)
        for params, indices in groups.items():
            encoded = [self._encode_prompt(requests[i].prompt) for i in indices]
            for batch in self._batches([len(e) + params[0] for e in encoded]):
                texts = self._generate_batch([encoded[b] for b in batch], requests[indices[batch[0]]])
                for b, text in zip(batch, texts, strict=True):
                    outputs[indices[b]] = text
                self.finished(len(batch))
        self.usage.requests += len(requests)
        return outputs

    # -- internals -------------------------------------------------------------

    def _encode(self, text: str, first: bool) -> list[int]:
        key = (text, first)
        ids = self.segment_cache.get(key)
        if ids is None:
            if len(self.segment_cache) > 200_000:
                self.segment_cache.clear()
            ids = self.segment_cache[key] = self.tokenizer(text, add_special_tokens=first)["input_ids"]
        return list(ids)

    def _encode_prompt(self, prompt: Prompt) -> list[int]:
        return prompt_ids(self.tokenizer, prompt, self._encode)

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Group indices, longest first, so that padded batch size stays within the token budget."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches: list[list[int]] = []
        for index in order:
            if batches and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= self.max_batch_tokens:
                batches[-1].append(index)
            else:
                batches.append([index])
        return batches

    @torch.inference_mode()
    def _target_logprobs(self, items: list[_Item]) -> list[list[float]]:
        results: list[list[float]] = [[] for _ in items]
        for batch in self._batches([len(item.ids) for item in items]):
            width = max(len(items[i].ids) for i in batch)
            input_ids = torch.full((len(batch), width), self.tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            # Logits only where a target is read: the vocabulary projection of every position would cost
            # batch x width x vocabulary floats (gigabytes for a real vocabulary).
            keep = torch.zeros((len(batch), width), dtype=torch.bool)
            for row, i in enumerate(batch):
                ids = items[i].ids
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention[row, : len(ids)] = 1
                for ctx, _ in items[i].targets:
                    keep[row, ctx - 1] = True
            self.finished(len(batch))
            if not keep.any():
                continue
            logits = self.model(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                logits_to_keep=keep.to(self.device),
            ).logits.reshape(
                -1, self.model.config.vocab_size
            )  # kept positions, row by row, in position order
            self.usage.forward_passes += 1
            self.usage.tokens_computed += int(attention.sum())
            offset = 0
            for row, i in enumerate(batch):
                positions = keep[row].nonzero().flatten().tolist()
                at = {p: offset + j for j, p in enumerate(positions)}
                offset += len(positions)
                targets = items[i].targets
                if not targets:
                    continue
                picked = torch.tensor([at[ctx - 1] for ctx, _ in targets], device=logits.device)
                tokens = torch.tensor([tok for _, tok in targets], device=logits.device)
                rows = torch.log_softmax(logits[picked].float(), dim=-1)
                results[i] = rows.gather(1, tokens[:, None]).squeeze(1).tolist()
        return results

    @functools.cached_property
    def _cache_argument(self) -> str:
        """transformers 5.x renamed the key/value cache ``past_key_values`` -> ``cache`` (the old name warns
        on every call); the range in pyproject admits both, so ask the model which it takes."""
        base = (
            self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        )  # under a PEFT wrapper
        return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

    @torch.inference_mode()
    def _shared_prefix_logprobs(self, items: list[_Item]) -> list[list[float]]:
        from transformers import DynamicCache

        results: list[list[float]] = [[] for _ in items]
        cache, cached = DynamicCache(), []
        for i in sorted(range(len(items)), key=lambda i: items[i].ids):
            item = items[i]
            if not item.targets:
                continue
            # Recompute at least the position whose logits the first target needs.
            keep = min(common_prefix_length(cached, item.ids), min(ctx for ctx, _ in item.targets) - 1)
            if keep < len(cached):
                cache.crop(keep - len(cached))  # a negative count removes that many tokens
            new_ids = item.ids[keep:]
            wanted = sorted({ctx - 1 - keep for ctx, _ in item.targets})
            out = self.model(
                input_ids=torch.tensor([new_ids], device=self.device),
                **{self._cache_argument: cache},
                use_cache=True,
                logits_to_keep=torch.tensor(wanted, device=self.device),
            )
            cache, cached = getattr(out, self._cache_argument), list(item.ids)
            self.usage.forward_passes += 1
            self.usage.tokens_computed += len(new_ids)
            self.usage.tokens_reused += keep
            at = {p: j for j, p in enumerate(wanted)}
            positions = torch.tensor(
                [at[ctx - 1 - keep] for ctx, _ in item.targets], device=out.logits.device
            )
            tokens = torch.tensor([tok for _, tok in item.targets], device=out.logits.device)
            rows = torch.log_softmax(out.logits[0, positions].float(), dim=-1)
            results[i] = rows.gather(1, tokens[:, None]).squeeze(1).tolist()
        return results

    @torch.inference_mode()
    def _generate_batch(self, encoded: list[list[int]], params: GenerateRequest) -> list[str]:
        width = max(len(e) for e in encoded)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])
        attention = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
        sampling = params.temperature > 0
        options = {
            "do_sample": sampling,
            "max_new_tokens": params.max_new_tokens,
            "pad_token_id": pad,
            "repetition_penalty": params.repetition_penalty,
        }
        if sampling:
            options.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
            torch.manual_seed(params.seed)
        else:
            options.update(temperature=None, top_p=None, top_k=None)
        if params.json_schema is not None:
            options["logits_processor"] = [self.grammars.logits_processor(params.json_schema, len(encoded))]
        out = self.model.generate(
            input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device), **options
        )
        new_tokens = out[:, width:]
        self.usage.forward_passes += new_tokens.shape[1]
        self.usage.tokens_computed += int(attention.sum()) + int((new_tokens != pad).sum())
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def module_name(name: str) -> str:
    """An adapter's name as PEFT may use it inside the model, where a module name cannot hold a "." (a
    country key such as "Czech Rep." can): such characters replaced, and a hash of the name kept unique."""
    if re.fullmatch(r"[\w:/ -]+", name):
        return name
    return re.sub(r"[^\w:/ -]", "_", name) + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]


def stop_token_ids(model, tokenizer) -> tuple[int, ...]:
    """The tokens generation stops at: the generation config's end-of-sequence ids, else the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if configured is not None else tokenizer.eos_token_id
    return tuple(ids) if isinstance(ids, (list, tuple)) else (ids,)


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def prefix_saving(sequences: list[list[int]]) -> float:
    """Share of tokens a depth-first walk of the prefix tree would not recompute."""
    total = sum(len(s) for s in sequences)
    if not total:
        return 0.0
    ordered = sorted(sequences)
    shared = sum(common_prefix_length(a, b) for a, b in pairwise(ordered))
    return shared / total
