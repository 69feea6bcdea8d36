"""A local stand-in for an OpenAI-compatible chat completions API, as strict as the real one: it refuses,
with the real API's 400, every request parameter and message shape the real endpoint refuses."""

import json
import threading
from http.server import BaseHTTPRequestHandler

# The request parameters of the real chat completions endpoint; it answers anything else with a 400
# ("Unrecognized request argument supplied"), as it does vLLM's extensions (top_k, repetition_penalty,
# guided_json).
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
    "n",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
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
