"""The OpenAI-compatible engine against a local HTTP server that speaks the protocol (a remote model cannot be
reached from here): retries on 429, 500, timeouts and malformed bodies, the concurrency limit, JSON-schema
response formats, prompt log-probabilities for scoring, and a key that never leaves the request header."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from persona_platform.persona_assets.judging.judge import compare_pairs
from persona_platform.persona_assets.judging.rubrics import Item
from persona_platform.resources.llm import ChatPrompt, GenerateRequest, LoglikelihoodRequest, ScoreRequest
from persona_platform.resources.llm.openai_backend import EngineRequestError, OpenAIEngine
from persona_platform.resources.llm.resource import LLMResource

SECRET = "sk-engine-secret-never-log"


class Server(BaseHTTPRequestHandler):
    """Scripted replies: ``faults`` are served first (status code, 'timeout' or 'malformed'), then answers."""

    calls: list = []
    faults: list = []
    answer = staticmethod(lambda body: "ok")
    in_flight = 0
    max_in_flight = 0
    lock = threading.Lock()
    logprobs = True

    def do_POST(self):  # noqa: N802
        cls = type(self)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with cls.lock:
            cls.calls.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            fault = cls.faults.pop(0) if cls.faults else None
            cls.in_flight += 1
            cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
        try:
            if fault == "timeout":
                time.sleep(1.0)
                return self._send(200, b"{}")
            if fault == "malformed":
                return self._send(200, b"<html>proxy error</html>")
            if isinstance(fault, int):
                return self._send(fault, json.dumps({"error": {"message": f"fault {fault}"}}).encode())
            time.sleep(0.05)
            return self._send(200, json.dumps(self._payload(body)).encode())
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def _payload(self, body):
        if self.path.endswith("/chat/completions"):
            message = {"role": "assistant", "content": type(self).answer(body)}
            return {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            }
        if body.get("echo"):
            # A character-level "tokenizer": token i is the prompt's i-th character, log-probability
            # -(i+1)/10.
            text = body["prompt"]
            logprobs = {
                "tokens": list(text),
                "text_offset": list(range(len(text))),
                "token_logprobs": [None] + [-(i + 1) / 10 for i in range(1, len(text))],
                "top_logprobs": None,
            }
            choice = {
                "index": 0,
                "text": text,
                "finish_reason": "length",
                "logprobs": logprobs if type(self).logprobs else None,
            }
        else:
            choice = {"index": 0, "text": type(self).answer(body), "finish_reason": "stop", "logprobs": None}
        return {
            "id": "t",
            "object": "text_completion",
            "created": 0,
            "model": body["model"],
            "choices": [choice],
        }

    def _send(self, status, data):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    Server.calls, Server.faults, Server.in_flight, Server.max_in_flight, Server.logprobs = [], [], 0, 0, True
    Server.answer = staticmethod(lambda body: "ok")
    monkeypatch.setenv("PERSONA_ENGINE_API_KEY", SECRET)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def engine(url, **options):
    return OpenAIEngine(model_id="served-model", base_url=url, backoff_s=0.01, timeout_s=0.5, **options)


def test_429_500_timeout_and_malformed_bodies_are_retried(server):
    Server.faults = [429, 500, "timeout", "malformed", 503]
    [reply] = engine(server).generate([GenerateRequest(ChatPrompt((("user", "hello"),)), max_new_tokens=8)])
    assert reply == "ok" and len(Server.calls) == 6
    assert all(c["path"] == "/v1/chat/completions" for c in Server.calls)


def test_it_gives_up_after_the_retries_and_does_not_retry_a_client_error(server):
    Server.faults = [500] * 10
    with pytest.raises(EngineRequestError, match="gave up after 3 attempts; last: HTTP 500"):
        engine(server, max_retries=2).generate([GenerateRequest("hi")])
    Server.calls, Server.faults = [], [400]
    with pytest.raises(EngineRequestError, match="HTTP 400: fault 400"):
        engine(server).generate([GenerateRequest("hi")])
    assert len(Server.calls) == 1


def test_json_schema_sampling_adapters_and_the_key_only_in_the_header(server):
    schema = json.dumps(
        {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}
    )
    Server.answer = staticmethod(lambda body: '{"score": 3}')
    the_engine = engine(server)
    replies = the_engine.generate(
        [
            GenerateRequest(
                ChatPrompt((("user", "judge"),)),
                max_new_tokens=20,
                temperature=0.7,
                top_p=0.9,
                top_k=50,
                repetition_penalty=1.2,
                seed=4,
                json_schema=schema,
            ),
            GenerateRequest("Once upon", max_new_tokens=5, adapter="marisolvega"),
        ]
    )
    assert replies == ['{"score": 3}', '{"score": 3}']
    chat = next(c["body"] for c in Server.calls if c["path"].endswith("/chat/completions"))
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": json.loads(schema), "strict": True},
    }
    assert (chat["temperature"], chat["top_p"], chat["top_k"], chat["repetition_penalty"], chat["seed"]) == (
        0.7,
        0.9,
        50,
        1.2,
        4,
    )
    text = next(c["body"] for c in Server.calls if c["path"].endswith("/v1/completions"))
    assert text["model"] == "marisolvega" and text["prompt"] == "Once upon"  # an adapter is a served model
    assert {c["auth"] for c in Server.calls} == {f"Bearer {SECRET}"}
    assert SECRET not in repr(the_engine) and SECRET not in repr(vars(the_engine.client()))


def test_scores_are_the_candidates_prompt_log_probabilities(server):
    the_engine = engine(server)
    [[yes, no]] = the_engine.score([ScoreRequest(("Claim: ", "sky is blue."), (" True", " False"))])
    prompt = "Claim: sky is blue."
    assert yes == pytest.approx(sum(-(i + 1) / 10 for i in range(len(prompt), len(prompt) + 5)))
    assert no == pytest.approx(sum(-(i + 1) / 10 for i in range(len(prompt), len(prompt) + 6)))
    assert all(c["body"]["echo"] and c["body"]["max_tokens"] == 0 for c in Server.calls)
    [counted] = the_engine.loglikelihood([LoglikelihoodRequest((("ab", False), ("cd", True)))])
    assert counted.counted == (False, False, True, True) and counted.total == pytest.approx(-0.3 - 0.4)


def test_scoring_is_refused_by_a_server_without_prompt_log_probabilities_or_for_a_chat(server):
    Server.logprobs = False
    with pytest.raises(EngineRequestError, match="no prompt log-probabilities"):
        engine(server).score([ScoreRequest("Q", (" A",))])
    with pytest.raises(EngineRequestError, match="chat prompt cannot be scored"):
        engine(server).score([ScoreRequest(ChatPrompt((("user", "Q"),)), (" A",))])


def test_no_more_calls_in_flight_than_the_limit(server):
    replies = engine(server, max_concurrency=3).generate([GenerateRequest(f"p{i}") for i in range(12)])
    assert replies == ["ok"] * 12
    assert 1 < Server.max_in_flight <= 3


def test_a_judge_served_by_an_api_judges_both_orders_through_the_resource(server, tmp_path):
    Server.answer = staticmethod(lambda body: json.dumps({"justification": "closer", "winner": "A"}))
    resource = LLMResource(
        model="judge-70b",
        backend="openai",
        base_url=server,
        models_dir=str(tmp_path),
        corpus_dir=str(tmp_path),
        max_retries=1,
    )
    item = Item(
        "monologue/a/m/1", "monologue", None, "Interviewer: why?", "Because of the data.", "the monologue"
    )
    responses = [
        {
            "row_id": f"r/{s}",
            "agent": "a",
            "item_id": item.item_id,
            "task": "monologue",
            "system": s,
            "setting": "T1",
            "sample": 0,
            "response": f"{s} says",
        }
        for s in ("agent", "baseline")
    ]
    with resource.metered() as (judge, meter):
        [row] = compare_pairs(judge, {item.item_id: item}, responses, 80)
    assert row["outcome"] == "inconsistent"  # always "A": a position-biased judge is caught
    assert meter.usage.requests == 2 and meter.usage.model_loads == 0
    bodies = [c["body"] for c in Server.calls]
    assert all(b["model"] == "judge-70b" and b["response_format"]["type"] == "json_schema" for b in bodies)
