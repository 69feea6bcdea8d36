"""The engine interface as a whole: the backend registry, model roles from the settings (``backend:model``),
the training capability (the transformers backend has it, the others refuse it by name) and an engine package
that imports without Dagster."""

import subprocess
import sys

import pytest

from persona_platform.persona_assets.agents.tables import MERGE_TOLERANCE, merge_difference
from persona_platform.resources.llm import ChatPrompt, EngineCapabilityError, GenerateRequest
from persona_platform.resources.llm.backends import BACKENDS, UnknownBackendError, backend, split_backend
from persona_platform.resources.llm.openai_backend import OpenAIEngine
from persona_platform.resources.llm.resource import LLMResource, role_resources
from persona_platform.resources.llm.simulated import PlantedSignalEngine, WorldSpec
from persona_platform.resources.settings import ModelRole, SettingsError, load_settings
from persona_platform.resources.training import LoraTraining
from tests.conftest import PROJECT_ROOT

# -- no Dagster below the assets -----------------------------------------------------------------------------

PURE_MODULES = [
    "persona_platform.resources.llm",
    "persona_platform.resources.llm.engine",
    "persona_platform.resources.llm.backends",
    "persona_platform.resources.llm.chat",
    "persona_platform.resources.llm.constrained",
    "persona_platform.resources.llm.transformers_backend",
    "persona_platform.resources.llm.vllm_backend",
    "persona_platform.resources.llm.openai_backend",
    "persona_platform.resources.llm.peft_trainer",
    "persona_platform.resources.llm.simulated",
    "persona_platform.resources.llm.tiny",
    "persona_platform.resources.training",
    "persona_platform.resources.files",
    "persona_platform.resources.settings",
    "persona_platform.persona_assets.judging.judge",
    "persona_platform.persona_assets.elicitation.prompts",
    "persona_platform.persona_assets.structured_output",
    "persona_platform.persona_assets.agents.tables",
]


def test_the_engines_training_and_pure_logic_import_without_dagster():
    code = (
        "import importlib, sys\n"
        f"for name in {PURE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "    assert 'dagster' not in sys.modules, f'importing {name} imported dagster'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]


# -- the registry --------------------------------------------------------------------------------------------


def test_an_unknown_backend_is_one_line_naming_the_registered_ones(tmp_path):
    with pytest.raises(UnknownBackendError) as error:
        backend("gpt")
    assert (
        str(error.value) == "unknown engine backend 'gpt'; registered: transformers, vllm, openai, simulated"
    )
    with pytest.raises(UnknownBackendError, match="registered: transformers, vllm"):
        LLMResource(backend="gpt", models_dir=str(tmp_path), corpus_dir=str(tmp_path)).engine()
    with pytest.raises(
        SettingsError, match=r"^PERSONA_ENGINE: 'gpt' is not one of transformers, vllm, openai, simulated$"
    ):
        load_settings({"PERSONA_ENGINE": "gpt"})


