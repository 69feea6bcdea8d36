"""The OpenAI-compatible engine against a local double of vLLM's OpenAI server (tests/chat_api_double.py; a
remote model cannot be reached from here): the openai SDK's retries on 429, 5xx and timeouts, ours on a
malformed 200 only, a bug raised at once, structured output in the fields current vLLM reads, prompt
log-probabilities for scoring, the concurrency limit, and a key that never leaves the request header."""

import json
import re
import socket
import threading
from http.server import ThreadingHTTPServer

import jsonschema
import openai
import pytest

from persona_platform.persona_assets.judging.judge import compare_pairs
from persona_platform.persona_assets.judging.rubrics import Item
from persona_platform.resources.llm import ChatPrompt, GenerateRequest, LoglikelihoodRequest, ScoreRequest
from persona_platform.resources.llm.openai_backend import EngineRequestError, OpenAIEngine
from persona_platform.resources.llm.resource import LLMResource
from tests.chat_api_double import VLLMServer

SECRET = "sk-engine-secret-never-log"
SCHEMA = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}


@pytest.fixture
def server(monkeypatch):
    VLLMServer.reset()
    monkeypatch.setenv("PERSONA_ENGINE_API_KEY", SECRET)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), VLLMServer)
    # A short poll so that shutting down takes no longer than the test.
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def engine(url, **options):
    return OpenAIEngine(
        model_id="served-model", base_url=url, **{"timeout_s": 0.5, "backoff_s": 0.01, **options}
    )


def chat(text="hello", **options):
    return GenerateRequest(ChatPrompt((("user", text),)), max_new_tokens=8, **options)


# -- retries: the SDK's for statuses and timeouts, ours for a malformed 200 ---------------------------------


def test_a_rate_limit_is_retried_after_the_pause_the_server_asks_for(server):
    VLLMServer.faults = [(429, {"Retry-After": "0.6"}), (429, {"Retry-After": "0"})]
    assert engine(server).generate([chat()]) == ["ok"]
    first, second, third = (c["at"] for c in VLLMServer.calls)
    # The SDK's own first pause is at most 0.5 s: a longer one is the server's Retry-After, honoured.
    # Retry-After 0 asks for none, and the SDK falls back to its own backoff.
    assert second - first >= 0.6
    assert all(c["path"] == "/v1/chat/completions" for c in VLLMServer.calls)


def test_a_persistent_server_error_fails_in_one_line_naming_server_and_status_and_4xx_is_not_retried(server):
    VLLMServer.faults = [500] * 5
    with pytest.raises(EngineRequestError) as error:
        engine(server, max_retries=1).generate([GenerateRequest("hi")])
    assert str(error.value) == f"{server}: HTTP 500 after retries (max_retries=1): fault 500"
    assert len(VLLMServer.calls) == 2
    VLLMServer.calls, VLLMServer.faults = [], [400]
    with pytest.raises(EngineRequestError) as error:
        engine(server).generate([GenerateRequest("hi")])
    assert str(error.value) == f"{server}: HTTP 400: fault 400" and len(VLLMServer.calls) == 1


def test_a_server_that_is_not_there_is_named_at_once_without_retries():
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    with pytest.raises(EngineRequestError, match=rf"^{re.escape(url)}: cannot connect \(.+\)$"):
        engine(url, max_retries=0).generate([GenerateRequest("hi")])


def test_a_call_that_times_out_is_retried_then_reported_with_its_limit(server):
    VLLMServer.faults, VLLMServer.stall_s = ["timeout"], 0.6
    assert engine(server, timeout_s=0.2, max_retries=1).generate([GenerateRequest("hi")]) == ["ok"]
    assert len(VLLMServer.calls) == 2
    VLLMServer.calls, VLLMServer.faults = [], ["timeout", "timeout"]
    with pytest.raises(EngineRequestError) as error:
        engine(server, timeout_s=0.2, max_retries=1).generate([GenerateRequest("hi")])
    assert str(error.value) == f"{server}: no answer within 0.2s after retries (max_retries=1)"
    assert len(VLLMServer.calls) == 2


def test_a_malformed_200_is_asked_for_again_then_reported_as_malformed(server):
    VLLMServer.faults = ["malformed"]
    assert engine(server).generate([GenerateRequest("hi")]) == ["ok"] and len(VLLMServer.calls) == 2
    VLLMServer.calls, VLLMServer.faults = [], ["malformed"] * 5
    with pytest.raises(EngineRequestError) as error:
        engine(server, max_retries=2).generate([GenerateRequest("hi")])
    assert str(error.value) == (
        f"{server}: malformed response after 3 attempts: "
        "the body is not JSON: b'<html>502 Bad Gateway</html>'"
    )
    assert len(VLLMServer.calls) == 3


def test_a_programming_error_is_raised_at_once_not_retried_as_a_malformed_response(server):
    # A seed no request can carry: the SDK's JSON encoding raises TypeError inside the call. The hand-written
    # loop this engine had caught it, tried five more times and reported "malformed response".
    with pytest.raises(TypeError, match="not JSON serializable"):
        engine(server).generate([GenerateRequest("hi", seed=object())])
    assert VLLMServer.calls == []


def test_a_sampling_setting_the_server_refuses_is_a_client_error_not_retried(server):
    with pytest.raises(EngineRequestError, match=r"HTTP 400: top_p must be in \(0, 1\], got 0.0"):
        engine(server).generate([chat(top_p=0.0)])
    assert len(VLLMServer.calls) == 1


