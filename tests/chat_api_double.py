"""Local stand-ins for OpenAI-compatible servers, each as strict as the real one:

- ``FakeChatServer``, the hosted OpenAI chat completions API: it refuses, with the real API's 400, every
  request parameter and message shape the real endpoint refuses.
- ``VLLMServer``, vLLM's OpenAI-compatible server (``/v1/completions``, ``/v1/chat/completions``): it refuses
  what a current vLLM server refuses, honours structured output as vLLM does (the reply matches the schema
  asked for), and also refuses every field vLLM does not declare, which vLLM itself would silently ignore.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler

import jsonschema

# The request parameters of the real chat completions endpoint (those of CompletionCreateParams in
# openai-python 3.57.0, types/chat/completion_create_params.py, plus stream); it answers anything else with a
# 400 ("Unrecognized request argument supplied"), as it does vLLM's extensions (top_k, repetition_penalty,
# structured_outputs).
CHAT_PARAMETERS = {
    "model",
    "messages",
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "metadata",
    "modalities",
    "moderation",
    "n",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "prompt_cache_options",
    "prompt_cache_retention",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "stop",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
    "verbosity",
    "web_search_options",
}
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def refusal(body: dict) -> str | None:
    """Why the real API would answer this body with a 400, or None."""
    unknown = sorted(set(body) - CHAT_PARAMETERS)
    if unknown:
        return f"Unrecognized request argument supplied: {', '.join(unknown)}"
    if (
        not isinstance(body.get("model"), str)
        or not isinstance(body.get("messages"), list)
        or not body["messages"]
    ):
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
    """Chat completions only; the first call is rate limited (the client must retry), then ``replies`` in
    turn."""

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
        return self._send(
            200,
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
                ],
            },
        )

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


# -- vLLM's OpenAI-compatible server -------------------------------------------------------------------------
# The request fields a vLLM server declares, read from vLLM main at commit 002032ee (the layout of the v0.26
# documentation): CompletionRequest in vllm/entrypoints/openai/completion/protocol.py and
# ChatCompletionRequest in vllm/entrypoints/openai/chat_completion/protocol.py, in declaration order. The
# real server accepts any other field and ignores it (OpenAIBaseModel has extra="allow" and logs the extras
# at debug level only), which is how guided_json, removed in v0.12, came to drop its schema without an
# error; this double answers 400 instead, so that the next rename fails a test here, not silently in a run.
VLLM_COMPLETION_FIELDS = {
    "model",
    "prompt",
    "echo",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "max_tokens",
    "n",
    "presence_penalty",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "suffix",
    "temperature",
    "top_p",
    "user",
    "use_beam_search",
    "top_k",
    "min_p",
    "repetition_penalty",
    "watermarking",
    "length_penalty",
    "stop_token_ids",
    "include_stop_str_in_output",
    "ignore_eos",
    "min_tokens",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "truncate_prompt_tokens",
    "truncation_side",
    "allowed_token_ids",
    "prompt_logprobs",
    "logprob_token_ids",
    "bad_words",
    "prompt_embeds",
    "add_special_tokens",
    "response_format",
    "structured_outputs",
    "priority",
    "request_id",
    "session_id",
    "return_tokens_as_token_ids",
    "return_token_ids",
    "routed_experts_prompt_start",
    "return_token_offsets",
    "return_mm_kwargs",
    "cache_salt",
    "kv_transfer_params",
    "ec_transfer_params",
    "vllm_xargs",
    "repetition_detection",
    "thinking_token_budget",
    "stream_interval",
}
VLLM_CHAT_FIELDS = {
    "messages",
    "model",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "presence_penalty",
    "response_format",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
    "reasoning_effort",
    "thinking_token_budget",
    "include_reasoning",
    "parallel_tool_calls",
    "user",
    "use_beam_search",
    "top_k",
    "min_p",
    "repetition_penalty",
    "watermarking",
    "length_penalty",
    "stop_token_ids",
    "include_stop_str_in_output",
    "ignore_eos",
    "min_tokens",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "truncate_prompt_tokens",
    "truncation_side",
    "prompt_logprobs",
    "logprob_token_ids",
    "allowed_token_ids",
    "bad_words",
    "echo",
    "add_generation_prompt",
    "continue_final_message",
    "add_special_tokens",
    "documents",
    "chat_template",
    "chat_template_kwargs",
    "media_io_kwargs",
    "mm_processor_kwargs",
    "structured_outputs",
    "priority",
    "request_id",
    "session_id",
    "return_tokens_as_token_ids",
    "return_token_ids",
    "routed_experts_prompt_start",
    "return_token_offsets",
    "return_prompt_text",
    "return_mm_kwargs",
    "cache_salt",
    "kv_transfer_params",
    "ec_transfer_params",
    "vllm_xargs",
    "repetition_detection",
    "stream_interval",
}
# StructuredOutputsParams in vllm/sampling_params.py (main, same period): exactly one constraint, and options.
STRUCTURED_CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
STRUCTURED_OUTPUTS_FIELDS = {
    *STRUCTURED_CONSTRAINTS,
    "disable_any_whitespace",
    "disable_additional_properties",
    "whitespace_pattern",
}
# JsonSchemaResponseFormat in vllm/entrypoints/generate/base/protocol.py ("schema" aliases json_schema).
JSON_SCHEMA_FORMAT_FIELDS = {"name", "description", "schema", "strict"}
RESPONSE_FORMAT_TYPES = {"text", "json_object", "json_schema", "structural_tag"}
MAX_LOGPROBS = (
    20  # ModelConfig.max_logprobs, the server's --max-logprobs default; -1 asks for the whole vocab
)
INT64 = 2**63


def vllm_refusal(path: str, body: dict) -> str | None:
    """Why a current vLLM server would answer this body with a 400 (or why this double does), or None. Only
    what is cheap to check and certain: the request models' validators and SamplingParams._verify_args."""
    chat = path.endswith("/chat/completions")
    unknown = sorted(set(body) - (VLLM_CHAT_FIELDS if chat else VLLM_COMPLETION_FIELDS))
    if unknown:
        return f"fields vLLM does not declare for {path} (it would ignore them): {', '.join(unknown)}"
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            return "messages: a list of messages, each with a role, is required"
    elif body.get("prompt") in (None, "", []):
        return "Either prompt or prompt_embeds must be provided and non-empty."
    # SamplingParams._verify_args
    temperature, top_p, top_k, penalty, seed = (
        body.get(k) for k in ("temperature", "top_p", "top_k", "repetition_penalty", "seed")
    )
    if temperature is not None and not 0 <= temperature <= 2:
        return f"temperature must be in [0, 2], got {temperature}."
    if top_p is not None and not 0 < top_p <= 1:
        return f"top_p must be in (0, 1], got {top_p}."
    if top_k is not None and (not isinstance(top_k, int) or top_k < -1):
        return f"top_k must be 0 (disable), or at least 1, got {top_k}."
    if penalty is not None and not penalty > 0:
        return f"repetition_penalty must be greater than zero, got {penalty}."
    if seed is not None and (not isinstance(seed, int) or not -INT64 <= seed < INT64):
        return f"seed must be a 64-bit integer, got {seed!r}."
    return _length_refusal(chat, body) or _logprobs_refusal(chat, body) or _structured_refusal(body)