def test_each_backend_reads_its_own_settings_and_the_cache_key_holds_every_one(tmp_path):
    assert {
        "tensor_parallel_size",
        "quantization",
        "max_model_len",
        "gpu_memory_utilization",
        "max_lora_rank",
        "max_loras",
        "sleep_for_training",
        "dtype",
        "train_model",
        "device",
    } <= set(BACKENDS["vllm"].settings)
    assert set(BACKENDS["openai"].settings) == {
        "model",
        "base_url",
        "api_key_variables",
        "timeout_s",
        "max_retries",
        "max_concurrency",
        # the PEFT trainer beside it: its base (the embedded one is built under models_dir), device, dtype
        "train_model",
        "models_dir",
        "corpus_dir",
        "device",
        "dtype",
    }
    assert BACKENDS["simulated"].settings == ("model",)
    every_field = set(LLMResource.model_fields)
    assert all(
        set(b.settings) <= every_field for b in BACKENDS.values()
    )  # a loader reads resource fields only

    def key(name, **changes):
        return LLMResource(backend=name, models_dir=str(tmp_path), corpus_dir=str(tmp_path), **changes)._key()

    for name, setting, value in [
        ("vllm", "tensor_parallel_size", 2),
        ("vllm", "quantization", "awq"),
        ("vllm", "max_model_len", 4096),
        ("vllm", "gpu_memory_utilization", 0.5),
        ("vllm", "max_lora_rank", 64),
        ("vllm", "max_loras", 2),
        ("vllm", "sleep_for_training", False),
        ("vllm", "train_model", "/weights/base"),
        ("vllm", "max_batch_tokens", 4096),
        ("transformers", "device", "cpu"),
        ("openai", "api_key_variables", ["OTHER"]),
        ("openai", "train_model", "tiny"),
    ]:
        assert key(name) != key(name, **{setting: value}), (name, setting)
    # What a backend does not read does not split its engine (the generator and the judge share one).
    assert key("transformers") == key(
        "transformers", tensor_parallel_size=4, api_key_variables=["PERSONA_JUDGE_API_KEY"], train_model="x"
    )
    # Every field a loader reads is in the key (it is built from the loader's signature): none is left out.
    for name in BACKENDS:
        assert {field for field, _ in key(name)[1:]} == set(BACKENDS[name].settings), name


# -- model roles ---------------------------------------------------------------------------------------------


def test_backend_prefixes_are_registered_names_only():
    assert split_backend("vllm:meta-llama/Llama-3.1-8B") == ("vllm", "meta-llama/Llama-3.1-8B")
    assert split_backend("simulated:seed=3,countries=2") == ("simulated", "seed=3,countries=2")
    assert split_backend("transformers:tiny") == ("transformers", "tiny")
    assert split_backend("my-org/model:v2") == (None, "my-org/model:v2")
    assert split_backend("tiny") == (None, "tiny")


def test_a_model_is_named_in_one_place_per_role():
    default = load_settings({})
    assert default.llm == ModelRole("transformers", "tiny")
    assert (default.chat_llm.model, default.judge_llm.model) == ("tiny", "tiny")

    settings = load_settings({"PERSONA_MODEL": "vllm:meta-llama/Llama-3.1-8B"})
    assert (settings.llm.backend, settings.llm.model) == ("vllm", "meta-llama/Llama-3.1-8B")
    assert (
        settings.judge_llm.backend == "vllm" and settings.chat_llm.model == "meta-llama/Llama-3.1-8B"
    )  # follow

    old_style = load_settings({"PERSONA_ENGINE": "simulated", "PERSONA_MODEL": "seed=3,countries=2"})
    assert old_style.llm == load_settings({"PERSONA_MODEL": "simulated:seed=3,countries=2"}).llm
    assert (
        load_settings({"PERSONA_MODEL": "transformers:tiny", "PERSONA_ENGINE": "transformers"}).llm.model
        == "tiny"
    )

    judged = load_settings(
        {
            "PERSONA_MODEL": "transformers:tiny",
            "PERSONA_JUDGE_MODEL": "openai:judge-70b",
            "PERSONA_JUDGE_BASE_URL": "http://judge:8000/v1",
        }
    )
    assert judged.judge_llm == ModelRole(
        "openai", "judge-70b", "http://judge:8000/v1", ("PERSONA_JUDGE_API_KEY", "PERSONA_ENGINE_API_KEY")
    )
    assert judged.llm.backend == "transformers"

    chat = load_settings(
        {"PERSONA_CHAT_BASE_URL": "http://chat:8000/v1", "PERSONA_CHAT_MODEL": "chat-7b"}
    ).chat_llm
    assert chat == ModelRole(
        "openai", "chat-7b", "http://chat:8000/v1", ("PERSONA_CHAT_API_KEY", "PERSONA_ENGINE_API_KEY")
    )
    local_chat = load_settings({"PERSONA_CHAT_MODEL": "vllm:org/instruct"}).chat_llm
    assert (local_chat.backend, local_chat.model) == ("vllm", "org/instruct")


