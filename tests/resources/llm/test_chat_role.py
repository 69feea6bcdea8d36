"""The chat role through an OpenAI-compatible API: the zero-shot chat baseline on the openai backend (the one
OpenAI client: concurrency, retries, the key per call), against a local HTTP server that speaks the protocol
and refuses what the real API refuses."""

import threading
from http.server import ThreadingHTTPServer

import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance, materialize

from persona_platform.persona_assets.definitions import ALL_ASSETS
from persona_platform.resources.llm import ChatPrompt, GenerateRequest
from persona_platform.resources.llm.openai_backend import EngineRequestError
from persona_platform.resources.llm.resource import role_resources
from persona_platform.resources.settings import load_settings
from persona_platform.resources.warehouse import Warehouse
from tests.chat_api_double import FakeChatServer
from tests.conftest import local_resources

SECRET = "sk-test-never-log-me"


@pytest.fixture
def server():
    FakeChatServer.calls, FakeChatServer.replies = [], ["True", "False", "I think so"]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeChatServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def chat_role(server, tmp_path, model="judge-7b"):
    """The chat_llm resource the code location builds from these settings."""
    settings = load_settings(
        {"PERSONA_HOME": str(tmp_path), "PERSONA_CHAT_BASE_URL": server, "PERSONA_CHAT_MODEL": model}
    )
    return role_resources(settings)["chat_llm"]


def test_zero_shot_chat_through_the_api(server, tmp_path, monkeypatch, tiny_llm):
    monkeypatch.setenv("PERSONA_CHAT_API_KEY", SECRET)
    monkeypatch.setenv("PERSONA_ENGINE_API_KEY", "sk-the-generators-key")
    database = tmp_path / "w.duckdb"
    chat_llm = chat_role(server, tmp_path)
    assert (chat_llm.backend, chat_llm.model, chat_llm.base_url) == ("openai", "judge-7b", server)
    resources = local_resources(tmp_path, tiny_llm, chat_llm=chat_llm)
    instance = DagsterInstance.ephemeral()
    assert materialize(
        ALL_ASSETS,
        resources=resources,
        instance=instance,
        selection=[AssetKey(["opinions", "goqa_questions"])],
    ).success
    result = materialize(
        ALL_ASSETS,
        resources=resources,
        instance=instance,
        partition_key="Caldera",
        selection=[AssetKey(["opinions", k]) for k in ("goqa_survey", "goqa_claims", "goqa_splits")]
        + [AssetKey(["primary", "elicitation", "zero_shot_chat_predictions"])],
        run_config={"ops": {"primary__elicitation__zero_shot_chat_predictions": {"config": {"repeats": 2}}}},
    )
    assert result.success
    rows = Warehouse(database).read("primary__elicitation", "zero_shot_chat_predictions")
    distinct_claims = rows["claim_id"].n_unique()
    assert len(FakeChatServer.calls) == 2 * distinct_claims + 1  # two repeats, one retry after the 429
    assert set(rows["method"]) == {"zero_shot_chat"} and set(rows["repeat"]) == {0, 1}
    bodies = [c["body"] for c in FakeChatServer.calls]
    assert all(
        b["messages"][0]["content"].endswith("Answer:") and "Caldera" in b["messages"][0]["content"]
        for b in bodies
    )
    assert all(
        c["path"] == "/v1/chat/completions" and c["auth"] == f"Bearer {SECRET}" for c in FakeChatServer.calls
    )
    assert {b["temperature"] for b in bodies} == {0} and {b["model"] for b in bodies} == {"judge-7b"}
    assert set(rows["answered_by"]) == {"api:judge-7b"}
    failed = rows.filter(pl.col("parse_failed"))
    assert failed.height > 0 and failed["predicted_label"].null_count() == failed.height
    assert set(failed["reply"]) == {"I think so"}
    metadata = next(
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key == AssetKey(["primary", "elicitation", "zero_shot_chat_predictions"])
    ).materialization.metadata
    assert metadata["parse_failures"].value == failed.height
    assert metadata["answered_by"].value == "api:judge-7b" and metadata["repeats"].value == 2
    assert SECRET not in str(metadata) and SECRET not in str(rows.to_dicts())


def test_the_chat_key_falls_back_to_the_engine_key(server, tmp_path, monkeypatch):
    monkeypatch.delenv("PERSONA_CHAT_API_KEY", raising=False)
    monkeypatch.setenv("PERSONA_ENGINE_API_KEY", "sk-engine")
    engine = chat_role(server, tmp_path, model="chat-b").engine()
    engine.backoff_s = 0.01
    engine.generate([GenerateRequest(ChatPrompt((("user", "Q"),)), max_new_tokens=5)])
    assert {c["auth"] for c in FakeChatServer.calls} == {"Bearer sk-engine"}
    monkeypatch.setenv("PERSONA_CHAT_API_KEY", "sk-chat")  # read at each call: the next one carries it
    engine.generate([GenerateRequest(ChatPrompt((("user", "Q"),)), max_new_tokens=5)])
    assert FakeChatServer.calls[-1]["auth"] == "Bearer sk-chat"


def test_the_double_refuses_what_the_real_api_refuses(server, tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONA_CHAT_API_KEY", SECRET)
    engine = chat_role(server, tmp_path, model="chat-c").engine()
    # top_k is a vLLM extension the real API does not know: a client error, not retried.
    with pytest.raises(EngineRequestError, match="HTTP 400: Unrecognized request argument supplied: top_k"):
        engine.generate([GenerateRequest(ChatPrompt((("user", "Q"),)), temperature=0.7, top_k=40)])
    assert len(FakeChatServer.calls) == 1
