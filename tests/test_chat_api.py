"""The OpenAI-compatible chat path, against a local HTTP server that speaks the protocol."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance, materialize

from persona_assets.definitions import ALL_ASSETS
from resources.llm.chat_api import API_KEY_VARIABLE, ChatApiResource
from resources.warehouse import Warehouse
from tests.conftest import local_resources

SECRET = "sk-test-never-log-me"


class FakeChatServer(BaseHTTPRequestHandler):
    calls: list = []
    replies: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if len(type(self).calls) == 1:  # the first call is rate limited: the client must retry
            self.send_response(429)
            self.send_header("Content-Type", "application/json")
            self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "slow down"}}')
            return
        reply = type(self).replies[len(type(self).calls) % len(type(self).replies)]
        payload = {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
        }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
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


def test_zero_shot_chat_through_the_api(server, tmp_path, monkeypatch, tiny_llm):
    monkeypatch.setenv(API_KEY_VARIABLE, SECRET)
    database = tmp_path / "w.duckdb"
    resources = local_resources(tmp_path, tiny_llm, chat_api=ChatApiResource(base_url=server, model="judge-7b", max_retries=3))
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
    prompt = FakeChatServer.calls[1]["body"]["messages"][0]["content"]
    assert prompt.endswith("Answer:") and "Caldera" in prompt
    assert all(c["path"] == "/v1/chat/completions" and c["auth"] == f"Bearer {SECRET}" for c in FakeChatServer.calls)
    assert FakeChatServer.calls[1]["body"]["temperature"] == 0
    assert set(rows["answered_by"]) == {"api:judge-7b"}
    failed = rows.filter(pl.col("parse_failed"))
    assert failed.height > 0 and failed["predicted_label"].null_count() == failed.height
    assert failed["reply"].to_list()[0] == "I think so"
    metadata = next(e for e in result.get_asset_materialization_events()
                    if e.asset_key == AssetKey(["elicitation", "zero_shot_chat_predictions"])).materialization.metadata
    assert metadata["parse_failures"].value == failed.height
    assert SECRET not in str(metadata) and SECRET not in str(rows.to_dicts())
