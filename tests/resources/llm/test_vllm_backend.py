"""The vLLM backend, where vllm and a CUDA GPU exist (the gpu extra); skipped elsewhere, saying why."""

import importlib.util

import pytest
import torch

from persona_platform.persona_assets.judging.rubrics import judgment_schema
from persona_platform.persona_assets.structured_output import ask_structured
from persona_platform.resources.llm import ChatPrompt, LoglikelihoodRequest, ScoreRequest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(),
    reason="vllm and a CUDA GPU are needed (pip install -e '.[gpu]' on a GPU machine)",
)


@pytest.fixture(scope="module")
def vllm_engine(tiny_llm):
    from persona_platform.resources.llm.vllm_backend import load_vllm_engine

    return load_vllm_engine("tiny", tiny_llm.model_path(), dtype="float32", gpu_memory_utilization=0.3)


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