def _length_refusal(chat: bool, body: dict) -> str | None:
    for name in ("max_tokens", "max_completion_tokens") if chat else ("max_tokens",):
        value = body.get(name)
        # Completions with echo and max_tokens 0 score the prompt without generating (echo_without_generation)
        if value is not None and value < 1 and not (not chat and body.get("echo") and value == 0):
            return f"max_tokens must be at least 1, got {value}."
    return None


def _logprobs_refusal(chat: bool, body: dict) -> str | None:
    asked = {"prompt_logprobs": body.get("prompt_logprobs")}
    if chat:
        asked["logprobs"] = body.get("top_logprobs")
        if body.get("top_logprobs") and not body.get("logprobs"):
            return "when using `top_logprobs`, `logprobs` must be set to true."
    else:
        asked["logprobs"] = body.get("logprobs")
    for name, value in asked.items():
        if value is None:
            continue
        if not isinstance(value, int) or value < -1:
            return f"`{name}` must be a positive value or -1."
        if value == -1 or value > MAX_LOGPROBS:  # -1 is the whole vocabulary, always above the default cap
            kind = "prompt" if name == "prompt_logprobs" else "sample"
            return f"Requested {kind} logprobs of {value}, which is greater than max allowed: {MAX_LOGPROBS}"
    return None


