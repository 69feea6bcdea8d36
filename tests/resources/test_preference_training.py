"""Preference tuning (DPO through TRL) of a LoRA adapter on the embedded model, the base as the reference."""

import pytest
import torch

from persona_platform.resources.llm import EngineCapabilityError, LoglikelihoodRequest
from persona_platform.resources.llm.simulated import PlantedSignalEngine, WorldSpec
from persona_platform.resources.preference import PreferencePair
from persona_platform.resources.training import LoraTraining, TrainingError, files_fingerprint

SETTINGS = LoraTraining(
    rank=4,
    alpha=8,
    dropout=0.0,
    target_modules=("q_proj", "v_proj"),
    learning_rate=5e-3,
    epochs=2,
    batch_size=4,
    max_length=128,
    checkpoint_every=2,
)
TOPICS = ("taxes", "schools", "roads", "parks", "water", "housing", "buses", "libraries")
PAIRS = [
    PreferencePair(f"Should the council fund {topic}? Answer:", chosen, rejected)
    for topic in TOPICS
    for chosen, rejected in ((" Yes, it should.", " No, never."), (" Agreed.", " Refused."))
]
STEPS = SETTINGS.epochs * len(PAIRS) // SETTINGS.batch_size


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def engine(tiny_llm):
    """The embedded model in an engine of its own: training adds adapters to the model it serves (the
    session's shared engine must keep serving a plain model)."""
    from persona_platform.resources.llm.transformers_backend import load_transformers_engine

    return load_transformers_engine("tiny", tiny_llm.model_path(), device="cpu", dtype="float32")


def mean_margin(engine, adapter: str | None) -> float:
    """Mean over the pairs of log P(chosen | prompt) - log P(rejected | prompt)."""
    requests = [
        LoglikelihoodRequest(((pair.prompt, False), (text, True)), adapter=adapter)
        for pair in PAIRS
        for text in (pair.chosen, pair.rejected)
    ]
    scores = [result.total for result in engine.loglikelihood(requests)]
    margins = [chosen - rejected for chosen, rejected in zip(scores[::2], scores[1::2], strict=True)]
    return sum(margins) / len(margins)


@pytest.fixture(scope="module")
def trained(engine, tmp_path_factory):
    """One uninterrupted run, with the base's margin measured before it."""
    root = tmp_path_factory.mktemp("dpo")
    before = mean_margin(engine, None)
    reports, lines = [], []
    outcome = engine.train_preference_adapter(
        "council",
        PAIRS,
        SETTINGS,
        0.1,
        root / "checkpoints",
        root / "adapter",
        log=lines.append,
        progress=lambda step, total, numbers: reports.append((step, total, numbers["loss"])),
    )
    return outcome, before, reports, lines, root


def test_dpo_widens_the_preferred_margin_over_the_base(engine, trained):
    outcome, before, reports, lines, root = trained
    after = mean_margin(engine, "council")
    assert after > before + 1.0, (before, after)
    assert mean_margin(engine, None) == pytest.approx(before, abs=1e-4)  # the base itself is untouched
    assert (outcome.steps, outcome.resumed_from_step, outcome.model_loads) == (STEPS, None, 0)
    assert [r[:2] for r in reports] == [(step, STEPS) for step in range(1, STEPS + 1)]
    assert [p["step"] for p in outcome.losses] == list(range(1, STEPS + 1))
    # The reference is the base and the fresh adapter starts as the base: the first loss is log 2.
    assert outcome.losses[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert outcome.losses[-1]["loss"] < outcome.losses[0]["loss"]
    assert len(lines) == 2 and "16 pairs" in lines[0] and f"{STEPS} steps" in lines[1]
    # Neither a second PEFT wrapper nor a reference copy of the adapter: only the trained adapter was added.
    assert engine.adapters["council"][0] in engine.model.peft_config
    assert all("-training-" in name for name in engine.model.peft_config)
    assert not any(".ref." in name or ".default." in name for name, _ in engine.model.named_parameters())
    assert "forward" not in vars(engine.model.get_base_model())  # TRL's fused LM head taken off again
    assert not engine.model.training


# PEFT reads an attribute that transformers 5 renamed.
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_the_saved_adapter_is_a_peft_adapter_that_loads_on_a_fresh_base(engine, trained, tiny_llm):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    outcome, *_ = trained
    assert sorted(p.name for p in outcome.adapter_dir.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert outcome.fingerprint == files_fingerprint(outcome.adapter_dir) == engine.adapters["council"][1]

    base = AutoModelForCausalLM.from_pretrained(tiny_llm.model_path(), dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, str(outcome.adapter_dir)).eval()
    ids = torch.tensor([engine.tokenizer(PAIRS[0].prompt + PAIRS[0].chosen)["input_ids"]])
    with torch.no_grad(), engine.using_adapter("council"):
        served = engine.model(input_ids=ids).logits
    with torch.no_grad():
        assert (loaded(input_ids=ids).logits - served).abs().max() < 1e-5


def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_adapter(engine, trained, tmp_path):
    complete, *_ = trained

    def stop_at_three(step, total, numbers):
        if step == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        engine.train_preference_adapter(
            "resumed", PAIRS, SETTINGS, 0.1, tmp_path / "c", tmp_path / "a", progress=stop_at_three
        )
    assert sorted(p.name for p in (tmp_path / "c").glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (tmp_path / "a").exists()

    outcome = engine.train_preference_adapter("resumed", PAIRS, SETTINGS, 0.1, tmp_path / "c", tmp_path / "a")
    assert (outcome.steps, outcome.resumed_from_step) == (complete.steps, 2)
    losses = [p["loss"] for p in complete.losses]
    assert [p["loss"] for p in outcome.losses] == pytest.approx(losses, abs=1e-5)
    assert outcome.fingerprint == complete.fingerprint  # the same batches, optimizer state and weights


def test_a_run_that_cannot_train_is_refused_before_an_adapter_is_added(engine, tmp_path):
    adapters = list(getattr(engine.model, "peft_config", {}))
    with pytest.raises(TrainingError, match="^council: no preference pairs to train on$"):
        engine.train_preference_adapter("council", [], SETTINGS, 0.1, tmp_path / "c", tmp_path / "a")
    for change, named in [({"quantization": "4bit"}, "quantization=4bit"), ({"processes": 2}, "processes=1")]:
        settings = LoraTraining(**{**SETTINGS.__dict__, **change})
        with pytest.raises(TrainingError, match=named):
            engine.train_preference_adapter("council", PAIRS, settings, 0.1, tmp_path / "c", tmp_path / "a")
    assert list(getattr(engine.model, "peft_config", {})) == adapters
    assert not any(tmp_path.iterdir())


def test_a_backend_without_training_refuses_preference_tuning_by_name(tmp_path):
    engine = PlantedSignalEngine(model_id="simulated:w", spec=WorldSpec(questions=2))
    with pytest.raises(
        EngineCapabilityError,
        match=r"^the simulated backend cannot preference-tune adapters \(model simulated:w\); "
        "use the transformers backend for country_adapters with objective dpo$",
    ):
        engine.train_preference_adapter("council", PAIRS, SETTINGS, 0.1, tmp_path / "c", tmp_path / "a")
    assert not any(tmp_path.iterdir())
