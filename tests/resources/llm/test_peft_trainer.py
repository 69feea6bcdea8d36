"""Training and merging for an engine that only serves adapters: transformers + PEFT on a load of the base of
its own (PeftTrainer), the adapter then served by the engine. Here the serving engine is the openai backend
against the OpenAI-compatible double with vLLM's runtime adapter routes (tests/adapter_server_double.py);
the training base is the embedded model."""

from pathlib import Path

import pytest

from persona_platform.persona_assets.agents.tables import MERGE_TOLERANCE, merge_difference
from persona_platform.resources.llm import EngineCapabilityError
from persona_platform.resources.llm.openai_backend import EngineRequestError
from persona_platform.resources.llm.resource import LLMResource
from persona_platform.resources.settings import DATA_DIR
from persona_platform.resources.training import LoraTraining, files_fingerprint
from tests.adapter_server_double import AdapterServer, adapter_server

SECRET = "sk-adapter-server"
SETTINGS = LoraTraining(
    rank=4,
    alpha=8,
    dropout=0.0,
    target_modules=("q_proj", "v_proj"),
    learning_rate=1e-2,
    epochs=1,
    batch_size=2,
    checkpoint_every=1,
)
CHATS = [
    [("user", "Public: Is the budget ready?"), ("assistant", "Let's keep us on track.")],
    [("user", "Mr. Quist: Bottom line?"), ("assistant", "For the record, the roof is funded.")],
    [("user", "Public: And the buses?"), ("assistant", "They wait for the spring budget.")],
]


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("PERSONA_ENGINE_API_KEY", SECRET)
    with adapter_server() as url:
        yield url


def served(url: str, models_dir, **fields):
    """The openai engine for the double's model, trained (by default) on the embedded model."""
    options = {"train_model": "tiny", "device": "cpu", "dtype": "float32", **fields}
    return LLMResource(
        backend="openai",
        model="served-base",
        base_url=url,
        models_dir=str(models_dir),
        corpus_dir=str(DATA_DIR),
        **options,
    ).engine()


@pytest.fixture(scope="module")
def own_engine(tiny_llm):
    """The embedded model in a transformers engine of its own (training adds adapters to it)."""
    from persona_platform.resources.llm.transformers_backend import load_transformers_engine

    return load_transformers_engine("tiny", tiny_llm.model_path(), device="cpu", dtype="float32")


def test_an_engine_that_only_serves_trains_the_very_adapter_the_transformers_engine_trains(
    server, models_dir, tiny_llm, own_engine, tmp_path
):
    engine = served(server, models_dir)
    assert engine.training_base == "tiny"
    examples = engine.training_examples(CHATS)
    assert examples == own_engine.training_examples(CHATS)  # the same template, tokenizer and mask

    loads = engine.usage.model_loads
    outcome = engine.train_adapter("marisolvega", examples, SETTINGS, tmp_path / "c.pt", tmp_path / "served")
    reference = own_engine.train_adapter(
        "marisolvega", examples, SETTINGS, tmp_path / "ref.pt", tmp_path / "reference"
    )
    assert engine.usage.model_loads == loads + 1 and engine.trainer.loads == 1  # its own load, released
    assert (outcome.steps, outcome.resumed_from_step) == (reference.steps, None) == (2, None)
    assert [p["loss"] for p in outcome.losses] == pytest.approx(
        [p["loss"] for p in reference.losses], abs=1e-6
    )
    assert (tmp_path / "served" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "reference" / "adapter_model.safetensors"
    ).read_bytes()

    # Served at once: registered with the server under the agent's name, from the adapter directory.
    assert AdapterServer.adapters == {"marisolvega": str(tmp_path / "served")}
    [call] = AdapterServer.adapter_calls
    assert call == {
        "route": "load_lora_adapter",
        "auth": f"Bearer {SECRET}",
        "body": {"lora_name": "marisolvega", "lora_path": str(tmp_path / "served")},
    }
    assert engine.served_adapters["marisolvega"] == (str(tmp_path / "served"), outcome.fingerprint)

    fingerprint, differences = engine.merge_adapter(
        "marisolvega", tmp_path / "merged", ["The roof is funded.", "Let's keep us on track."]
    )
    assert len(differences) == 2 and merge_difference("marisolvega", differences) <= MERGE_TOLERANCE
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "merged").iterdir()
    }
    assert fingerprint == files_fingerprint(tmp_path / "merged")
    assert engine.usage.model_loads == loads + 2 and engine.trainer.loads == 2


