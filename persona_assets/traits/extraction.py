"""Trait extraction from monologues: chunks, screening until a per-agent cap, profile packing (no Dagster here)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from persona_assets.structured_output import Parsed


@dataclass(frozen=True)
class Chunk:
    chunk_id: str  # "<monologue row id>#<index>"
    monologue_id: str
    text: str


def word_chunks(text: str, words: int) -> list[str]:
    tokens = text.split()
    return [" ".join(tokens[i : i + words]) for i in range(0, len(tokens), words)]


def monologue_chunks(monologues: Sequence[tuple[str, str]], words: int) -> list[Chunk]:
    """``(monologue row id, text)`` pairs, in order, cut into chunks of at most ``words`` words."""
    return [Chunk(f"{mid}#{i}", mid, piece) for mid, text in monologues for i, piece in enumerate(word_chunks(text, words))]


@dataclass(frozen=True)
class Screening:
    trait: str
    chunk: Chunk
    reply: str
    parsed: Parsed

    @property
    def relevant(self) -> bool:
        return self.parsed.ok and bool(self.parsed.value["relevant"])


# Screens (trait, chunk) pairs in one batch; returns each reply and its parse, in order.
Screener = Callable[[list[tuple[str, Chunk]]], list[tuple[str, Parsed]]]


def screen_until_cap(chunks: Sequence[Chunk], traits: Sequence[str], cap: int, screen: Screener) -> dict[str, list[Screening]]:
    """Screen chunks in order, for every trait at once, in rounds of ``cap`` chunks per trait,
    until a trait has ``cap`` relevant items or no chunks left. Returns every screening made."""
    made: dict[str, list[Screening]] = {t: [] for t in traits}
    position = dict.fromkeys(traits, 0)
    while True:
        batch: list[tuple[str, Chunk]] = []
        for trait in traits:
            if sum(s.relevant for s in made[trait]) < cap:
                batch += [(trait, c) for c in chunks[position[trait] : position[trait] + cap]]
                position[trait] += cap
        if not batch:
            return made
        for (trait, chunk), (reply, parsed) in zip(batch, screen(batch), strict=True):
            made[trait].append(Screening(trait, chunk, reply, parsed))


def kept(screenings: Sequence[Screening], cap: int) -> list[Screening]:
    """The first ``cap`` relevant screenings, in chunk order: the cap holds however many were screened."""
    return [s for s in screenings if s.relevant][:cap]


def pack_remarks(texts: Sequence[str], longest: int, max_chars: int) -> list[str]:
    """The ``longest`` texts, longest first, packed greedily into blocks of at most ``max_chars``
    characters; a text longer than that is cut to it."""
    chosen = sorted(texts, key=len, reverse=True)[:longest]
    blocks: list[str] = []
    for text in chosen:
        text = text[:max_chars]
        if blocks and len(blocks[-1]) + 2 + len(text) <= max_chars:
            blocks[-1] += "\n\n" + text
        else:
            blocks.append(text)
    return blocks
