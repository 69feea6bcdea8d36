"""A planted-signal engine: an in-context learner whose answers carry a signal we put there.

The embedded model has no signal (every method scores 50%), so it cannot show that a method
finds one. This engine answers the same ``score`` requests as the transformers engine, from the
same prompts, as a Bayesian learner over a few latent *concepts* (labellings of the claims):

- the truth (the gold labels), its negation, and ``distractors`` labellings that are just as
  consistent (exactly one True per question) but otherwise random;
- a prior: the truth is ``salience`` nats more likely than each other concept (0: nothing in
  the model prefers the truth over its negation or a distractor);
- each demonstration ``(claim, label)`` it recognises moves the posterior by ``strength`` nats
  toward the concepts that agree with it (weighted by position when ``recency`` > 0, as real
  models weigh recent demonstrations more);
- on the query a concept answers True with log-odds ``confidence`` (or ``-confidence``), shifted
  by the claim's own lean, a seeded draw of sd ``claim_noise`` (what the model believes of a
  claim whatever the concept; it makes single answers noisy).

The answer is P(True) = sum over concepts of posterior x P(True | concept). Worlds are generated
from a seed: questions with two options, the gold option of each, the concepts and the claims'
leans. Demonstrations it does not recognise (the prompts' anchor lines) carry no evidence.
Dagster-free; ``generate`` and ``loglikelihood`` are not simulated.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import ClassVar

import numpy as np

from persona_platform.resources.llm.engine import ChatPrompt, Engine, EngineUsage, ScoreRequest

# The claim lines of the elicitation prompts (few-shot, zero-shot) and of the chat baseline's prompt.
CLAIM_LINE = re.compile(
    r'Q: "(?P<q>[^"\n]*)" \| Op: "(?P<o>[^"\n]*)" \| '
    r"Is Most Popular Opinion in (?P<c>[^:\n]*):(?P<label> True| False)?"
)
CHAT_CLAIM = re.compile(
    r"people in (?P<c>[^\n]*?) for the survey question\.[\s\S]*"
    r'Question: "(?P<q>[^"\n]*)"\nOpinion: "(?P<o>[^"\n]*)"'
)
TRUE_CANDIDATES = {(" True", " False"), ("True", "False")}


@dataclass(frozen=True)
class WorldSpec:
    seed: int = 0
    countries: int = 1
    questions: int = 32
    distractors: int = 8
    salience: float = 1.5
    strength: float = 0.05
    confidence: float = 3.0
    claim_noise: float = 1.5
    recency: float = 0.0

    @classmethod
    def parse(cls, text: str) -> WorldSpec:
        """'seed=3,salience=1.5,...' (the engine's model name); every field optional."""
        types = {f.name: f.type for f in fields(cls)}
        values = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, value = part.partition("=")
            if name not in types:
                raise ValueError(
                    f"simulated engine model {text!r}: unknown field {name!r}; known: {', '.join(types)}"
                )
            values[name] = int(value) if types[name] == "int" else float(value)
        return cls(**values)

    def label(self) -> str:
        return ",".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


@dataclass(frozen=True)
class WorldClaim:
    country: str
    question: str
    option: str
    group: int
    gold: int
    lean: float  # log-odds toward True this claim adds to every concept's answer


@dataclass(frozen=True)
class World:
    """One country's claims and concepts (concept 0 is the truth, 1 its negation, then distractors)."""

    country: str
    claims: tuple[WorldClaim, ...]
    concepts: tuple[tuple[int, ...], ...]
    log_prior: tuple[float, ...]


def country_name(index: int) -> str:
    return f"Planted {index}"


def build_world(spec: WorldSpec, index: int = 0) -> World:
    rng = random.Random(f"planted-world:{spec.seed}:{index}")
    country = country_name(index)
    claims: list[WorldClaim] = []
    for q in range(spec.questions):
        question = f"Planted question {q} of world {spec.seed}.{index}: is position {q} the common view?"
        gold_first = rng.random() < 0.5
        for o, option in enumerate((f"Position {q} holds", f"Position {q} fails")):
            gold = int((o == 0) == gold_first)
            claims.append(WorldClaim(country, question, option, q, gold, rng.gauss(0.0, spec.claim_noise)))
    truth = tuple(c.gold for c in claims)
    concepts = [truth, tuple(1 - g for g in truth)]
    for _ in range(spec.distractors):
        picks = [rng.random() < 0.5 for _ in range(spec.questions)]
        concepts.append(tuple(int((c.option.endswith("holds")) == picks[c.group]) for c in claims))
    return World(country, tuple(claims), tuple(concepts), (spec.salience,) + (0.0,) * (len(concepts) - 1))


def build_worlds(spec: WorldSpec) -> list[World]:
    return [build_world(spec, i) for i in range(spec.countries)]


def world_survey(
    spec: WorldSpec, top_share: float = 0.7
) -> list[tuple[str, tuple[str, str], dict[str, list[float]]]]:
    """The survey the worlds stand for, as (question, options, {country: shares}): the gold option most
    chosen. Read as a GlobalOpinionQA file, it makes exactly the worlds' claims, so the whole elicitation
    graph can run on it."""
    survey = []
    for world in build_worlds(spec):
        for first, second in zip(world.claims[::2], world.claims[1::2], strict=True):
            shares = [top_share, 1 - top_share] if first.gold else [1 - top_share, top_share]
            survey.append((first.question, (first.option, second.option), {world.country: shares}))
    return survey


@dataclass
class PlantedSignalEngine(Engine):
    backend: ClassVar[str] = "simulated"

    spec: WorldSpec = field(default_factory=WorldSpec)
    usage: EngineUsage = field(default_factory=EngineUsage)

    def __post_init__(self):
        self.worlds = build_worlds(self.spec)
        self.index = {
            (c.country, c.question, c.option): (w, i)
            for w, world in enumerate(self.worlds)
            for i, c in enumerate(world.claims)
        }
        # concept x claim, as +1 (the concept says True) / -1, for one vectorised posterior per request
        self.signs = [np.array(world.concepts, dtype=float) * 2 - 1 for world in self.worlds]
        self.leans = [np.array([c.lean for c in world.claims]) for world in self.worlds]

    def score(self, requests: Sequence[ScoreRequest], reuse_prefix: bool | None = None) -> list[list[float]]:
        out = []
        for request in requests:
            if tuple(request.candidates) not in TRUE_CANDIDATES:
                raise ValueError(
                    f"the simulated engine scores True/False claims only, not {request.candidates!r}"
                )
            p_true = self.p_true(request.prompt)
            out.append([math.log(p_true), math.log1p(-p_true)])
        self.usage.requests += len(requests)
        self.usage.forward_passes += len(requests)
        return out

    def p_true(self, prompt) -> float:
        """P(True) for the prompt's query: the concepts' answers weighted by their posterior given its
        demonstrations."""
        world, query, demos = self._read(prompt)
        signs = self.signs[world]
        log_weights = np.array(self.worlds[world].log_prior)
        if demos:
            indices, labels = zip(*demos, strict=True)
            positions = np.arange(1, len(demos) + 1)
            weights = self.spec.strength * (1.0 + self.spec.recency * positions / len(demos))
            agreement = signs[:, list(indices)] * (
                np.array(labels, dtype=float) * 2 - 1
            )  # +1 where a concept agrees
            log_weights = log_weights + agreement @ weights
        posterior = np.exp(log_weights - log_weights.max())
        posterior /= posterior.sum()
        answers = 1.0 / (1.0 + np.exp(-(self.spec.confidence * signs[:, query] + self.leans[world][query])))
        return float(np.clip(posterior @ answers, 1e-12, 1 - 1e-12))

    def _read(self, prompt) -> tuple[int, int, list[tuple[int, int]]]:
        """The query's world and claim index, and the recognised demonstrations (claim index, label) in
        prompt order."""
        if isinstance(prompt, ChatPrompt):
            match = CHAT_CLAIM.search("\n".join(content for _, content in prompt.messages))
            if not match:
                raise ValueError("the simulated engine found no claim in the chat prompt")
            return (*self._claim(match["c"], match["q"], match["o"]), [])
        lines = [
            line
            for segment in ((prompt,) if isinstance(prompt, str) else prompt)
            for line in _claim_lines(segment)
        ]
        if not lines or lines[-1][3] is not None:
            raise ValueError("the simulated engine found no unlabelled query line in the prompt")
        world, query = self._claim(*lines[-1][:3])
        demos = []
        for country, question, option, label in lines[:-1]:
            known = self.index.get((country, question, option))
            if known and known[0] == world:
                demos.append((known[1], label))
        return world, query, demos

    def _claim(self, country: str, question: str, option: str) -> tuple[int, int]:
        known = self.index.get((country, question, option))
        if known is None:
            raise ValueError(
                f"the simulated engine's worlds ({self.spec.label()}) hold no claim "
                f"{question!r} / {option!r} for {country!r}: point the survey source at its world "
                "(`persona world FILE` with the same settings)"
            )
        return known

    def generate(self, requests):
        raise self.refusal("generate text (it only scores)", "generation")

    def loglikelihood(self, requests):
        raise self.refusal("compute log-likelihoods (it only scores)", "log-likelihoods")


@lru_cache(maxsize=1 << 16)
def _claim_lines(text: str) -> tuple[tuple[str, str, str, int | None], ...]:
    """(country, question, option, label or None) of every claim line; a prompt's segments repeat, hence
    the cache."""
    return tuple(
        (m["c"], m["q"], m["o"], None if m["label"] is None else int(m["label"] == " True"))
        for m in CLAIM_LINE.finditer(text)
    )
