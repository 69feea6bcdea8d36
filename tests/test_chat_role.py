"""The chat role through an OpenAI-compatible API: the zero-shot chat baseline on the openai backend (the one
OpenAI client: concurrency, retries, the key per call), against a local HTTP server that speaks the protocol
and refuses what the real API refuses."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance, materialize

from persona_assets.definitions import ALL_ASSETS
from resources.llm import ChatPrompt, GenerateRequest
from resources.llm.openai_backend import EngineRequestError
from resources.llm.resource import role_resources
from resources.settings import load_settings
from resources.warehouse import Warehouse
from tests.conftest import local_resources

SECRET = "sk-test-never-log-me"

# The request parameters of the real chat completions endpoint; it answers anything else with a 400
# ("Unrecognized request argument supplied"), as it does vLLM's extensions (top_k, repetition_penalty, guided_json).
CHAT_PARAMETERS = {
    "model", "messages", "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "metadata", "modalities", "n", "parallel_tool_calls", "prediction",
    "presence_penalty", "prompt_cache_key", "reasoning_effort", "response_format", "safety_identifier", "seed",
    "service_tier", "stop", "store", "stream", "stream_options", "temperature", "tool_choice", "tools",
    "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
}
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def refusal(body: dict) -> str | None:
    """Why the real API would answer this body with a 400, or None."""
    unknown = sorted(set(body) - CHAT_PARAMETERS)
    if unknown:
        return f"Unrecognized request argument supplied: {', '.join(unknown)}"
    if not isinstance(body.get("model"), str) or not isinstance(body.get("messages"), list) or not body["messages"]:
        return "model and a non-empty messages list are required"
    for message in body["messages"]:
        if set(message) - {"role", "content", "name"} or message.get("role") not in ROLES:
            return f"invalid message: {message}"
    if not 0 <= body.get("temperature", 1) <= 2 or not 0 <= body.get("top_p", 1) <= 1:
        return "temperature must be in [0, 2] and top_p in [0, 1]"
    if "max_tokens" in body and (not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1):
        return "max_tokens must be a positive integer"
    return None


class FakeChatServer(BaseHTTPRequestHandler):
    """Chat completions only; the first call is rate limited (the client must retry), then ``replies`` in turn."""

    calls: list = []
    replies: list = []
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802
        cls = type(self)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with cls.lock:
            cls.calls.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            number = len(cls.calls)
        if not self.path.endswith("/chat/completions"):
            return self._send(404, {"error": {"message": f"no route {self.path}"}})
        if not (self.headers.get("Authorization") or "").startswith("Bearer "):
            return self._send(401, {"error": {"message": "You didn't provide an API key."}})
        why = refusal(body)
        if why:
            return self._send(400, {"error": {"message": why, "type": "invalid_request_error"}})
        if number == 1:
            return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
        reply = cls.replies[number % len(cls.replies)]
        return self._send(200, {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
        })

    def _send(self, status, payload, headers=None):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


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
    settings = load_settings({"PERSONA_HOME": str(tmp_path), "PERSONA_CHAT_BASE_URL": server, "PERSONA_CHAT_MODEL": model})
    return role_resources(settings)["chat_llm"]


def test_zero_shot_chat_through_the_api(server, tmp_path, monkeypatch, tiny_llm):
    monkeypatch.setenv("PERSONA_CHAT_API_KEY", SECRET)
    monkeypatch.setenv("PERSONA_ENGINE_API_KEY", "sk-the-generators-key")
    database = tmp_path / "w.duckdb"
    chat_llm = chat_role(server, tmp_path)
    assert (chat_llm.backend, chat_llm.model, chat_llm.base_url) == ("openai", "judge-7b", server)
    resources = local_resources(tmp_path, tiny_llm, chat_llm=chat_llm)
    instance = DagsterInstance.ephemeral()
    assert materialize(ALL_ASSETS, resources=resources, instance=instance, selection=[AssetKey(["opinions", "goqa_questions"])]).success
    result = materialize(
        ALL_ASSETS, resources=resources, instance=instance, partition_key="Caldera",
        selection=[AssetKey(["opinions", k]) for k in ("goqa_survey", "goqa_claims", "goqa_splits")]
        + [AssetKey(["elicitation", "zero_shot_chat_predictions"])],
        run_config={"ops": {"elicitation__zero_shot_chat_predictions": {"config": {"repeats": 2}}}},
    )
    assert result.success
    rows = Warehouse(database).read("elicitation", "zero_shot_chat_predictions")
    distinct_claims = rows["claim_id"].n_unique()
    assert len(FakeChatServer.calls) == 2 * distinct_claims + 1  # two repeats, one retry after the 429
    assert set(rows["method"]) == {"zero_shot_chat"} and set(rows["repeat"]) == {0, 1}
    bodies = [c["body"] for c in FakeChatServer.calls]
    assert all(b["messages"][0]["content"].endswith("Answer:") and "Caldera" in b["messages"][0]["content"] for b in bodies)
    assert all(c["path"] == "/v1/chat/completions" and c["auth"] == f"Bearer {SECRET}" for c in FakeChatServer.calls)
    assert {b["temperature"] for b in bodies} == {0} and {b["model"] for b in bodies} == {"judge-7b"}
    assert set(rows["answered_by"]) == {"api:judge-7b"}
    failed = rows.filter(pl.col("parse_failed"))
    assert failed.height > 0 and failed["predicted_label"].null_count() == failed.height
    assert set(failed["reply"]) == {"I think so"}
    metadata = next(e for e in result.get_asset_materialization_events()
                    if e.asset_key == AssetKey(["elicitation", "zero_shot_chat_predictions"])).materialization.metadata
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
