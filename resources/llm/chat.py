"""Token ids of a chat, laid out by the tokenizer's own chat template, with a mask of one role's content."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from persona_platform.resources.llm.engine import ChatPrompt, Prompt


class ChatTemplateError(ValueError):
    pass


def render(tokenizer, messages: Sequence[tuple[str, str]], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        [{"role": role, "content": content} for role, content in messages],
        tokenize=False,
        add_generation_prompt=generation_prompt,
    )


def prompt_ids(tokenizer, prompt: Prompt, encode: Callable[[str, bool], list[int]]) -> list[int]:
    """Token ids of any prompt; ``encode(text, first)`` tokenizes a piece, with special tokens only when
    first.

    A chat goes through the model's template (which writes its own begin-of-text); segments are
    tokenized one by one, so prompts sharing leading segments share a token prefix."""
    if isinstance(prompt, str):
        return encode(prompt, True)
    if isinstance(prompt, ChatPrompt):
        return encode(render(tokenizer, prompt.messages, generation_prompt=True), False)
    ids: list[int] = []
    for index, segment in enumerate(prompt):
        ids += encode(segment, index == 0)
    return ids


def chat_tokens(
    tokenizer, messages: Sequence[tuple[str, str]], counted_role: str = "assistant"
) -> tuple[list[int], list[bool]]:
    """Ids of the rendered chat and, per token, whether it is content of ``counted_role``.

    Each message's text is the difference between the template rendered with and
    without it; of a counted message only the content and what follows it (the
    end-of-turn marker) count, never the role header. Needs a template whose
    rendering of a longer chat starts with the rendering of a shorter one.
    """
    ids: list[int] = []
    mask: list[bool] = []
    previous = ""
    for index, (role, content) in enumerate(messages):
        full = render(tokenizer, messages[: index + 1])
        if not full.startswith(previous):
            raise ChatTemplateError("the chat template does not render chats as prefixes of longer chats")
        piece = full[len(previous) :]
        previous = full
        split = piece.rfind(content) if role == counted_role and content else -1
        parts = [(piece, False)] if split < 0 else [(piece[:split], False), (piece[split:], True)]
        for text, counted in parts:
            piece_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece_ids
            mask += [counted] * len(piece_ids)
    return ids, mask


def completion_tokens(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[bool]]:
    """Ids of a text prompt (with the model's begin-of-text, as ``score`` encodes prompts) and its completion
    (as ``score`` encodes candidates), and per token whether it is the completion's."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return prompt_ids + completion_ids, [False] * len(prompt_ids) + [True] * len(completion_ids)
