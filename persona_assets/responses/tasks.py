"""Evaluation tasks, the sampling grid, and the prompts both systems answer (no Dagster here).

Three tasks: ``trait`` (a probe question; the reference is the trait summary it came
from), ``completion`` (a held-out meeting context; the reference is what the agent
said next) and ``monologue`` (a monologue prompt; the reference is the monologue).
Two systems answer every item with the same chat layout, sampling settings and
number of samples: ``agent`` (the base model with the agent's adapter) and
``baseline`` (the base model alone, told the agent's persona profile).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from persona_assets.provenance import text_hash

TRAIT, COMPLETION, MONOLOGUE = "trait", "completion", "monologue"
TASKS = (TRAIT, COMPLETION, MONOLOGUE)
AGENT, BASELINE = "agent", "baseline"
SYSTEMS = (AGENT, BASELINE)

Messages = tuple[tuple[str, str], ...]

SYSTEM_TEMPLATE = "You are {name}, a member of the school board. Speak as {name} would, in your own voice."
PERSONA_TEMPLATE = "\n\nWhat is known about {name}:\n{profile}"
# Meeting turns are "Speaker: text" in training; a question is laid out the same way.
QUESTION_TEMPLATE = "Interviewer: {question}"
PROMPT_HASH = text_hash("\n".join([SYSTEM_TEMPLATE, PERSONA_TEMPLATE, QUESTION_TEMPLATE]))


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
            raise ValueError(f"sampling setting {label!r}: expected T<temperature>_P<top_p>_K<top_k>_R<repetition "
                             "penalty>, e.g. T0.7_P0.8_K100_R1.2")
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


def system_messages(system: str, name: str, profile: str) -> Messages:
    """The system turn of a system: the same for both, the baseline's with the persona profile added."""
    text = SYSTEM_TEMPLATE.format(name=name)
    if system == BASELINE:
        text += PERSONA_TEMPLATE.format(name=name, profile=profile)
    return (("system", text),)


def sample_seed(base_seed: int, setting_index: int, sample: int) -> int:
    """One seed per (setting, sample), shared by both systems, so the systems draw alike."""
    return base_seed + 1000 * setting_index + sample
