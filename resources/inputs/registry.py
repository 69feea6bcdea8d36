"""The registries partitions are built from: countries from the survey, agents from a file."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from persona_platform.resources.inputs.errors import PersonaInputError
from persona_platform.resources.inputs.survey import read_survey_once

AGENT_KEY = re.compile(r"^[a-z][a-z0-9_]*$")


class RegistryError(PersonaInputError):
    pass


@dataclass(frozen=True)
class LoraSettings:
    rank: int
    alpha: int
    dropout: float
    target_modules: tuple[str, ...]


@dataclass(frozen=True)
class Agent:
    key: str
    display_name: str
    aliases: tuple[str, ...]
    lora: LoraSettings


def country_registry(source: Path) -> dict[str, str]:
    """Partition key -> the country's name as written in the survey source, sorted by key."""
    return read_survey_once(source).country_names


def agent_registry(path: Path) -> list[Agent]:
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{path}: cannot read the agent registry: {exc}") from exc
    entries = document.get("agents") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise RegistryError(f"{path}: field 'agents' must be a non-empty list")
    agents, seen = [], set()
    for row, entry in enumerate(entries, start=1):
        try:
            key = entry["key"]
            if not isinstance(key, str) or not AGENT_KEY.match(key):
                raise RegistryError(
                    f"{path}: agent {row}, field 'key': {key!r} must match {AGENT_KEY.pattern}"
                )
            if key in seen:
                raise RegistryError(f"{path}: agent {row}, field 'key': duplicate {key!r}")
            seen.add(key)
            lora = entry["lora"]
            rank = int(lora["rank"])
            agents.append(
                Agent(
                    key=key,
                    display_name=str(entry["display_name"]),
                    aliases=tuple(str(a) for a in entry.get("aliases", ())),
                    lora=LoraSettings(
                        rank=rank,
                        alpha=int(lora.get("alpha", 2 * rank)),
                        dropout=float(lora.get("dropout", 0.05)),
                        target_modules=tuple(lora.get("target_modules", ("q_proj", "v_proj"))),
                    ),
                )
            )
        except KeyError as exc:
            raise RegistryError(f"{path}: agent {row}, field {exc.args[0]!r}: missing") from exc
        except (TypeError, ValueError) as exc:
            if isinstance(exc, RegistryError):
                raise
            raise RegistryError(f"{path}: agent {row}: {exc}") from exc
    return agents
