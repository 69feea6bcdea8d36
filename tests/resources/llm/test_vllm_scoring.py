"""The vLLM backend's decisions, with a stand-in for the ``vllm`` package (vLLM cannot be installed here):
which scoring request takes which path, how results map back, that the values are full-softmax
log-probabilities (the stand-in renormalises over ``allowed_token_ids`` as vLLM's V1 sampler does, so a path
through it would fail), that the one-token path reads the prefix cache and the prompt log-probability path
does not (as vLLM skips reading it for requests with prompt_logprobs), the engine arguments, and training
beside vLLM (asleep meanwhile). The stand-in's API is the subset of vLLM 0.30-0.32 this backend uses; the
real engine is tested where a GPU is lent (test_vllm_backend.py)."""

import math
import re
import sys
import types
import zlib
from dataclasses import dataclass, fields

import numpy as np
import pytest

from persona_platform.resources.llm import ScoreRequest
from persona_platform.resources.llm.vllm_backend import (
    MAX_LOGPROB_TOKEN_IDS,
    VllmEngine,
    load_vllm_engine,
    plan_scores,
)

VOCAB = 300


class WordTokenizer:
    """Words with their leading space as tokens of a growing vocabulary; id 0 begins a text."""

    def __init__(self):
        self.vocab = {"<s>": 0}

    def __call__(self, text, add_special_tokens=True):
        ids = [0] if add_special_tokens else []
        for piece in re.findall(r"\s*\S+", text):
            ids.append(self.vocab.setdefault(piece, len(self.vocab)))
        assert len(self.vocab) <= VOCAB
        return {"input_ids": ids}


def model_logprobs(context: tuple[int, ...], adapter: str | None) -> np.ndarray:
    """The stand-in model: log_softmax over the whole vocabulary after ``context``."""
    seed = zlib.crc32(repr((adapter, context[-3:], len(context))).encode())
    logits = np.random.default_rng(seed).normal(0, 3, VOCAB)
    return logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()


# -- the stand-in vllm package ------------------------------------------------------------------------------


