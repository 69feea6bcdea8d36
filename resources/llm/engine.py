"""The one engine interface every model call goes through.

- ``score``: exact log-probabilities of candidate continuations after a prompt.
- ``generate``: sampled or greedy text.
- ``loglikelihood``: per-token log-probabilities with a mask of the tokens that count.

Backends (transformers here; vLLM and OpenAI-compatible later) batch requests,
load a model once per process, and count what they do in ``usage``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ChatPrompt:
    """Messages ``(role, content)`` laid out by the model's own chat template, ready for the reply."""

    messages: tuple[tuple[str, str], ...]


# A prompt is a string; a tuple of segments tokenized one by one and concatenated
# (segments keep token boundaries stable, so prompts sharing leading segments share
# a token prefix a backend can compute once); or a chat.
Prompt = str | tuple[str, ...] | ChatPrompt


@dataclass(frozen=True)
class ScoreRequest:
    """Score each candidate as a continuation of ``prompt`` (log P(candidate | prompt))."""

    prompt: Prompt
    candidates: tuple[str, ...]
    adapter: str | None = None


def per_request(values: Sequence[float], requests: Sequence[ScoreRequest]) -> list[list[float]]:
    """Scores computed for every (request, candidate) in order, grouped back by request."""
    out, position = [], 0
    for request in requests:
        out.append(list(values[position : position + len(request.candidates)]))
        position += len(request.candidates)
    return out


@dataclass(frozen=True)
class GenerateRequest:
    """Text after ``prompt``. With ``json_schema`` (a JSON Schema as JSON text) the backend
    constrains decoding to that schema where it can; the reply still goes through a parser."""

    prompt: Prompt
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int = 0
    adapter: str | None = None
    json_schema: str | None = None


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """Text as ``(segment, counts)`` pieces; only tokens of counted segments are scored.

    The first segment may be a ``ChatPrompt``: the chat laid out by the model's
    template up to the start of the reply, never counted.
    """

    segments: tuple[tuple[str | ChatPrompt, bool], ...]
    adapter: str | None = None


@dataclass(frozen=True)
class TokenLogprobs:
    token_ids: tuple[int, ...]
    # logprobs[i] = log P(token_ids[i] | token_ids[:i]); the first token has none (0.0).
    logprobs: tuple[float, ...]
    counted: tuple[bool, ...]

    @property
    def total(self) -> float:
        return sum(lp for lp, c in zip(self.logprobs, self.counted, strict=True) if c)

    @property
    def n_counted(self) -> int:
        return sum(self.counted)


@dataclass
class EngineUsage:
    model_loads: int = 0
    forward_passes: int = 0
    tokens_computed: int = 0
    tokens_reused: int = 0
    requests: int = 0

    def since(self, earlier: EngineUsage) -> EngineUsage:
        return EngineUsage(**{k: v - getattr(earlier, k) for k, v in asdict(self).items()})

    def snapshot(self) -> EngineUsage:
        return EngineUsage(**asdict(self))

    def as_metadata(self) -> dict[str, int]:
        return {f"engine/{k}": v for k, v in asdict(self).items()}


@dataclass
class Engine(ABC):
    model_id: str
    usage: EngineUsage = field(default_factory=EngineUsage)

    @abstractmethod
    def score(self, requests: Sequence[ScoreRequest], reuse_prefix: bool | None = None) -> list[list[float]]:
        """``reuse_prefix``: compute shared prompt prefixes once (None: the backend decides)."""

    @abstractmethod
    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]: ...

    @abstractmethod
    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[TokenLogprobs]: ...

    def add_adapter(self, name: str, path: str, fingerprint: str) -> None:
        """Serve a LoRA adapter under ``name`` beside the base model (reloaded when the fingerprint changes)."""
        raise NotImplementedError(f"{type(self).__name__} does not serve adapters")
