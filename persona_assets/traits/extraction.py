"""Trait extraction from monologues: chunks, screening until a per-agent cap, profile packing
(no Dagster here)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from persona_platform.persona_assets.structured_output import Parsed, ask_structured
from persona_platform.persona_assets.traits import prompts
from persona_platform.resources.llm.engine import ChatPrompt, Engine, GenerateRequest


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
    return [
        Chunk(f"{mid}#{i}", mid, piece)
        for mid, text in monologues
        for i, piece in enumerate(word_chunks(text, words))
    ]


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


def screen_until_cap(
    chunks: Sequence[Chunk], traits: Sequence[str], cap: int, screen: Screener
) -> dict[str, list[Screening]]:
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


def longest_first(monologues: Sequence[tuple[str, str]], count: int) -> list[tuple[str, str]]:
    """The ``count`` longest ``(row id, text)`` monologues, longest first (ties keep their order)."""
    return sorted(monologues, key=lambda m: len(m[1]), reverse=True)[:count]


def pack_remarks(texts: Sequence[str], max_chars: int) -> list[str]:
    """Texts packed greedily, in order, into blocks of at most ``max_chars`` characters; a text longer than
    that is cut to it."""
    blocks: list[str] = []
    for text in texts:
        text = text[:max_chars]
        if blocks and len(blocks[-1]) + 2 + len(text) <= max_chars:
            blocks[-1] += "\n\n" + text
        else:
            blocks.append(text)
    return blocks


@dataclass(frozen=True)
class Profile:
    text: str
    partials: tuple[str, ...]
    interview_questions: tuple[str, ...]
    failure: str | None


def build_profiles(
    engine: Engine,
    people: Sequence[tuple[str, list[str]]],
    *,
    partial_tokens: int,
    profile_tokens: int,
    interview_questions: int,
    question_chars: int,
) -> list[Profile]:
    """One profile per ``(name, remark blocks)``, every stage batched across people: a partial profile
    per block (greedy), the partials merged, then interview questions as constrained JSON. No
    blocks: no profile, a failure."""
    asked = [i for i, (_, blocks) in enumerate(people) if blocks]
    partial_requests = [(i, block) for i in asked for block in people[i][1]]
    partial_texts = engine.generate(
        [
            GenerateRequest(
                ChatPrompt(
                    (("user", prompts.PARTIAL_PROFILE_TEMPLATE.format(name=people[i][0], remarks=block)),)
                ),
                max_new_tokens=partial_tokens,
            )
            for i, block in partial_requests
        ]
    )
    partials: dict[int, list[str]] = {}
    for (i, _), text in zip(partial_requests, partial_texts, strict=True):
        partials.setdefault(i, []).append(text)
    merged = engine.generate(
        [
            GenerateRequest(
                ChatPrompt(
                    (
                        (
                            "user",
                            prompts.CONSOLIDATE_TEMPLATE.format(
                                name=people[i][0], partials="\n\n".join(partials[i])
                            ),
                        ),
                    )
                ),
                max_new_tokens=profile_tokens,
            )
            for i in asked
        ]
    )
    schema = prompts.interview_schema(interview_questions, question_chars)
    answers = ask_structured(
        engine,
        [
            ChatPrompt(
                prompts.chat(
                    prompts.INTERVIEW_TEMPLATE.format(
                        name=people[i][0], profile=text, count=interview_questions
                    )
                )
            )
            for i, text in zip(asked, merged, strict=True)
        ],
        schema,
        interview_questions * question_chars,
    )
    built = {
        i: Profile(
            text.strip(),
            tuple(partials[i]),
            tuple(parsed.value["questions"]) if parsed.ok else (),
            parsed.failure,
        )
        for i, text, (_, parsed) in zip(asked, merged, answers, strict=True)
    }
    return [built.get(i, Profile("", (), (), "no monologues")) for i in range(len(people))]
