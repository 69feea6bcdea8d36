"""Vote records (``Context``, ``Ayes``, ``Nayes``) parsed into per-agent Aye/Naye votes."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

from persona_platform.resources.inputs.errors import InputFileError
from persona_platform.resources.inputs.transcripts import speaker_agent

COLUMNS = ("Context", "Ayes", "Nayes")
AYE, NAYE = "Aye", "Naye"
_SEPARATORS = re.compile(r"\s*(?:,|;|&|\band\b)\s*", re.I)
_NAME = re.compile(r"^[A-Za-z][A-Za-z.'\- ]*$")


class VoteRecordError(InputFileError):
    """Bad vote record."""


@dataclass(frozen=True)
class Motion:
    motion_id: str
    row: int
    context: str
    ayes: tuple[str, ...]
    nayes: tuple[str, ...]


@dataclass(frozen=True)
class VoteFile:
    path: Path
    sha256: str
    motions: tuple[Motion, ...]


def split_names(text: str) -> list[str]:
    """Names joined by commas, semicolons, '&' or 'and' (an Oxford comma too)."""
    return [name for name in (" ".join(n.split()) for n in _SEPARATORS.split(text or "")) if name]


def read_votes(path: Path) -> VoteFile:
    raw = path.read_bytes()
    text = raw.decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise VoteRecordError(path, None, None, "the file is empty")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise VoteRecordError(path, 1, "header", f"missing columns {', '.join(missing)}")
    col = {name: header.index(name) for name in COLUMNS}
    motions = []
    for offset, cells in enumerate(rows[1:]):
        row = offset + 2
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise VoteRecordError(path, row, None, f"{len(cells)} cells, the header has {len(header)}")
        context = " ".join(cells[col["Context"]].split())
        if not context:
            raise VoteRecordError(path, row, "Context", "empty")
        votes = {}
        for field_name in ("Ayes", "Nayes"):
            names = split_names(cells[col[field_name]])
            for name in names:
                if not _NAME.match(name):
                    raise VoteRecordError(path, row, field_name, f"cannot read {name!r} as a name")
            votes[field_name] = tuple(names)
        if not votes["Ayes"] and not votes["Nayes"]:
            raise VoteRecordError(path, row, "Ayes", "no voter in Ayes or Nayes")
        digest = hashlib.sha256(context.encode()).hexdigest()[:10]
        motions.append(Motion(f"m{digest}", row, context, votes["Ayes"], votes["Nayes"]))
    if not motions:
        raise VoteRecordError(path, None, None, "no vote records")
    return VoteFile(path, hashlib.sha256(raw).hexdigest(), tuple(motions))


@dataclass(frozen=True)
class AgentVote:
    motion_id: str
    agent: str
    vote: str
    name_as_written: str


def resolve_votes(motions, aliases: dict[str, str]) -> tuple[list[AgentVote], list[tuple[str, str]]]:
    """Per-agent votes, and (motion_id, name) for every name that matches no agent."""
    votes, unknown = [], []
    for motion in motions:
        for vote, names in ((AYE, motion.ayes), (NAYE, motion.nayes)):
            for name in names:
                agent = speaker_agent(name, aliases)
                if agent is None:
                    unknown.append((motion.motion_id, name))
                else:
                    votes.append(AgentVote(motion.motion_id, agent, vote, name))
    return votes, unknown