def test_a_killed_run_resumes_from_its_checkpoint_on_the_trainer(server, models_dir, tmp_path):
    engine = served(server, models_dir)
    examples = engine.training_examples(CHATS)
    first = engine.train_adapter("theodorequist", examples, SETTINGS, tmp_path / "run.pt", tmp_path / "first")
    again = engine.train_adapter("theodorequist", examples, SETTINGS, tmp_path / "run.pt", tmp_path / "again")
    assert (again.steps, again.resumed_from_step, again.losses) == (2, 2, first.losses)
    assert (tmp_path / "again" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "first" / "adapter_model.safetensors"
    ).read_bytes()


def test_a_changed_adapter_replaces_the_one_the_server_serves(server, models_dir, tmp_path):
    engine = served(server, models_dir)
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text("{}")
    engine.add_adapter("lenahart", str(tmp_path / "one"), "f1")
    engine.add_adapter("lenahart", str(tmp_path / "one"), "f1")  # unchanged: nothing sent
    engine.add_adapter("lenahart", str(tmp_path / "two"), "f2")
    assert [(c["route"], c["body"].get("lora_path")) for c in AdapterServer.adapter_calls] == [
        ("load_lora_adapter", str(tmp_path / "one")),
        ("load_lora_adapter", str(tmp_path / "two")),  # 400: that name is served already
        ("unload_lora_adapter", None),
        ("load_lora_adapter", str(tmp_path / "two")),
    ]
    assert AdapterServer.adapters == {"lenahart": str(tmp_path / "two")}
    with pytest.raises(EngineRequestError, match=r"loading adapter 'ghost' .* HTTP 404: .*No adapter found"):
        engine.add_adapter("ghost", str(tmp_path / "nowhere"), "f3")


def test_a_server_without_runtime_adapter_routes_must_serve_the_adapter_itself(
    monkeypatch, models_dir, tmp_path
):
    monkeypatch.setenv("PERSONA_ENGINE_API_KEY", SECRET)
    with adapter_server(runtime_updates=False, adapters={"marisolvega": "/srv/adapters/m"}) as url:
        engine = served(url, models_dir)
        engine.add_adapter("marisolvega", str(tmp_path), "f")  # started with --lora-modules: listed, accepted
        with pytest.raises(EngineRequestError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"):
            engine.add_adapter("lenahart", str(tmp_path), "f")


def test_a_served_model_that_is_no_local_weights_needs_a_training_base(server, models_dir, tmp_path):
    engine = served(server, models_dir, train_model="")
    assert engine.training_base == "served-base"
    with pytest.raises(
        EngineCapabilityError,
        match=r"^the openai backend cannot train adapters \(model served-base\): the served model "
        r"'served-base' is not weights this machine has .* set PERSONA_TRAIN_MODEL",
    ):
        engine.train_adapter(
            "marisolvega", [([1, 2], [False, True])], SETTINGS, tmp_path / "c.pt", tmp_path / "a"
        )
    with pytest.raises(EngineCapabilityError, match="cannot prepare training examples"):
        engine.training_examples(CHATS)
    with pytest.raises(EngineCapabilityError, match="PERSONA_TRAIN_MODEL='/no/such/base': no such directory"):
        served(server, models_dir, train_model="/no/such/base").merge_adapter("m", tmp_path / "m", ["x"])
    assert not any(Path(tmp_path).iterdir())  # refused before anything was written
    assert AdapterServer.adapter_calls == []