# -- structured output ---------------------------------------------------------------------------------------


def test_a_json_schema_is_sent_where_current_vllm_reads_it_and_the_replies_conform(server):
    VLLMServer.answer = staticmethod(lambda body: "I would give it a 3.")  # the model, unconstrained
    text, chatted = engine(server).generate(
        [
            GenerateRequest("Rate it:", json_schema=json.dumps(SCHEMA)),
            chat("Rate it:", json_schema=json.dumps(SCHEMA)),
        ]
    )
    for reply in (text, chatted):
        jsonschema.validate(json.loads(reply), SCHEMA)
    bodies = {c["path"]: c["body"] for c in VLLMServer.calls}
    assert bodies["/v1/completions"]["structured_outputs"] == {"json": SCHEMA}
    assert bodies["/v1/chat/completions"]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": SCHEMA, "strict": True},
    }
    # Without a schema the model's own words come back: the constraint is what made the replies JSON.
    assert engine(server).generate([GenerateRequest("Rate it:")]) == ["I would give it a 3."]


def test_the_double_refuses_what_a_current_vllm_server_would_ignore_or_refuse(server):
    client = openai.OpenAI(base_url=server, api_key="k", max_retries=0)
    # The field this engine sent until vLLM 0.12 removed it; a real server answers 200, unconstrained.
    with pytest.raises(openai.BadRequestError, match="does not declare.*guided_json"):
        client.completions.create(model="m", prompt="p", extra_body={"guided_json": SCHEMA})
    with pytest.raises(openai.BadRequestError, match="undeclared fields"):
        client.completions.create(
            model="m", prompt="p", extra_body={"structured_outputs": {"schema": SCHEMA}}
        )
    with pytest.raises(openai.BadRequestError, match="greater than max allowed: 20"):
        client.completions.create(model="m", prompt="p", max_tokens=0, echo=True, logprobs=21)
    with pytest.raises(openai.BadRequestError, match="max_tokens must be at least 1"):
        client.completions.create(model="m", prompt="p", max_tokens=0)  # only echo scores without generating


# -- requests ------------------------------------------------------------------------------------------------


def test_sampling_adapters_and_the_key_only_in_the_header(server):
    the_engine = engine(server)
    the_engine.generate(
        [
            chat("judge", temperature=0.7, top_p=0.9, top_k=50, repetition_penalty=1.2, seed=4),
            GenerateRequest("Once upon", max_new_tokens=5, adapter="marisolvega"),
        ]
    )
    bodies = {c["path"]: c["body"] for c in VLLMServer.calls}
    sent = bodies["/v1/chat/completions"]
    assert (sent["temperature"], sent["top_p"], sent["top_k"], sent["repetition_penalty"], sent["seed"]) == (
        0.7,
        0.9,
        50,
        1.2,
        4,
    )
    text = bodies["/v1/completions"]
    assert text["model"] == "marisolvega" and text["prompt"] == "Once upon"  # an adapter is a served model
    assert {c["auth"] for c in VLLMServer.calls} == {f"Bearer {SECRET}"}
    assert SECRET not in repr(the_engine) and SECRET not in repr(vars(the_engine.client()))


def test_scores_are_the_candidates_prompt_log_probabilities(server):
    the_engine = engine(server)
    [[yes, no]] = the_engine.score([ScoreRequest(("Claim: ", "sky is blue."), (" True", " False"))])
    prompt = "Claim: sky is blue."
    assert yes == pytest.approx(sum(-(i + 1) / 10 for i in range(len(prompt), len(prompt) + 5)))
    assert no == pytest.approx(sum(-(i + 1) / 10 for i in range(len(prompt), len(prompt) + 6)))
    assert all(
        c["body"]["echo"] and c["body"]["max_tokens"] == 0 and c["body"]["logprobs"] == 0
        for c in VLLMServer.calls
    )
    [counted] = the_engine.loglikelihood([LoglikelihoodRequest((("ab", False), ("cd", True)))])
    assert counted.counted == (False, False, True, True) and counted.total == pytest.approx(-0.3 - 0.4)


def test_scoring_is_refused_by_a_server_without_prompt_log_probabilities_or_for_a_chat(server):
    VLLMServer.returns_logprobs = False
    with pytest.raises(EngineRequestError, match="malformed response after 2 attempts: no prompt log-prob"):
        engine(server, max_retries=1).score([ScoreRequest("Q", (" A",))])
    with pytest.raises(EngineRequestError, match="chat prompt cannot be scored"):
        engine(server).score([ScoreRequest(ChatPrompt((("user", "Q"),)), (" A",))])


def test_no_more_calls_in_flight_than_the_limit(server):
    VLLMServer.delay_s = 0.05
    replies = engine(server, max_concurrency=3).generate([GenerateRequest(f"p{i}") for i in range(12)])
    assert replies == ["ok"] * 12
    assert 1 < VLLMServer.max_in_flight <= 3


def test_a_judge_served_by_an_api_judges_both_orders_through_the_resource(server, tmp_path):
    VLLMServer.answer = staticmethod(lambda body: json.dumps({"justification": "closer", "winner": "A"}))
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
    bodies = [c["body"] for c in VLLMServer.calls]
    assert all(b["model"] == "judge-70b" and b["response_format"]["type"] == "json_schema" for b in bodies)
