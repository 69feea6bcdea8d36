"""Structured model output: JSON schemas for constrained decoding and the one strict parser.

The parser reads the generated text only (a backend returns the reply, never the
prompt, so an example in the prompt can never be read as the answer). The whole
reply must be one JSON value that validates against the schema; nothing is
searched for, repaired or defaulted. A reply that fails says why, and the caller
stores it as a failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator

from persona_platform.resources.llm.engine import Engine, GenerateRequest


def text_field(max_chars: int) -> dict:
    """A free-text field. JSON strings may not hold raw control characters; the pattern keeps constrained
    decoders (whose string rule can be looser) inside that, and bounds the length so that a reply closes
    within its token budget."""
    return {"type": "string", "pattern": f"^[^\\x00-\\x1f]{{1,{max_chars}}}$"}


def object_schema(properties: dict[str, dict]) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def schema_text(schema: dict) -> str:
    """The JSON text of a schema: what a request carries and what a prompt hash covers. Key order is kept:
    a constrained decoder writes properties in schema order (so an explanation can come before its score)."""
    return json.dumps(schema, separators=(",", ":"))


def token_budget(max_chars: int, overhead_tokens: int = 48) -> int:
    """Enough new tokens for a reply whose free text is at most ``max_chars`` characters: a
    byte-level tokenizer may spend up to 4 tokens on one character, plus the JSON around it."""
    return 4 * max_chars + overhead_tokens


@dataclass(frozen=True)
class Parsed:
    value: dict[str, Any] | None
    failure: str | None  # why the reply is not a valid answer; None when it is

    @property
    def ok(self) -> bool:
        return self.failure is None


def parse_reply(reply: str | None, schema: dict) -> Parsed:
    if reply is None or not reply.strip():
        return Parsed(None, "empty reply")
    try:
        value = json.loads(reply)
    except json.JSONDecodeError as exc:
        return Parsed(None, f"not JSON: {exc.msg} at char {exc.pos}")
    errors = sorted(Draft202012Validator(schema).iter_errors(value), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top level)"
        return Parsed(None, f"schema: {where}: {first.message}")
    return Parsed(value, None)


def ask_structured(
    engine: Engine,
    prompts: list,
    schema: dict,
    max_chars: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    adapter: str | None = None,
) -> list[tuple[str, Parsed]]:
    """Generate one constrained reply per prompt (one batch) and parse each: ``(reply, parse)``."""
    text = schema_text(schema)
    replies = engine.generate(
        [
            GenerateRequest(
                p,
                max_new_tokens=token_budget(max_chars),
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                seed=seed,
                adapter=adapter,
                json_schema=text,
            )
            for p in prompts
        ]
    )
    return [(reply, parse_reply(reply, schema)) for reply in replies]