@dataclass
class SamplingParams:
    """vLLM's fields this backend may pass (a msgspec Struct there: unknown ones are a TypeError)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    max_tokens: int | None = 16
    repetition_penalty: float = 1.0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    logprob_token_ids: list[int] | None = None
    allowed_token_ids: list[int] | None = None
    logit_bias: dict | None = None
    structured_outputs: object = None
    detokenize: bool = True

    @property
    def skip_reading_prefix_cache(self) -> bool:
        return self.prompt_logprobs is not None  # vLLM's default for it


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str = ""


class FakeLLM:
    """``generate`` as vLLM answers it, with a prefix cache of whole computed prefixes, and sleep mode."""

    def __init__(self, **kwargs):
        self.kwargs, self.requests, self.events, self.cached = kwargs, [], [], set()

    def get_tokenizer(self):
        return WordTokenizer()

    def generate(self, prompts, params, lora_request=None, use_tqdm=True):
        assert self.events[-1:] != ["sleep"], "generate on a sleeping engine"
        params = params if isinstance(params, list) else [params] * len(prompts)
        return [
            self._one(p["prompt_token_ids"], s, lora)
            for p, s, lora in zip(prompts, params, lora_request, strict=True)
        ]

    def _one(self, ids, params, lora):
        adapter = lora.lora_name if lora else None
        self.requests.append((list(ids), params, adapter))
        hit = 0
        if not params.skip_reading_prefix_cache:
            hit = max((n for n in range(1, len(ids)) if (adapter, tuple(ids[:n])) in self.cached), default=0)
        self.cached |= {(adapter, tuple(ids[:n])) for n in range(1, len(ids) + 1)}
        prompt_logprobs = None
        if params.prompt_logprobs is not None:
            prompt_logprobs = [None] + [
                {ids[i]: Logprob(float(model_logprobs(tuple(ids[:i]), adapter)[ids[i]]))}
                for i in range(1, len(ids))
            ]
        last = model_logprobs(tuple(ids), adapter)
        if params.allowed_token_ids is not None:  # the V1 sampler's mask, then log_softmax over what is left
            kept = np.full(VOCAB, -np.inf)
            kept[params.allowed_token_ids] = last[params.allowed_token_ids]
            last = kept - np.log(np.exp(kept).sum())
        sampled = int(np.argmax(last))
        logprobs = None
        if params.logprob_token_ids is not None:
            logprobs = [{t: Logprob(float(last[t])) for t in [sampled, *params.logprob_token_ids]}]
        completion = types.SimpleNamespace(text="", token_ids=[sampled], logprobs=logprobs)
        return types.SimpleNamespace(
            prompt_token_ids=list(ids),
            num_cached_tokens=hit,
            prompt_logprobs=prompt_logprobs,
            outputs=[completion],
        )

    def reset_prefix_cache(self):
        self.events.append("reset_prefix_cache")
        self.cached.clear()

    def sleep(self, level=1):
        self.events.append("sleep")
        assert level == 1

    def wake_up(self, tags=None):
        self.events.append("wake_up")


@pytest.fixture(autouse=True)
def fake_vllm(monkeypatch):
    def sampling_params(**options):
        known = {f.name for f in fields(SamplingParams)}
        if set(options) - known:
            raise TypeError(f"unexpected keyword arguments {sorted(set(options) - known)}")
        return SamplingParams(**options)

    package = types.ModuleType("vllm")
    package.SamplingParams, package.LLM = sampling_params, FakeLLM
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    for name, module in [
        ("vllm", package),
        ("vllm.inputs", inputs),
        ("vllm.lora", lora),
        ("vllm.lora.request", request),
    ]:
        monkeypatch.setitem(sys.modules, name, module)


@pytest.fixture
def engine():
    llm = FakeLLM()
    served = VllmEngine(model_id="fake", llm=llm, tokenizer=WordTokenizer())
    served.add_adapter("marisolvega", "/adapters/marisolvega", "f" * 16)
    return served


def reference(engine, prompt: str | tuple, candidate: str, adapter=None) -> float:
    """log P(candidate | prompt), token by token, from the stand-in model's full softmax."""
    ids = engine._encode_prompt(prompt)
    total = 0.0
    for token in engine._encode(candidate, first=False):
        total += float(model_logprobs(tuple(ids), adapter and f"{adapter}-{'f' * 12}")[token])
        ids = [*ids, token]
    return total


# -- tests ---------------------------------------------------------------------------------------------------


def test_one_token_candidates_take_one_generated_token_longer_ones_prompt_logprobs(engine):
    requests = [
        ScoreRequest(("Claim: the budget passes.", " Answer:"), (" True", " False")),
        ScoreRequest("Which option? Answer:", (" A", " B", " C", " D"), adapter="marisolvega"),
        ScoreRequest(("Claim: the budget passes.", " Answer:"), (" True", " Not at all")),
    ]
    scores = engine.score(requests)

    kinds = [
        ("next" if p.logprob_token_ids is not None else "sequence", adapter, len(ids))
        for ids, p, adapter in engine.llm.requests
    ]
    prompt_length = len(engine._encode_prompt(requests[0].prompt))
    assert kinds == [
        ("next", None, prompt_length),  # requests 0 and 2 share the prompt: one query for " True", " False"
        ("next", "marisolvega-ffffffffffff", len(engine._encode_prompt(requests[1].prompt))),
        ("sequence", None, prompt_length + 3),  # " Not at all" is three tokens
    ]
    for _, params, _ in engine.llm.requests:
        if params.logprob_token_ids is not None:  # greedy, one token, nothing that touches the logits
            assert (params.max_tokens, params.temperature, params.allowed_token_ids, params.logit_bias) == (
                1,
                0.0,
                None,
                None,
            )
    assert len(engine.llm.requests[0][1].logprob_token_ids) == 2

    expected = [[reference(engine, r.prompt, c, r.adapter) for c in r.candidates] for r in requests]
    assert scores == [pytest.approx(row, abs=1e-9) for row in expected]
    # Full-softmax values: candidates' probabilities do not sum to 1 (not renormalised over the candidates).
    assert sum(math.exp(v) for v in scores[1]) < 0.99
    assert engine.usage.requests == 3


