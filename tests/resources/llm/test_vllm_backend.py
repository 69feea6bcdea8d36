"""The vLLM backend, where vllm and a CUDA GPU exist (the gpu extra); skipped elsewhere, saying why. Its
decision logic is tested everywhere with a stand-in for vllm (test_vllm_scoring.py); these run the real
engine: exact scores on both scoring paths, the prefix cache read by the one-token path, structured output,
and an adapter trained beside vLLM (asleep meanwhile) and served by it."""

import importlib.util

import pytest
import torch

from persona_platform.persona_assets.judging.rubrics import judgment_schema
from persona_platform.persona_assets.structured_output import ask_structured
from persona_platform.resources.llm import ChatPrompt, GenerateRequest, LoglikelihoodRequest, ScoreRequest
from persona_platform.resources.training import LoraTraining

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(),
    reason="vllm and a CUDA GPU are needed (pip install -e '.[gpu]' on a GPU machine)",
)


@pytest.fixture(scope="module")
def vllm_engine(tiny_llm):
    from persona_platform.resources.llm.peft_trainer import PeftTrainer
    from persona_platform.resources.llm.vllm_backend import load_vllm_engine

    engine = load_vllm_engine("tiny", tiny_llm.model_path(), dtype="float32", gpu_memory_utilization=0.3)
    engine.trainer = PeftTrainer("tiny", tiny_llm.model_path, device="cuda", dtype="float32")
    return engine


def test_scores_equal_the_transformers_backend(vllm_engine, tiny_engine):
    requests = [
        ScoreRequest(("Claim: the budget passes.", " Answer:"), (" True", " False")),
        ScoreRequest(ChatPrompt((("user", "Vote?"),)), ("Final Vote: Aye", "Final Vote: Naye")),
    ]
    for ours, reference in zip(vllm_engine.score(requests), tiny_engine.score(requests), strict=True):
        assert ours == pytest.approx(reference, abs=1e-3)
    [a] = vllm_engine.loglikelihood([LoglikelihoodRequest((("Some context.", False), (" The reply.", True)))])
    [b] = tiny_engine.loglikelihood([LoglikelihoodRequest((("Some context.", False), (" The reply.", True)))])
    assert a.token_ids == b.token_ids and a.total == pytest.approx(b.total, abs=1e-3)


def test_guided_decoding_gives_schema_valid_json(vllm_engine):
    prompts = [ChatPrompt((("user", f"Judge reply {i}."),)) for i in range(16)]
    answers = ask_structured(vllm_engine, prompts, judgment_schema(80), 80, temperature=1.0, seed=1)
    assert all(parsed.ok for _, parsed in answers), [p.failure for _, p in answers]


def test_one_token_scores_read_the_prefix_cache_and_stay_exact(vllm_engine, tiny_engine):
    shared = ("Context: the board met on Monday and discussed the budget at length.",)
    claims = [
        ScoreRequest((*shared, f" Claim {i}: the roof is funded.", " Answer:"), (" True", " False"))
        for i in range(8)
    ]
    before = vllm_engine.usage.snapshot()
    ours = vllm_engine.score(claims)
    used = vllm_engine.usage.since(before)
    assert used.tokens_reused > 0, used  # generation reads the prefix cache (prompt_logprobs would not)
    for got, want in zip(ours, tiny_engine.score(claims), strict=True):
        assert got == pytest.approx(want, abs=1e-3)  # full-softmax values, as the transformers backend's


def test_an_adapter_trained_beside_vllm_is_served_by_it(vllm_engine, tmp_path):
    settings = LoraTraining(rank=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj"), epochs=1)
    examples = vllm_engine.training_examples(
        [[("user", "Budget?"), ("assistant", "The roof is funded.")]] * 4
    )
    outcome = vllm_engine.train_adapter(
        "lenahart", examples, settings, tmp_path / "c.pt", tmp_path / "adapter"
    )
    assert vllm_engine.adapters["lenahart"][1] == outcome.fingerprint
    prompt = ChatPrompt((("user", "Budget?"),))
    [text] = vllm_engine.generate([GenerateRequest(prompt, max_new_tokens=4, adapter="lenahart")])
    assert isinstance(text, str)
    _, differences = vllm_engine.merge_adapter("lenahart", tmp_path / "merged", ["The roof is funded."])
    assert max(differences) <= 1e-4
