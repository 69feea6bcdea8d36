"""Board meeting transcripts: one JSON file per meeting, a list of ``{speaker, text}`` turns."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from persona_platform.resources.inputs.errors import InputFileError, PersonaInputError
from persona_platform.resources.inputs.registry import Agent

HONORIFICS = re.compile(
    r"^(mr|mrs|ms|miss|dr|prof|chair|vice chair|chairman|chairwoman|supervisor)\.?\s+", re.I
)


class TranscriptError(InputFileError):
    """Bad meeting transcript."""


@dataclass(frozen=True)
class Turn:
    index: int
    speaker: str
    text: str


@dataclass(frozen=True)
class Meeting:
    meeting_id: str
    path: Path
    sha256: str
    turns: tuple[Turn, ...]


def read_meeting(path: Path) -> Meeting:
    raw = path.read_bytes()
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TranscriptError(path, None, None, f"malformed JSON: {exc.msg} (line {exc.lineno})") from exc
    if not isinstance(items, list) or not items:
        raise TranscriptError(path, None, None, "a transcript is a non-empty list of {speaker, text} turns")
    turns = []
    for index, item in enumerate(items):
        row = index + 1
        if not isinstance(item, dict):
            raise TranscriptError(path, row, None, "each turn must be an object with speaker and text")
        for name in ("speaker", "text"):
            value = item.get(name)
            if not isinstance(value, str) or not value.strip():
                raise TranscriptError(path, row, name, "missing or empty")
        turns.append(Turn(index, " ".join(item["speaker"].split()), " ".join(item["text"].split())))
    return Meeting(path.stem, path, hashlib.sha256(raw).hexdigest(), tuple(turns))


def read_meetings(directory: Path) -> list[Meeting]:
    files = sorted(directory.glob("*.json"))
    if not files:
        raise TranscriptError(directory, None, None, "no meeting transcripts (*.json)")
    return [read_meeting(f) for f in files]


def normalize_name(name: str) -> str:
    bare = HONORIFICS.sub("", " ".join(name.split()))
    return re.sub(r"[^a-z ]", "", bare.lower()).strip()


def alias_table(agents: Sequence[Agent]) -> dict[str, str]:
    """Normalized name -> agent key, from keys, display names and aliases; an ambiguous alias is an error."""
    table: dict[str, str] = {}
    for agent in agents:
        for name in (agent.key, agent.display_name, *agent.aliases):
            normalized = normalize_name(name)
            if table.get(normalized, agent.key) != agent.key:
                raise PersonaInputError(
                    f"agent registry: alias {name!r} names both {table[normalized]} and {agent.key}"
                )
            table[normalized] = agent.key
    return table


def speaker_agent(speaker: str, aliases: dict[str, str]) -> str | None:
    return aliases.get(normalize_name(speaker))