def test_the_one_token_path_reads_the_prefix_cache_the_prompt_logprob_path_does_not(engine):
    shared = ("Context: a long shared preamble of the experiment with many words in it.",)
    claims = [ScoreRequest((*shared, f" Claim {i}.", " Answer:"), (" True", " False")) for i in range(6)]
    engine.score(claims)
    one_token = engine.usage.tokens_reused
    assert one_token >= 5 * len(
        engine._encode_prompt(shared)
    )  # every claim after the first reuses the preamble
    engine.llm.cached.clear()
    before = engine.usage.tokens_reused
    engine.score([ScoreRequest(r.prompt, (" True story", " False story")) for r in claims])
    assert engine.usage.tokens_reused == before  # vLLM skips reading the cache for prompt log-probabilities


def test_more_one_token_candidates_than_vllm_returns_at_once_are_split(engine):
    candidates = tuple(f" w{i}" for i in range(MAX_LOGPROB_TOKEN_IDS + 5))
    request = ScoreRequest("Pick a word:", candidates)
    [scores] = engine.score([request])
    asked = [p.logprob_token_ids for _, p, _ in engine.llm.requests]
    assert [len(a) for a in asked] == [MAX_LOGPROB_TOKEN_IDS, 5]
    assert scores == pytest.approx([reference(engine, request.prompt, c) for c in candidates], abs=1e-9)


def test_the_plan_is_pure_and_groups_by_prompt_and_adapter():
    tokenizer = WordTokenizer()
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    requests = [
        ScoreRequest("p", (" x", " y")),
        ScoreRequest("p", (" y", " z"), adapter="a"),
        ScoreRequest("p", (" y", " x y")),
    ]
    next_token, sequences = plan_scores(requests, lambda p: encode(p), encode)
    assert [(q.adapter, q.tokens, q.owners) for q in next_token] == [
        (None, [encode(" x")[0], encode(" y")[0]], [(0, 0, 2), (0, 1, 3), (2, 0, 3)]),
        ("a", [3, encode(" z")[0]], [(1, 0, 3), (1, 1, 4)]),
    ]
    assert [(s.owner, s.start, len(s.ids)) for s in sequences] == [((2, 1), 1, 3)]
    with pytest.raises(ValueError, match="empty candidate"):
        plan_scores([ScoreRequest("p", ("",))], encode, encode)


def test_the_engine_is_loaded_with_raw_logprobs_lora_limits_and_sleep_mode():
    engine = load_vllm_engine("m", "/models/m", tensor_parallel_size=4, max_loras=3, max_lora_rank=64)
    options = engine.llm.kwargs
    assert options["logprobs_mode"] == "raw_logprobs" and options["enable_prefix_caching"]
    assert (options["tensor_parallel_size"], options["max_loras"], options["max_lora_rank"]) == (4, 3, 64)
    assert options["enable_lora"] and options["enable_sleep_mode"] and engine.sleeps_for_training
    assert "quantization" not in options and "max_model_len" not in options
    assert not load_vllm_engine("m", "/m", sleep_for_training=False).llm.kwargs["enable_sleep_mode"]


def test_adapters_are_trained_beside_vllm_asleep_then_served_from_their_directory(tiny_llm, tmp_path):
    from persona_platform.resources.llm.peft_trainer import PeftTrainer
    from persona_platform.resources.training import LoraTraining

    engine = load_vllm_engine("tiny", tiny_llm.model_path())
    engine.trainer = PeftTrainer("tiny", tiny_llm.model_path, device="cpu", dtype="float32")
    settings = LoraTraining(rank=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj"), epochs=1)
    examples = engine.training_examples([[("user", "Hello?"), ("assistant", "The roof is funded.")]])
    outcome = engine.train_adapter("lenahart", examples, settings, tmp_path / "c.pt", tmp_path / "adapter")
    assert engine.llm.events == ["reset_prefix_cache", "sleep", "wake_up"]
    lora, fingerprint = engine.adapters["lenahart"]
    assert (lora.lora_path, fingerprint) == (str(tmp_path / "adapter"), outcome.fingerprint)
    assert engine.usage.model_loads == 2  # vLLM's and the trainer's

    _, differences = engine.merge_adapter("lenahart", tmp_path / "merged", ["The roof is funded."])
    assert max(differences) <= 1e-4
    assert engine.llm.events[3:] == ["reset_prefix_cache", "sleep", "wake_up"]