@pytest.mark.parametrize(
    "environment, named",
    [
        (
            {"PERSONA_MODEL": "vllm:org/m", "PERSONA_ENGINE": "transformers"},
            "PERSONA_MODEL='vllm:org/m' names the vllm backend but PERSONA_ENGINE='transformers'",
        ),
        ({"PERSONA_MODEL": "vllm:"}, "PERSONA_MODEL: 'vllm:' names a backend but no model"),
        (
            {"PERSONA_MODEL": "openai:served"},
            "PERSONA_ENGINE_BASE_URL: the openai backend needs the server's URL",
        ),
        ({"PERSONA_JUDGE_MODEL": "openai:judge"}, "PERSONA_JUDGE_BASE_URL: the openai backend needs"),
        (
            {"PERSONA_CHAT_BASE_URL": "http://c:1/v1"},
            "PERSONA_CHAT_BASE_URL is set but PERSONA_CHAT_MODEL is not",
        ),
        (
            {"PERSONA_CHAT_BASE_URL": "http://c:1/v1", "PERSONA_CHAT_MODEL": "vllm:org/m"},
            "PERSONA_CHAT_BASE_URL is set but PERSONA_CHAT_MODEL='vllm:org/m' names the vllm backend",
        ),
        ({"PERSONA_JUDGE_ENGINE": "llama"}, "PERSONA_JUDGE_ENGINE: 'llama' is not one of transformers"),
    ],
)
def test_bad_roles_are_refused_by_name(environment, named):
    with pytest.raises(SettingsError, match=named.replace("(", r"\(").replace("?", r"\?")):
        load_settings(environment)


def test_the_three_role_resources_come_from_one_helper(tmp_path):
    settings = load_settings(
        {
            "PERSONA_HOME": str(tmp_path),
            "PERSONA_MODEL": "simulated:seed=2,questions=4",
            "PERSONA_JUDGE_MODEL": "openai:judge",
            "PERSONA_JUDGE_BASE_URL": "http://judge:1/v1",
        }
    )
    resources = role_resources(settings)
    assert set(resources) == {"llm", "chat_llm", "judge_llm"}
    llm, chat, judge = resources["llm"], resources["chat_llm"], resources["judge_llm"]
    assert (llm.backend, llm.model) == ("simulated", "seed=2,questions=4")
    assert llm._key() == chat._key()  # the chat role defaults to the generator: one engine
    assert llm.engine() is chat.engine() and llm.engine().model_id.startswith("simulated:seed=2,")
    assert (judge.backend, judge.base_url, judge.api_key_variables) == (
        "openai",
        "http://judge:1/v1",
        ["PERSONA_JUDGE_API_KEY", "PERSONA_ENGINE_API_KEY"],
    )


def test_gpu_settings_reach_every_role_and_the_training_base_the_generators(tmp_path):
    settings = load_settings(
        {
            "PERSONA_HOME": str(tmp_path),
            "PERSONA_MODEL": "openai:served-base",
            "PERSONA_ENGINE_BASE_URL": "http://server:8000/v1",
            "PERSONA_JUDGE_MODEL": "vllm:org/judge",
            "PERSONA_TRAIN_MODEL": "/weights/base",
            "PERSONA_TENSOR_PARALLEL_SIZE": "4",
            "PERSONA_MAX_LORAS": "16",
        }
    )
    assert settings.deployment.tensor_parallel_size == 4 and settings.max_loras == 16
    resources = role_resources(settings)
    llm, chat, judge = resources["llm"], resources["chat_llm"], resources["judge_llm"]
    assert (llm.train_model, chat.train_model, judge.train_model) == ("/weights/base", "/weights/base", "")
    assert all((r.tensor_parallel_size, r.max_loras) == (4, 16) for r in resources.values())
    assert dict(judge._key()[1:])["tensor_parallel_size"] == 4  # the vllm judge is split over 4 GPUs


