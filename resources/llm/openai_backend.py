"""The OpenAI-compatible backend: a model served elsewhere (vLLM's OpenAI server, a hosted API).

- ``generate`` goes through chat completions for chat prompts (the server applies the
  model's template) and completions for text prompts. A JSON schema becomes the
  standard ``response_format`` (``json_schema``) on chat completions, which hosted APIs
  and vLLM both honour, and vLLM's ``structured_outputs`` (``{"json": schema}``) on
  completions, where the OpenAI API has no such field. Never ``guided_json``: vLLM
  removed the ``guided_*`` fields in v0.12 and ignores unknown fields, so a schema sent
  that way is silently dropped (the server answers 200 with unconstrained text).
  Checked against vLLM's source at commit 002032ee of main
  (``vllm/entrypoints/openai/completion/protocol.py``, ``.../chat_completion/protocol.py``,
  ``StructuredOutputsParams`` in ``vllm/sampling_params.py``; the paths of the v0.26.0 API docs, the
  release of that commit not identified) and at an older commit, d5dba2d7: both declare every field
  sent here. vLLM's structured-outputs guide says the ``guided_*`` fields were removed in v0.12.0.
- ``score`` and ``loglikelihood`` go through completions with ``echo`` and
  ``logprobs``: the server returns the log-probability of every prompt token, and
  the tokens past the prompt's characters are the candidate's. A server that returns
  no prompt log-probabilities (most hosted APIs) is refused by name, once the retries
  for a malformed body are spent.
- Adapters are served models: an agent's adapter is asked for by its name (vLLM's
  ``--lora-modules name=path``).

Retries are the openai SDK's (``max_retries``, ``timeout``): it retries 408, 409, 429, 5xx,
timeouts and dropped connections with capped, jittered exponential backoff and honours
``Retry-After``. What it cannot see is a 200 whose body is not what was asked for (a
proxy's HTML page, a completion without log-probabilities); that is a ``MalformedResponse``,
retried here a bounded number of times. Nothing else is caught around a call, so a bug
here fails at once. At most ``max_concurrency`` calls run at once, and the API key is read
from the environment when a call is made, never kept in config, logs or metadata.
"""

from __future__ import annotations

import json
import os
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

# The statuses the openai SDK retries (openai-python 3.57.0, _base_client.py, _should_retry): an error with
# one of them says that the call was retried.
RETRIED_STATUS = {408, 409, 429}  # and every 5xx
MAX_MALFORMED_PAUSE_S = 8.0  # the SDK's own cap on a backoff pause (MAX_RETRY_DELAY)


class EngineRequestError(RuntimeError):
    """A call to the model server failed after every retry, or the server cannot do what was asked."""


