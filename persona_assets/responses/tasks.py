"""Evaluation tasks, the sampling grid, and the prompts both systems answer (no Dagster here).

Three tasks: ``trait`` (a probe question; the reference is the trait summary it came
from), ``completion`` (a held-out meeting context; the reference is what the agent
said next) and ``monologue`` (a monologue prompt; the reference is the monologue).
Two systems answer every item with the same turns, sampling settings and number of
samples: ``agent`` (the base model with the agent's adapter) and ``baseline`` (the
base model alone, told the agent's persona profile in a system turn before them).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from persona_platform.persona_assets.agents.corpora import adapter_prompt
from persona_platform.persona_assets.provenance import text_hash
from persona_platform.resources.llm.engine import ChatPrompt

TRAIT, COMPLETION, MONOLOGUE = "trait", "completion", "monologue"
TASKS = (TRAIT, COMPLETION, MONOLOGUE)
AGENT, BASELINE = "agent", "baseline"
SYSTEMS = (AGENT, BASELINE)

Messages = tuple[tuple[str, str], ...]

SYSTEM_TEMPLATE = "You are {name}, a member of the school board. Speak as {name} would, in your own voice."
PERSONA_TEMPLATE = "\n\nWhat is known about {name}:\n{profile}"
# Meeting turns are "Speaker: text" in training; a question is laid out the same way.
QUESTION_TEMPLATE = "Interviewer: {question}"


@dataclass(frozen=True)
class SamplingSetting:
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float

    @property
    def label(self) -> str:
        return f"T{self.temperature:g}_P{self.top_p:g}_K{self.top_k}_R{self.repetition_penalty:g}"

    @classmethod
    def parse(cls, label: str) -> SamplingSetting:
        match = SETTING_LABEL.fullmatch(label.strip())
        if not match:
            raise ValueError(
                f"sampling setting {label!r}: expected T<temperature>_P<top_p>_K<top_k>_R<repetition "
                "penalty>, e.g. T0.7_P0.8_K100_R1.2"
            )
        t, p, k, r = match.groups()
        return cls(float(t), float(p), int(k), float(r))


SETTING_LABEL = re.compile(r"T([0-9.]+)_P([0-9.]+)_K([0-9]+)_R([0-9.]+)")

# The four settings of the upstream results.
UPSTREAM_GRID = (
    SamplingSetting(1.0, 0.95, 50, 1.1),
    SamplingSetting(0.4, 0.6, 20, 1.3),
    SamplingSetting(0.9, 0.85, 80, 1.15),
    SamplingSetting(0.7, 0.8, 100, 1.2),
)


def question_messages(question: str) -> Messages:
    return (("user", QUESTION_TEMPLATE.format(question=question)),)


def context_messages(context_json: str) -> Messages:
    return tuple((role, content) for role, content in json.loads(context_json))


def system_chat(system: str, name: str, profile: str, messages: Messages) -> ChatPrompt:
    """The chat a system answers. Both get the item's turns unchanged; they differ only before them.

    The agent's adapter sees the turns exactly as it was trained: user and assistant
    turns, no system turn (a system turn it never saw in training would take it out of
    its training distribution). The baseline is the base model with nothing but the
    prompt to know who it is, so a system turn tells it the persona and its profile."""
    if system == AGENT:
        return adapter_prompt(messages)
    persona = SYSTEM_TEMPLATE.format(name=name) + PERSONA_TEMPLATE.format(name=name, profile=profile)
    return ChatPrompt((("system", persona), *messages))


# What each system is shown, built by the code above with placeholders: a change of a template or of the
# layout (a system turn added or removed) changes the hash, hence the prompt_hash and code version.
PROMPT_HASH = text_hash(
    repr([system_chat(s, "{name}", "{profile}", question_messages("{question}")).messages for s in SYSTEMS])
)


def sample_seed(base_seed: int, setting_index: int, sample: int) -> int:
    """One seed per (setting, sample), shared by both systems, so the systems draw alike."""
    return base_seed + 1000 * setting_index + sample