@pytest.mark.parametrize(
    "environment, named",
    [
        ({"PERSONA_TENSOR_PARALLEL_SIZE": "0"}, "PERSONA_TENSOR_PARALLEL_SIZE: '0' is not a whole number"),
        ({"PERSONA_TENSOR_PARALLEL_SIZE": "16"}, "from 1 to 8"),
        ({"PERSONA_MAX_LORAS": "many"}, "PERSONA_MAX_LORAS: 'many'"),
        (
            {"PERSONA_TRAIN_MODEL": "vllm:org/base"},
            "PERSONA_TRAIN_MODEL='vllm:org/base': name the weights alone",
        ),
    ],
)
def test_bad_gpu_settings_are_refused_by_name(environment, named):
    with pytest.raises(SettingsError, match=named):
        load_settings(environment)


# -- the training capability ---------------------------------------------------------------------------------

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


@pytest.mark.parametrize(
    "engine",
    [
        PlantedSignalEngine(model_id="simulated:w", spec=WorldSpec(questions=2)),
        OpenAIEngine(model_id="served-model", base_url="http://127.0.0.1:9/v1"),
    ],
    ids=["simulated", "openai-without-trainer"],
)
def test_a_backend_without_training_refuses_it_by_name(engine, tmp_path):
    name = engine.backend
    with pytest.raises(
        EngineCapabilityError,
        match=rf"^the {name} backend cannot train adapters \(model {engine.model_id}\); "
        "use the transformers backend for lora_training$",
    ):
        engine.train_adapter(
            "marisolvega", [([1, 2], [False, True])], SETTINGS, tmp_path / "c.pt", tmp_path / "a"
        )
    with pytest.raises(EngineCapabilityError, match=rf"the {name} backend cannot prepare training examples"):
        engine.training_examples(CHATS)
    with pytest.raises(
        EngineCapabilityError, match=rf"the {name} backend cannot merge adapters .* for merged_models$"
    ):
        engine.merge_adapter("marisolvega", tmp_path / "merged", ["a sample"])
    assert not any(tmp_path.iterdir())  # refused before anything was written
    assert isinstance(EngineCapabilityError("x"), NotImplementedError)


def test_the_simulated_backend_refuses_to_generate_and_serve_adapters_by_name():
    engine = PlantedSignalEngine(model_id="simulated:w", spec=WorldSpec(questions=2))
    with pytest.raises(EngineCapabilityError, match="the simulated backend cannot generate text"):
        engine.generate([GenerateRequest("hi")])
    with pytest.raises(EngineCapabilityError, match="the simulated backend cannot serve adapters"):
        engine.add_adapter("marisolvega", "/nowhere", "f")


@pytest.fixture(scope="module")
def own_engine(tiny_llm):
    """The embedded model in an engine of its own: training adds adapters to the model it serves."""
    from persona_platform.resources.llm.transformers_backend import load_transformers_engine

    return load_transformers_engine("tiny", tiny_llm.model_path(), device="cpu", dtype="float32")


def test_the_transformers_backend_trains_serves_and_resumes_through_the_interface(own_engine, tmp_path):
    examples = own_engine.training_examples(CHATS)
    assert all(len(ids) == len(mask) and any(mask) and not mask[0] for ids, mask in examples)
    checkpoint = tmp_path / "run.pt"
    first = own_engine.train_adapter("marisolvega", examples, SETTINGS, checkpoint, tmp_path / "first")
    assert (first.steps, first.resumed_from_step) == (2, None) and checkpoint.exists()
    assert (tmp_path / "first" / "adapter_model.safetensors").exists()
    prompt = ChatPrompt((("user", "Public: Is the budget ready?"),))
    own_engine.generate([GenerateRequest(prompt, max_new_tokens=3, adapter="marisolvega")])  # served at once
    # A run that finds its finished checkpoint resumes at the end: the same steps and losses, no new step.
    again = own_engine.train_adapter("marisolvega-again", examples, SETTINGS, checkpoint, tmp_path / "again")
    assert (again.steps, again.resumed_from_step, again.losses) == (2, 2, first.losses)
    assert (tmp_path / "again" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "first" / "adapter_model.safetensors"
    ).read_bytes()
    fingerprint, differences = own_engine.merge_adapter(
        "marisolvega", tmp_path / "merged", ["The roof is funded."]
    )
    assert len(fingerprint) == 64 and merge_difference("marisolvega", differences) <= MERGE_TOLERANCE