class MalformedResponse(ValueError):
    """A 200 whose body is not the completion that was asked for."""


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
    # The first pause before a malformed body is asked for again; it doubles, up to the SDK's cap.
    backoff_s: float = 0.5
    max_concurrency: int = 8
    _client: object = field(default=None, repr=False)

    def client(self):
        from openai import OpenAI

        if self._client is None:
            # The key travels per call (see _auth), never held by the client.
            self._client = OpenAI(
                base_url=self.base_url, api_key="unused", timeout=self.timeout_s, max_retries=self.max_retries
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
            if extra:
                options["extra_body"] = extra  # vLLM's sampling parameters beyond the OpenAI ones
            messages = [{"role": role, "content": content} for role, content in request.prompt.messages]
            return self._call(
                lambda auth: self.client().chat.completions.with_raw_response.create(
                    messages=messages, **options, **auth
                ),
                _chat_text,
            )
        if request.json_schema is not None:
            extra["structured_outputs"] = {"json": json.loads(request.json_schema)}
        if extra:
            options["extra_body"] = extra
        return self._call(
            lambda auth: self.client().completions.with_raw_response.create(
                prompt=_text(request.prompt), **options, **auth
            ),
            _completion_text,
        )

    def _prompt_logprobs(
        self, text: str, adapter: str | None
    ) -> tuple[list[str], list[float | None], list[int]]:
        return self._call(
            lambda auth: self.client().completions.with_raw_response.create(
                model=self._model(adapter),
                prompt=text,
                max_tokens=0,
                echo=True,
                logprobs=0,
                temperature=0.0,
                **auth,
            ),
            _prompt_logprobs,
        )

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

        def reported(item):
            result = one(item)
            self.finished(1)
            return result

        if len(items) <= 1 or self.max_concurrency <= 1:
            return [reported(item) for item in items]
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            return list(pool.map(reported, items))

    def _call(self, send: Callable, parse: Callable[[object], object]):
        """``send`` one request (the SDK retries it as it sees fit), then ``parse`` its JSON body; a malformed
        body is asked for again, at most ``max_retries`` more times."""
        import openai

        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), MAX_MALFORMED_PAUSE_S))
            try:
                raw = send(self._auth())
            except openai.APIStatusError as exc:
                status = exc.status_code
                retried = self._retried() if status in RETRIED_STATUS or status >= 500 else ""
                raise EngineRequestError(
                    f"{self.base_url}: HTTP {status}{retried}: {_message(exc)}"
                ) from None
            except openai.APITimeoutError:
                raise EngineRequestError(
                    f"{self.base_url}: no answer within {self.timeout_s}s{self._retried()}"
                ) from None
            except openai.APIConnectionError as exc:
                raise EngineRequestError(
                    f"{self.base_url}: cannot connect ({exc.__cause__ or exc}){self._retried()}"
                ) from None
            try:
                result = parse(_json(raw.http_response.content))
            except MalformedResponse as exc:
                malformed = exc
                continue
            self.usage.forward_passes += 1
            return result
        raise EngineRequestError(
            f"{self.base_url}: malformed response after {self.max_retries + 1} attempts: {malformed}"
        )

    def _retried(self) -> str:
        return f" after retries (max_retries={self.max_retries})" if self.max_retries else ""


# -- reading a 200's body --------------------------------------------------------
# Each reader checks the shape it reads and raises MalformedResponse, never a TypeError or KeyError, so
# that a bad body is retried and a bug here is not.


def _json(content: bytes) -> object:
    try:
        return json.loads(content)
    except ValueError:  # not JSON, or not UTF-8
        raise MalformedResponse(f"the body is not JSON: {content[:80]!r}") from None


def _first_choice(body: object) -> dict:
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedResponse("the response has no choices")
    return choices[0]


def _chat_text(body: object) -> str:
    message = _first_choice(body).get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(message, dict) or not isinstance(content, str | None):
        raise MalformedResponse("the choice has no message content")
    return content or ""  # None when the model answered with a refusal or a tool call only


def _completion_text(body: object) -> str:
    text = _first_choice(body).get("text")
    if not isinstance(text, str):
        raise MalformedResponse("the choice has no text")
    return text


def _prompt_logprobs(body: object) -> tuple[list[str], list[float | None], list[int]]:
    logprobs = _first_choice(body).get("logprobs")
    if not isinstance(logprobs, dict) or not logprobs.get("token_logprobs"):
        raise MalformedResponse(
            "no prompt log-probabilities (completions with echo and logprobs): score and loglikelihood need "
            "a server that returns them, such as vLLM's OpenAI server"
        )
    tokens, values, offsets = (logprobs.get(k) for k in ("tokens", "token_logprobs", "text_offset"))
    if (
        not all(isinstance(column, list) for column in (tokens, values, offsets))
        or not len(tokens) == len(values) == len(offsets)
        or not all(isinstance(o, int) for o in offsets)
        or not all(v is None or isinstance(v, int | float) for v in values)
    ):
        raise MalformedResponse("the log-probabilities' tokens, values and text offsets do not line up")
    return tokens, values, offsets


def _message(exc) -> str:
    body = exc.body
    if isinstance(body, dict):
        body = body.get("error", body)
        body = body.get("message", body) if isinstance(body, dict) else body
    return " ".join(str(body or exc).split())[:200]  # one line


def _text(prompt: Prompt) -> str:
    if isinstance(prompt, ChatPrompt):
        raise EngineRequestError(
            "a chat prompt cannot be scored through an OpenAI-compatible API: its template is "
            "applied on the server, so the prompt's tokens are unknown here; use a text prompt"
        )
    return prompt if isinstance(prompt, str) else "".join(prompt)
