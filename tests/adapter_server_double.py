"""The OpenAI-compatible double (tests/chat_api_double.py) with what a vLLM server adds for LoRA adapters:
the runtime adapter routes (``POST /v1/load_lora_adapter``, ``/v1/unload_lora_adapter``, present when vLLM
runs with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``) and the model list (``GET /v1/models``), answered as
vLLM's serving code answers them: a name already loaded is a 400, a directory without an adapter a 404,
unloading an unknown name a 404, a field it does not declare a 400 (vLLM's LoadLoRAAdapterRequest has
lora_name and lora_path; UnloadLoRAAdapterRequest lora_name and lora_int_id)."""

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path

from tests.chat_api_double import FakeChatServer

LOAD_FIELDS = {"lora_name", "lora_path"}
UNLOAD_FIELDS = {"lora_name", "lora_int_id"}


class AdapterServer(FakeChatServer):
    """Serves ``base_model`` and the adapters loaded at runtime; ``runtime_updates = False`` is a server
    started without the runtime routes (404), serving only ``adapters`` given at startup."""

    base_model = "served-base"
    adapters: dict = {}  # name -> path
    adapter_calls: list = []
    runtime_updates = True

    @classmethod
    def reset(cls, runtime_updates: bool = True, adapters: dict | None = None) -> None:
        cls.adapters, cls.adapter_calls, cls.runtime_updates = dict(adapters or {}), [], runtime_updates

    def do_POST(self):  # noqa: N802
        route = self.path.rsplit("/", 1)[-1]
        if route not in ("load_lora_adapter", "unload_lora_adapter"):
            return super().do_POST()
        cls = type(self)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with cls.lock:
            cls.adapter_calls.append(
                {"route": route, "auth": self.headers.get("Authorization"), "body": body}
            )
        if not cls.runtime_updates:
            return self._json(404, {"detail": "Not Found"})
        fields = LOAD_FIELDS if route == "load_lora_adapter" else UNLOAD_FIELDS
        if set(body) - fields or "lora_name" not in body:
            return self._json(
                400, {"error": {"message": f"invalid request body: {sorted(body)}", "code": 400}}
            )
        name = body["lora_name"]
        if route == "unload_lora_adapter":
            if name not in cls.adapters:
                return self._error(404, f"The lora adapter '{name}' cannot be found.")
            del cls.adapters[name]
            return self._text(f"Success: LoRA adapter '{name}' removed successfully.")
        if name in cls.adapters:
            return self._error(400, f"The lora adapter '{name}' has already been loaded.")
        if not (Path(body["lora_path"]) / "adapter_config.json").is_file():
            return self._error(404, f"No adapter found for {body['lora_path']}")
        cls.adapters[name] = body["lora_path"]
        return self._text(f"Success: LoRA adapter '{name}' added successfully.")

    def do_GET(self):  # noqa: N802
        if not self.path.endswith("/models"):
            return self._json(404, {"detail": "Not Found"})
        cls = type(self)
        names = [cls.base_model, *cls.adapters]
        return self._json(200, {"object": "list", "data": [{"id": n, "object": "model"} for n in names]})

    def _error(self, status: int, message: str):
        return self._json(status, {"error": {"message": message, "type": "BadRequestError", "code": status}})

    def _json(self, status: int, payload: dict):
        self._write(status, json.dumps(payload).encode(), "application/json")

    def _text(self, message: str):
        self._write(200, message.encode(), "text/plain")

    def _write(self, status: int, data: bytes, content_type: str):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def adapter_server(**state) -> Iterator[str]:
    """An ``AdapterServer`` on a free loopback port for the block; yields its base URL (``.../v1``)."""
    AdapterServer.reset(**state)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), AdapterServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
