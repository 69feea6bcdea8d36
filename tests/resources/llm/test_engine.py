import pytest
import torch

from persona_platform.resources.llm import GenerateRequest, LoglikelihoodRequest, ScoreRequest

PROMPTS = [
    "### COUNTRY OPINION DATABASE: ALDORIA ###\n"
    'Q: "Should schools teach a second language?" | Op: "Yes" | Is Most Popular Opinion in Aldoria:',
    "Should voting be compulsory?",
    "How important is religion in your life? Answer:",
    "x",
]
CANDIDATES = (" True", " False", " Yes", " Naye")


def direct_logprobs(engine, prompt, candidate):
    """log P(candidate | prompt) from plain forward passes and a softmax over the whole vocabulary."""
    tokenizer, model = engine.tokenizer, engine.model
    prompt_ids = tokenizer(prompt)["input_ids"]
    candidate_ids = tokenizer(candidate, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + candidate_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    probs = torch.softmax(logits, dim=-1)
    total = 0.0
    for j, token in enumerate(candidate_ids):
        total += float(torch.log(probs[len(prompt_ids) + j - 1, token]))
    return total


def test_score_equals_softmax_over_the_full_vocabulary(tiny_engine):
    scores = tiny_engine.score([ScoreRequest(p, CANDIDATES) for p in PROMPTS])
    for prompt, row in zip(PROMPTS, scores, strict=True):
        for candidate, value in zip(CANDIDATES, row, strict=True):
            assert value == pytest.approx(direct_logprobs(tiny_engine, prompt, candidate), abs=1e-5)


def test_batched_equals_unbatched(tiny_engine):
    requests = [ScoreRequest(p, CANDIDATES) for p in PROMPTS]
    batched = tiny_engine.score(requests)
    one_by_one = [tiny_engine.score([r])[0] for r in requests]
    assert [v for row in batched for v in row] == pytest.approx(
        [v for row in one_by_one for v in row], abs=1e-5
    )


def test_one_forward_pass_for_a_batch_of_single_token_candidates(tiny_engine):
    single = tuple(
        c for c in CANDIDATES if len(tiny_engine.tokenizer(c, add_special_tokens=False)["input_ids"]) == 1
    )
    if not single:
        pytest.skip("no single-token candidate in this tokenizer")
    before = tiny_engine.usage.snapshot()
    tiny_engine.score([ScoreRequest(p, single) for p in PROMPTS])
    used = tiny_engine.usage.since(before)
    assert used.forward_passes == 1
    assert used.requests == len(PROMPTS)


def test_loglikelihood_counts_only_masked_tokens_and_agrees_with_score(tiny_engine):
    context, answer = "Q: Should voting be compulsory?\nA:", " Yes, it should."
    result = tiny_engine.loglikelihood([LoglikelihoodRequest(((context, False), (answer, True)))])[0]
    n_answer = len(tiny_engine.tokenizer(answer, add_special_tokens=False)["input_ids"])
    assert result.n_counted == n_answer
    assert result.total == pytest.approx(
        tiny_engine.score([ScoreRequest(context, (answer,))])[0][0], abs=1e-5
    )


def test_greedy_generation_is_deterministic_and_batch_independent(tiny_engine):
    requests = [GenerateRequest(p, max_new_tokens=6) for p in PROMPTS[:3]]
    batched = tiny_engine.generate(requests)
    assert batched == tiny_engine.generate(requests)
    assert batched == [tiny_engine.generate([r])[0] for r in requests]


def test_sampling_is_seeded(tiny_engine):
    request = GenerateRequest(PROMPTS[1], max_new_tokens=8, temperature=1.0, top_p=0.95, seed=5)
    assert tiny_engine.generate([request]) == tiny_engine.generate([request])


def test_unknown_model_path_is_a_clear_error(tmp_path):
    from persona_platform.resources.llm.resource import LLMResource
    from persona_platform.resources.llm.transformers_backend import ModelLoadError

    missing = tmp_path / "no-such-model"
    resource = LLMResource(model=str(missing), models_dir=str(tmp_path), corpus_dir=str(tmp_path))
    with pytest.raises(ModelLoadError, match="no-such-model"):
        resource.engine()


def test_tiny_model_is_built_deterministically(tmp_path):
    import hashlib

    from persona_platform.resources.llm.tiny import SEEDS, _build, corpus_files
    from persona_platform.resources.settings import DATA_DIR

    digests = []
    for name in ("a", "b"):
        out = tmp_path / name
        out.mkdir()
        _build(out, corpus_files(DATA_DIR), SEEDS["tiny"])
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()})
    assert digests[0] == digests[1]
    assert "model.safetensors" in digests[0] and "tokenizer.json" in digests[0]