def _structured_refusal(body: dict) -> str | None:
    response_format = body.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, dict) or response_format.get("type") not in RESPONSE_FORMAT_TYPES:
            return f"response_format: unknown type in {response_format!r}"
        if response_format["type"] == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                return "When response_format type is 'json_schema', the 'json_schema' field must be provided."
            undeclared = sorted(set(spec) - JSON_SCHEMA_FORMAT_FIELDS)
            if undeclared:  # vLLM ignores them (a misspelt "schema" leaves none): refused here
                return f"response_format.json_schema: undeclared fields {undeclared}"
            if not isinstance(spec.get("schema"), dict):
                return "You must use one kind of structured outputs constraint but none are specified"
    structured = body.get("structured_outputs")
    if structured is not None:
        if not isinstance(structured, dict) or set(structured) - STRUCTURED_OUTPUTS_FIELDS:
            return f"structured_outputs: undeclared fields in {structured!r}"
        count = sum(structured.get(k) is not None for k in STRUCTURED_CONSTRAINTS)
        if count != 1:
            return f"structured_outputs: exactly one kind of constraint is allowed, got {count}"
    return None


def constraint(body: dict) -> tuple[str, object] | None:
    """The constraint a (valid) request asks for, resolved as vLLM does: response_format overrides
    structured_outputs (structured_outputs_from_response_format)."""
    response_format = body.get("response_format") or {"type": "text"}
    if response_format["type"] == "json_schema":
        return "json", response_format["json_schema"]["schema"]
    if response_format["type"] == "json_object":
        return "json_object", True
    structured = body.get("structured_outputs") or {}
    kind = next((k for k in STRUCTURED_CONSTRAINTS if structured.get(k) is not None), None)
    return (kind, structured[kind]) if kind else None


def constrained(kind: str, value, wanted: str) -> str:
    """What constrained decoding yields when the model would have written ``wanted``: ``wanted`` where it
    conforms, otherwise the smallest conforming value."""
    if kind == "json":
        schema = json.loads(value) if isinstance(value, str) else value
        try:
            if jsonschema.Draft202012Validator(schema).is_valid(json.loads(wanted)):
                return wanted
        except ValueError:
            pass
        return json.dumps(smallest_instance(schema))
    if kind == "json_object":
        try:
            return wanted if isinstance(json.loads(wanted), dict) else "{}"
        except ValueError:
            return "{}"
    if kind == "choice":
        return wanted if wanted in value else value[0]
    raise NotImplementedError(f"this double does not emulate {kind} constraints")


def smallest_instance(schema: dict):
    """The smallest value of the JSON Schema forms the tests use."""
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for combined in ("anyOf", "oneOf"):
        if combined in schema:
            return smallest_instance(schema[combined][0])
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object":
        properties = schema.get("properties", {})
        return {k: smallest_instance(properties[k]) for k in schema.get("required", [])}
    if kind == "array":
        return [smallest_instance(schema["items"]) for _ in range(schema.get("minItems", 0))]
    simple = {"string": "", "integer": 0, "number": 0, "boolean": False, "null": None}
    if kind not in simple:
        raise NotImplementedError(f"this double does not build instances of {schema!r}")
    return simple[kind]


