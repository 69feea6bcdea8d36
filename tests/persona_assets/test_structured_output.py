"""The strict parser of model replies, and JSON-schema constrained decoding on the embedded model."""

import json

import pytest

from persona_platform.persona_assets.judging.rubrics import comparison_schema, judgment_schema
from persona_platform.persona_assets.structured_output import ask_structured, parse_reply, schema_text
from persona_platform.resources.llm import ChatPrompt, GenerateRequest

SCHEMA = judgment_schema(80)


@pytest.mark.parametrize(
    "reply, reason",
    [
        ('{"explanation": "fine", "score": 4', "not JSON"),  # truncated
        ('{"explanation": "fine", "score": "4"}', "score"),  # wrong type
        ('{"explanation": "fine", "score": 4.5}', "score"),
        ('{"explanation": "fine", "score": true}', "score"),  # a boolean is not an integer
        ('{"explanation": "fine", "score": 6}', "score"),  # out of range
        ('{"explanation": "fine", "score": 0}', "score"),
        ('{"explanation": "fine"}', "score"),  # missing
        ('{"explanation": "fine", "score": 3, "confidence": 1}', "Additional properties"),
        ('{"explanation": "", "score": 3}', "explanation"),
        ("Score: 4. The answer fits.", "not JSON"),  # prose: nothing is searched for
        ('```json\n{"explanation": "fine", "score": 4}\n```', "not JSON"),  # nothing is repaired either
        ('{"explanation": "fine", "score": 4} {"explanation": "again", "score": 2}', "not JSON"),
        ("", "empty reply"),
        (None, "empty reply"),
    ],
)
def test_a_bad_reply_is_a_failure_with_its_reason(reply, reason):
    parsed = parse_reply(reply, SCHEMA)
    assert not parsed.ok and parsed.value is None
    assert reason in parsed.failure


def test_a_valid_reply_parses_exactly():
    parsed = parse_reply(' {"explanation": "Close to the reference.", "score": 5}\n', SCHEMA)
    assert parsed.ok and parsed.value == {"explanation": "Close to the reference.", "score": 5}
    verdict = parse_reply('{"justification": "B copies the agenda.", "winner": "Tie"}', comparison_schema(80))
    assert verdict.value["winner"] == "Tie"
    assert not parse_reply('{"justification": "x", "winner": "C"}', comparison_schema(80)).ok


def test_the_parser_never_sees_the_prompt(tiny_engine):
    """Upstream parsed prompt + reply, so a judge that wrote 'Score: 2' was recorded as the prompt's example
    score 4."""
    example = '{"explanation": "...", "score": 4}'
    prompt = ChatPrompt((("user", f"Rate the answer. Reply like {example}."),))
    [reply] = tiny_engine.generate([GenerateRequest(prompt, max_new_tokens=40)])
    assert example not in reply and "Rate the answer" not in reply  # the engine returns new tokens only
    parsed = parse_reply(reply, SCHEMA)
    assert not parsed.ok  # the unconstrained random model writes no valid JSON; the example is never read


def test_constrained_decoding_yields_schema_valid_json_from_the_tiny_model(tiny_engine):
    prompts = [ChatPrompt((("user", f"Judge response number {i}. Reply as JSON."),)) for i in range(24)]
    for temperature in (0.0, 1.0):
        answers = ask_structured(tiny_engine, prompts, SCHEMA, 80, temperature=temperature, seed=3)
        assert all(parsed.ok for _, parsed in answers), [p.failure for _, p in answers if not p.ok]
        assert all(1 <= parsed.value["score"] <= 5 for _, parsed in answers)
    verdicts = ask_structured(tiny_engine, prompts, comparison_schema(60), 60, temperature=1.0, seed=5)
    assert all(parsed.ok for _, parsed in verdicts)
    assert {p.value["winner"] for _, p in verdicts} <= {"A", "B", "Tie"}


def test_constrained_and_free_requests_share_a_batch_call(tiny_engine):
    schema = schema_text(SCHEMA)
    chat = ChatPrompt((("user", "Say something."),))
    free, constrained = tiny_engine.generate(
        [
            GenerateRequest(chat, max_new_tokens=24, temperature=1.0, seed=1),
            GenerateRequest(chat, max_new_tokens=400, temperature=1.0, seed=1, json_schema=schema),
        ]
    )
    assert parse_reply(constrained, SCHEMA).ok and free != constrained


def test_a_malformed_schema_is_refused_by_name(tiny_engine):
    with pytest.raises(json.JSONDecodeError):
        tiny_engine.generate([GenerateRequest("x", max_new_tokens=4, json_schema="{not json")])
