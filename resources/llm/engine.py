"""The one engine interface every model call goes through.

Three operations every backend answers (or refuses by name, as the simulated one does for
``generate``):

- ``score``: exact log-probabilities of candidate continuations after a prompt.
- ``generate``: sampled or greedy text.
- ``loglikelihood``: per-token log-probabilities with a mask of the tokens that count.

Capabilities some backends have; the others refuse with ``EngineCapabilityError``, which
names the backend, the model and what to use instead:

- ``add_adapter``: serve a LoRA adapter beside the base model.
- ``training_examples``, ``train_adapter``, ``merge_adapter``: turn chats into token ids
  with a loss mask, train a LoRA adapter on them, merge it into plain weights. Only the
  engine holds a tokenizer and weights, so callers never touch either.

Training is always transformers + PEFT. The transformers backend trains on the model it
serves (one load for everything). An engine that serves adapters but holds no trainable
weights here (vLLM, a server) is given an ``AdapterTrainer`` (``resources.llm.peft_trainer``): the
base class trains and merges through it, on a load of the base of its own, and then serves
the adapter directory with ``add_adapter``. Without a trainer the capabilities are refused.

The backends (transformers, vllm, openai, simulated) are listed with their settings in
``persona_platform.resources.llm.backends``. They batch requests, load a model once per process, and count
what they do in ``usage``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    from persona_platform.resources.preference import PreferencePair
    from persona_platform.resources.training import Example, LoraTraining, TrainingOutcome


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


class EngineCapabilityError(NotImplementedError):
    """The backend cannot do this at all (not a transient failure): use another backend for it."""


class AdapterTrainer(Protocol):
    """Trains and merges LoRA adapters for an engine that only serves them, on a base of its own
    (``resources.llm.peft_trainer.PeftTrainer``)."""

    model_id: str  # the base it trains on, as the settings name it

    def unavailable(self) -> str | None:
        """Why it cannot load its base on this machine (checked before anything is written), or None."""

    def training_examples(
        self, chats: Sequence[Sequence[tuple[str, str]]], counted_role: str
    ) -> list[Example]: ...

    def completion_examples(self, pairs: Sequence[tuple[str, str]]) -> list[Example]: ...

    def train(
        self,
        name: str,
        examples: Sequence[Example],
        settings: LoraTraining,
        checkpoint_path: Path,
        adapter_dir: Path,
        log: Callable[[str], None],
        progress: Callable[[int, int, dict], None] | None,
    ) -> TrainingOutcome: ...

    def merge(
        self, name: str, adapter_dir: str, out_dir: Path, check_texts: Sequence[str], max_check_tokens: int
    ) -> tuple[str, list[float]]: ...


@dataclass
class Engine(ABC):
    model_id: str
    usage: EngineUsage = field(default_factory=EngineUsage)
    # Trains and merges for a backend that only serves adapters (None: those capabilities are refused).
    trainer: AdapterTrainer | None = field(default=None, repr=False, compare=False)
    # Public adapter name -> (the directory it is served from, its fingerprint): filled by add_adapter where
    # the backend serves directories; merging reads it.
    served_adapters: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False, compare=False)
    # While a step reports progress: told how many requests of the current call a backend has just finished
    # (after each batch, or each reply of a server), so a long call shows its progress without being split.
    progress: Callable[[int], None] | None = field(default=None, repr=False, compare=False)

    # The registered name of the backend (resources.llm.backends), for messages.
    backend: ClassVar[str] = ""
    # Whether ``score`` takes a ChatPrompt: false where the chat template is applied out of our sight (a
    # server), so the prompt's tokens are unknown; then a chat is asked for a reply through ``generate``.
    scores_chat_prompts: ClassVar[bool] = True

    @abstractmethod
    def score(self, requests: Sequence[ScoreRequest], reuse_prefix: bool | None = None) -> list[list[float]]:
        """``reuse_prefix``: compute shared prompt prefixes once (None: the backend decides)."""

    @abstractmethod
    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]: ...

    @abstractmethod
    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[TokenLogprobs]: ...

    def finished(self, requests: int) -> None:
        """Report ``requests`` more requests of the current call done (see ``progress``)."""
        if self.progress is not None:
            self.progress(requests)

    # -- capabilities: through the trainer where there is one, else refused by name ---------------------

    @property
    def training_base(self) -> str:
        """The base model adapters are trained on, as the settings name it (part of a run's fingerprint)."""
        return self.trainer.model_id if self.trainer is not None else self.model_id

    def add_adapter(self, name: str, path: str, fingerprint: str) -> None:
        """Serve a LoRA adapter under ``name`` beside the base model (reloaded when the fingerprint
        changes)."""
        raise self.refusal("serve adapters", "the agent assets")

    def training_examples(
        self, chats: Sequence[Sequence[tuple[str, str]]], counted_role: str = "assistant"
    ) -> list[Example]:
        """Each chat ``(role, content)...`` as the model's token ids, laid out by its own chat template, and
        per token whether the loss counts it (the content of ``counted_role``'s turns and their end-of-turn
        marker)."""
        return self._trainer("prepare training examples", "lora_training").training_examples(
            chats, counted_role
        )

    def completion_examples(self, pairs: Sequence[tuple[str, str]]) -> list[Example]:
        """Each (text prompt, completion) as the model's token ids, the loss counting the completion's tokens
        only (a base model's plain-text task, where ``training_examples`` lays out chats)."""
        return self._trainer("prepare training examples", "country_adapters").completion_examples(pairs)

    def train_adapter(
        self,
        name: str,
        examples: Sequence[Example],
        settings: LoraTraining,
        checkpoint_path: Path,
        adapter_dir: Path,
        log: Callable[[str], None] = lambda message: None,
        progress: Callable[[int, int, dict], None] | None = None,
    ) -> TrainingOutcome:
        """Train a LoRA adapter ``name`` on ``examples`` (from ``training_examples``), resuming from
        ``checkpoint_path`` when it exists, save it in ``adapter_dir`` and serve it from then on;
        ``progress(step, total_steps, numbers)`` after each optimizer step."""
        trainer = self._trainer("train adapters", "lora_training")
        with self.released_for_training():
            outcome = trainer.train(name, examples, settings, checkpoint_path, adapter_dir, log, progress)
        self.usage.model_loads += outcome.model_loads  # the trainer's own loads of the base (one per process)
        self.add_adapter(name, str(adapter_dir), outcome.fingerprint)
        return outcome

    def train_preference_adapter(
        self,
        name: str,
        pairs: Sequence[PreferencePair],
        settings: LoraTraining,
        beta: float,
        checkpoint_dir: Path,
        adapter_dir: Path,
        log: Callable[[str], None] = lambda message: None,
        progress: Callable[[int, int, dict], None] | None = None,
    ) -> TrainingOutcome:
        """Train a fresh LoRA adapter ``name`` with DPO on ``pairs`` (the base model is the reference),
        resuming from the latest checkpoint in ``checkpoint_dir``, save it in ``adapter_dir`` and serve it
        from then on; ``progress(step, total_steps, numbers)`` after each step."""
        raise self.refusal("preference-tune adapters", "country_adapters with objective dpo")

    def merge_adapter(
        self, name: str, out_dir: Path, check_texts: Sequence[str], max_check_tokens: int = 128
    ) -> tuple[str, list[float]]:
        """Save the base with adapter ``name`` merged in (plain weights and the tokenizer) in ``out_dir``;
        return the files' fingerprint and, per check text (its first ``max_check_tokens`` tokens), the
        largest |logit difference| between the merged model and base + adapter."""
        from persona_platform.resources.training import TrainingError

        trainer = self._trainer("merge adapters", "merged_models")
        # With no check input nothing would be compared, so that is refused before anything is written.
        if not check_texts:
            raise TrainingError(f"{name}: no sample to check the merged model against base + adapter on")
        if name not in self.served_adapters:
            known = ", ".join(self.served_adapters) or "none"
            raise KeyError(f"adapter {name!r} is not loaded; known: {known}")
        adapter_dir = self.served_adapters[name][0]
        with self.released_for_training():
            result = trainer.merge(name, adapter_dir, out_dir, check_texts, max_check_tokens)
        self.usage.model_loads += 1
        return result

    @contextmanager
    def released_for_training(self) -> Iterator[None]:
        """Run the block (the trainer's own load of the base) with what this engine holds on the device
        released where it can be; nothing to release by default."""
        yield

    def _trainer(self, what: str, purpose: str) -> AdapterTrainer:
        if self.trainer is None:
            raise self.refusal(what, purpose)
        why = self.trainer.unavailable()
        if why is not None:
            backend = self.backend or type(self).__name__
            raise EngineCapabilityError(f"the {backend} backend cannot {what} (model {self.model_id}): {why}")
        return self.trainer

    def refusal(self, what: str, purpose: str) -> EngineCapabilityError:
        """The error for a capability this backend lacks; ``purpose``: what needs it (an asset, an
        operation)."""
        backend = self.backend or type(self).__name__
        return EngineCapabilityError(
            f"the {backend} backend cannot {what} (model {self.model_id}); "
            f"use the transformers backend for {purpose}"
        )
