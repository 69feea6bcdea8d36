"""The OpenAI-compatible backend: a model served elsewhere (vLLM's OpenAI server, a hosted API).

- ``generate`` goes through chat completions for chat prompts (the server applies the
  model's template) and completions for text prompts; a JSON schema becomes a
  ``json_schema`` response format, so the server constrains decoding where it can.
- ``score`` and ``loglikelihood`` go through completions with ``echo`` and
  ``logprobs``: the server returns the log-probability of every prompt token, and
  the tokens past the prompt's characters are the candidate's. Servers that do not
  return prompt log-probabilities (most hosted APIs) are refused by name.
- Adapters are served models: an agent's adapter is asked for by its name (vLLM's
  ``--lora-modules name=path``).

Every call retries 429, 5xx, timeouts, dropped connections and malformed bodies
with exponential backoff, at most ``max_concurrency`` calls run at once, and the
API key is read from the environment when a call is made, never kept in config,
logs or metadata.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ClassVar

from persona_platform.resources.llm.engine import (
    ChatPrompt,
    Engine,
    GenerateRequest,
    LoglikelihoodRequest,
    Prompt,
    ScoreRequest,
    TokenLogprobs,
    per_request,
)

RETRIED_STATUS = {408, 409, 429}  # and every 5xx


class EngineRequestError(RuntimeError):
    """A call to the model server failed after every retry, or the server cannot do what was asked."""


@dataclass
class OpenAIEngine(Engine):
    backend: ClassVar[str] = "openai"
    scores_chat_prompts: ClassVar[bool] = (
        False  # the server applies the chat template: its tokens are unknown here
    )

    base_url: str = ""
    # Environment variables that may hold the key, first set one wins (a judge may fall back to the
    # engine's key).
    api_key_variables: tuple[str, ...] = ("PERSONA_ENGINE_API_KEY",)
    timeout_s: float = 120.0
    max_retries: int = 5
    backoff_s: float = 0.5
    max_concurrency: int = 8
    sleep: Callable[[float], None] = time.sleep
    _client: object = field(default=None, repr=False)

    def client(self):
        from openai import OpenAI

        if self._client is None:
            # Retries are ours (below), so that malformed bodies are retried too and every attempt is counted.
            # The key travels per call (see _auth), never held by the client.
            self._client = OpenAI(
                base_url=self.base_url, api_key="unused", timeout=self.timeout_s, max_retries=0
            )
        return self._client

    # -- the interface ---------------------------------------------------------

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        return self._each(requests, self._generate_one)

    def score(self, requests: Sequence[ScoreRequest], reuse_prefix: bool | None = None) -> list[list[float]]:
        # The server caches shared prefixes itself (vLLM's prefix caching); reuse_prefix has nothing to
        # choose here.
        pairs = [(r, c) for r in requests for c in r.candidates]
        totals = self._each(pairs, lambda pair: self._continuation_logprob(pair[0], pair[1]))
        return per_request(totals, requests)

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[TokenLogprobs]:
        return self._each(requests, self._loglikelihood_one)

    def add_adapter(self, name: str, path: str, fingerprint: str) -> None:
        """Have the server serve the adapter in ``path`` as the model ``name`` (requests then ask for
        ``model=name``); a changed fingerprint replaces it.

        Through vLLM's runtime adapter routes (``POST {base_url}/load_lora_adapter`` with ``lora_name``
        and ``lora_path``, ``/unload_lora_adapter`` with ``lora_name``; present when the server runs with
        ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``; checked against vLLM's
        serve/lora api_router and protocol, v0.30 to main of mid 2026). The path is read by the server, so
        it must see the same files (a shared volume). vLLM refuses a name it already serves with a 400,
        so that is unloaded and loaded again from ``path``. A server without those routes (404) may still
        serve the adapter, started with ``--lora-modules name=path``: accepted when ``GET /models`` lists
        it, refused by name otherwise."""
        import httpx

        if self.served_adapters.get(name) == (path, fingerprint):
            return
        key = next((os.environ[v] for v in self.api_key_variables if os.environ.get(v)), "not-set")
        headers = {"Authorization": f"Bearer {key}"}
        root = self.base_url.rstrip("/")
        body = {"lora_name": name, "lora_path": path}
        with httpx.Client(timeout=self.timeout_s, headers=headers) as http:
            try:
                loaded = http.post(f"{root}/load_lora_adapter", json=body)
                if loaded.status_code == 400 and "already" in loaded.text:
                    http.post(f"{root}/unload_lora_adapter", json={"lora_name": name})
                    loaded = http.post(f"{root}/load_lora_adapter", json=body)
                # A route the server lacks is FastAPI's plain 404 ({"detail": "Not Found"}); vLLM's own 404
                # ("No adapter found" at that path) is an error object.
                if loaded.status_code == 405 or (loaded.status_code == 404 and "error" not in loaded.text):
                    listed = http.get(f"{root}/models")
                    served = listed.is_success and any(
                        m.get("id") == name for m in listed.json().get("data", [])
                    )
                    if not served:
                        raise EngineRequestError(
                            f"{self.base_url} does not serve adapter {name!r} and cannot load one: start "
                            "vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (or "
                            f"--lora-modules {name}={path})"
                        )
                elif not loaded.is_success:
                    raise EngineRequestError(
                        f"{self.base_url}: loading adapter {name!r} from {path} failed: HTTP "
                        f"{loaded.status_code}: {loaded.text[:200]}"
                    )
            except (httpx.TransportError, ValueError) as exc:
                raise EngineRequestError(f"{self.base_url}: loading adapter {name!r}: {exc}") from None
        self.served_adapters[name] = (path, fingerprint)

    # -- one request -----------------------------------------------------------

    def _model(self, adapter: str | None) -> str:
        return adapter or self.model_id

    def _generate_one(self, request: GenerateRequest) -> str:
        options = {
            "model": self._model(request.adapter),
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
        }
        extra = {}
        if request.top_k > 0:
            extra["top_k"] = request.top_k
        if request.repetition_penalty != 1.0:
            extra["repetition_penalty"] = request.repetition_penalty
        if extra:
            options["extra_body"] = extra  # vLLM's sampling parameters beyond the OpenAI ones
        if isinstance(request.prompt, ChatPrompt):
            if request.json_schema is not None:
                options["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "reply",
                        "schema": json.loads(request.json_schema),
                        "strict": True,
                    },
                }
            messages = [{"role": role, "content": content} for role, content in request.prompt.messages]
            response = self._call(
                lambda auth: self.client().chat.completions.create(messages=messages, **options, **auth)
            )
            return response.choices[0].message.content or ""
        if request.json_schema is not None:
            options.setdefault("extra_body", {})["guided_json"] = json.loads(request.json_schema)
        response = self._call(
            lambda auth: self.client().completions.create(prompt=_text(request.prompt), **options, **auth)
        )
        return response.choices[0].text or ""

    def _prompt_logprobs(
        self, text: str, adapter: str | None
    ) -> tuple[list[str], list[float | None], list[int]]:
        response = self._call(
            lambda auth: self.client().completions.create(
                model=self._model(adapter),
                prompt=text,
                max_tokens=0,
                echo=True,
                logprobs=0,
                temperature=0.0,
                **auth,
            )
        )
        logprobs = response.choices[0].logprobs
        if logprobs is None or not logprobs.token_logprobs or logprobs.text_offset is None:
            raise EngineRequestError(
                f"{self.base_url} returned no prompt log-probabilities (completions with echo and logprobs): "
                "score and loglikelihood need a server that returns them, such as vLLM's OpenAI server"
            )
        return list(logprobs.tokens), list(logprobs.token_logprobs), list(logprobs.text_offset)

    def _continuation_logprob(self, request: ScoreRequest, candidate: str) -> float:
        prompt = _text(request.prompt)
        _, values, offsets = self._prompt_logprobs(prompt + candidate, request.adapter)
        picked = [v for v, o in zip(values, offsets, strict=True) if o >= len(prompt)]
        if not picked or any(v is None for v in picked):
            raise EngineRequestError(
                f"candidate {candidate!r} shares a token with the end of its prompt on this server's "
                "tokenizer; end the prompt where a token ends (e.g. before the space)"
            )
        return float(sum(picked))

    def _loglikelihood_one(self, request: LoglikelihoodRequest) -> TokenLogprobs:
        text, spans, position = "", [], 0
        for piece, counts in request.segments:
            piece_text = _text(piece)
            spans.append((position, position + len(piece_text), counts))
            text += piece_text
            position += len(piece_text)
        tokens, values, offsets = self._prompt_logprobs(text, request.adapter)
        counted = tuple(
            index > 0 and any(start <= o < end and c for start, end, c in spans)
            for index, o in enumerate(offsets)
        )
        return TokenLogprobs(tuple(range(len(tokens))), tuple(v or 0.0 for v in values), counted)

    # -- retries and concurrency -----------------------------------------------

    def _auth(self) -> dict:
        """The key, read from the environment for this call only and sent as a header of it."""
        key = next((os.environ[v] for v in self.api_key_variables if os.environ.get(v)), "not-set")
        return {"extra_headers": {"Authorization": f"Bearer {key}"}}

    def _each(self, items: Sequence, one: Callable) -> list:
        self.usage.requests += len(items)
        if len(items) <= 1 or self.max_concurrency <= 1:
            return [one(item) for item in items]
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            return list(pool.map(one, items))

    def _call(self, send: Callable):
        import openai

        attempt = 0
        while True:
            try:
                response = send(self._auth())
                if not getattr(response, "choices", None):
                    raise _Malformed("the response has no choices")
                self.usage.forward_passes += 1
                return response
            except openai.APIStatusError as exc:
                retry = exc.status_code in RETRIED_STATUS or exc.status_code >= 500
                reason = f"HTTP {exc.status_code}"
                if not retry:
                    raise EngineRequestError(f"{self.base_url}: {reason}: {_message(exc)}") from None
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                reason = type(exc).__name__
            except (
                _Malformed,
                openai.APIResponseValidationError,
                json.JSONDecodeError,
                AttributeError,
                TypeError,
            ) as exc:
                reason = f"malformed response ({exc})"
            attempt += 1
            if attempt > self.max_retries:
                raise EngineRequestError(
                    f"{self.base_url}: gave up after {attempt} attempts; last: {reason}"
                ) from None
            self.sleep(self.backoff_s * 2 ** (attempt - 1) * (1 + random.random() / 4))


class _Malformed(ValueError):
    pass


def _message(exc) -> str:
    body = exc.body
    if isinstance(body, dict):
        body = body.get("error", body)
        body = body.get("message", body) if isinstance(body, dict) else body
    return str(body or exc)[:200]


def _text(prompt: Prompt) -> str:
    if isinstance(prompt, ChatPrompt):
        raise EngineRequestError(
            "a chat prompt cannot be scored through an OpenAI-compatible API: its template is "
            "applied on the server, so the prompt's tokens are unknown here; use a text prompt"
        )
    return prompt if isinstance(prompt, str) else "".join(prompt)