class VLLMServer(BaseHTTPRequestHandler):
    """vLLM's OpenAI server: ``faults`` are served first, one a request (a status code, ``(status, headers)``,
    'timeout': no answer for ``stall_s``, or 'malformed': a proxy's HTML page with a 200); then replies.
    ``answer(body)`` is what the model would write unconstrained; completions with ``echo`` score the prompt
    with a character-level tokenizer: token i is the prompt's i-th character, log-probability -(i+1)/10."""

    calls: list = []
    faults: list = []
    answer = staticmethod(lambda body: "ok")
    returns_logprobs = True
    stall_s = 1.0
    delay_s = 0.0  # per answered request, to observe concurrency
    in_flight = 0
    max_in_flight = 0
    lock = threading.Lock()

    @classmethod
    def reset(cls):
        cls.calls, cls.faults, cls.in_flight, cls.max_in_flight = [], [], 0, 0
        cls.answer = staticmethod(lambda body: "ok")
        cls.returns_logprobs, cls.stall_s, cls.delay_s = True, 1.0, 0.0

    def do_POST(self):  # noqa: N802
        cls = type(self)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with cls.lock:
            cls.calls.append(
                {
                    "path": self.path,
                    "auth": self.headers.get("Authorization"),
                    "body": body,
                    "at": time.monotonic(),
                }
            )
            fault = cls.faults.pop(0) if cls.faults else None
            cls.in_flight += 1
            cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
        try:
            self._answer(body, fault)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (a 'timeout' fault)
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def _answer(self, body, fault):
        cls = type(self)
        if self.path not in ("/v1/completions", "/v1/chat/completions"):
            return self._error(404, f"Not Found: {self.path}")
        if not (self.headers.get("Authorization") or "").startswith("Bearer "):
            return self._error(401, "Unauthorized")
        if fault == "timeout":
            time.sleep(cls.stall_s)
            return self._send(200, b"{}", "application/json")
        if fault == "malformed":
            return self._send(200, b"<html>502 Bad Gateway</html>", "text/html")
        if fault is not None:
            status, headers = fault if isinstance(fault, tuple) else (fault, {})
            return self._error(status, f"fault {status}", headers)
        why = vllm_refusal(self.path, body)
        if why:
            return self._error(400, why)
        time.sleep(cls.delay_s)
        wanted = cls.answer(body)
        asked = constraint(body)
        try:
            reply = constrained(*asked, wanted) if asked else wanted
        except NotImplementedError as exc:
            return self._error(400, str(exc))
        payload = (
            self._chat(body, reply) if self.path.endswith("/chat/completions") else self._text(body, reply)
        )
        return self._send(200, json.dumps(payload).encode(), "application/json")

    def _chat(self, body, reply):
        return {
            "id": "chatcmpl-double",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "served-model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": len(reply), "total_tokens": 1 + len(reply)},
        }

    def _text(self, body, reply):
        prompt = body["prompt"]
        logprobs = None
        if body.get("echo"):
            reply = prompt  # max_tokens 0: the prompt alone, scored
            if body.get("logprobs") is not None and type(self).returns_logprobs:
                logprobs = {
                    "tokens": list(prompt),
                    "text_offset": list(range(len(prompt))),
                    "token_logprobs": [None] + [-(i + 1) / 10 for i in range(1, len(prompt))],
                    "top_logprobs": [None] + [{} for _ in range(1, len(prompt))],
                }
        return {
            "id": "cmpl-double",
            "object": "text_completion",
            "created": 0,
            "model": body.get("model", "served-model"),
            "choices": [{"index": 0, "text": reply, "logprobs": logprobs, "finish_reason": "length"}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": 0, "total_tokens": len(prompt)},
        }

    def _error(self, status, message, headers=None):
        # vLLM's ErrorResponse: {"error": {"message", "type", "param", "code"}}
        error = {
            "message": message,
            "type": "BadRequestError" if status == 400 else "Error",
            "param": None,
            "code": status,
        }
        return self._send(status, json.dumps({"error": error}).encode(), "application/json", headers)

    def _send(self, status, data, content_type, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass
