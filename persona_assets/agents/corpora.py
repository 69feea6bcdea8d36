"""Per-agent corpora from meetings: splits, training conversations, completion examples, monologues.

Chats use roles: the agent's turns are ``assistant`` turns, everyone else's are
``user`` turns prefixed with the speaker's name (consecutive ones merged). There is
no system turn: an adapter is trained on exactly these chats, so every prompt given
to an adapter is built by ``adapter_prompt``, which keeps to the same roles.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from persona_platform.resources.llm.engine import ChatPrompt

Message = tuple[str, str]  # (role, content)


@dataclass(frozen=True)
class SpeakerTurn:
    meeting_id: str
    index: int
    speaker: str
    agent: str | None
    text: str


def split_meetings(meeting_ids: Sequence[str], test_fraction: float, seed: int) -> dict[str, str]:
    """Whole meetings go to train or test; at least one each when there are two or more."""
    order = sorted(meeting_ids)
    random.Random(seed).shuffle(order)
    n_test = min(max(1, round(test_fraction * len(order))), len(order) - 1) if len(order) > 1 else 0
    return {m: ("test" if i < n_test else "train") for i, m in enumerate(order)}


def as_messages(turns: Sequence[SpeakerTurn], agent: str) -> list[Message]:
    messages: list[Message] = []
    for turn in turns:
        if turn.agent == agent:
            messages.append(("assistant", turn.text))
        else:
            line = f"{turn.speaker}: {turn.text}"
            if messages and messages[-1][0] == "user":
                messages[-1] = ("user", messages[-1][1] + "\n" + line)
            else:
                messages.append(("user", line))
    return messages


# The roles of the training chats (``as_messages``), hence the only roles an adapter has seen.
ADAPTER_ROLES = ("user", "assistant")


def adapter_prompt(messages: Sequence[Message]) -> ChatPrompt:
    """A chat for an adapter, laid out as its training chats: user and assistant turns, no system turn.

    An adapter shown a turn it never saw in training answers out of its training
    distribution, so any other role is refused rather than passed on."""
    for role, _ in messages:
        if role not in ADAPTER_ROLES:
            raise ValueError(
                f"an adapter is trained on {' and '.join(ADAPTER_ROLES)} turns only; got a {role!r} turn"
            )
    return ChatPrompt(tuple((role, content) for role, content in messages))


def conversation_windows(turns: Sequence[SpeakerTurn], agent: str, max_words: int) -> list[list[SpeakerTurn]]:
    """Consecutive turns cut into windows of at most ``max_words`` words that hold a turn of the agent.

    A single turn longer than the limit is a window of its own (training truncates it),
    never dropped.
    """
    windows, current, words = [], [], 0
    for turn in turns:
        n = len(turn.text.split())
        if current and words + n > max_words:
            windows.append(current)
            current, words = [], 0
        current.append(turn)
        words += n
    if current:
        windows.append(current)
    return [w for w in windows if any(t.agent == agent for t in w)]


@dataclass(frozen=True)
class Completion:
    target: SpeakerTurn
    context: tuple[SpeakerTurn, ...]


def completions(
    turns: Sequence[SpeakerTurn], agent: str, context_turns: int, min_words: int
) -> list[Completion]:
    """Each utterance of the agent (of at least ``min_words`` words) with the turns before it."""
    out = []
    for position, turn in enumerate(turns):
        if turn.agent == agent and len(turn.text.split()) >= min_words and position > 0:
            out.append(Completion(turn, tuple(turns[max(0, position - context_turns) : position])))
    return out


def monologues(turns: Sequence[SpeakerTurn], agent: str, min_words: int) -> list[SpeakerTurn]:
    return [t for t in turns if t.agent == agent and len(t.text.split()) > min_words]
