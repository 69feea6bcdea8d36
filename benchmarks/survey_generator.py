"""Surveys with the shape and quirks of the published GlobalOpinionQA (Anthropic's ``llm_global_opinions``).

The published file has about 2,500 questions (Pew Global Attitudes, most of them, and the World
Values Survey) asked in subsets of 130+ countries. What a reader must survive, at roughly these rates:

- option lists that mix text and numbers (0-10 ladders stored as ``['Not important at all', 1.0,
  ..., 9.0, 'Very important']``), about 2% of questions;
- option lists longer than 10; one question text asked with two different option lists;
- newlines, both quote characters and non-ASCII text inside questions and options;
- country names with spaces, accents and parentheses;
- all-zero distributions (a country not asked), shares summing a little off 1 through rounding,
  and ties for the largest share.

Every quirk appears at least once in any survey of 7 questions or more, whatever the seed.
``expected_cells`` says, from the generated numbers alone, which (question, country) cells can make
a claim, their most chosen option, and why the others cannot: the ground truth tests compare with.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

PUBLISHED_QUESTIONS = 2_556
PUBLISHED_COUNTRIES = 138

# Real names first (spaces, accents, apostrophes, parentheses), then numbered regions to reach any size.
NAMED_COUNTRIES = (
    "Bosnia and Herzegovina",
    "Côte d'Ivoire",
    "Great Britain",
    "Congo (Kinshasa)",
    "United States",
    "South Korea",
    "Türkiye",
    "México",
    "Perú",
    "Viet Nam",
    "Hong Kong SAR",
    "New Zealand",
    "Czech Republic",
    "Germany",
    "Kenya",
    "Japan",
    "France",
    "Brazil",
    "India",
    "Nigeria",
    "Indonesia",
    "Egypt",
    "Argentina",
    "Canada",
    "Australia",
    "Spain",
    "Italy",
    "Poland",
    "Russia",
    "Ukraine",
    "Pakistan",
    "Bangladesh",
    "Philippines",
    "South Africa",
    "Ghana",
    "Senegal",
    "Tunisia",
    "Lebanon",
    "Jordan",
    "Israel",
    "Greece",
    "Sweden",
    "Netherlands",
    "Hungary",
    "Chile",
    "Colombia",
    "Venezuela",
    "Bolivia",
    "El Salvador",
    "Malaysia",
    "Thailand",
    "China",
    "Taiwan",
    "Iran",
    "Iraq",
    "Morocco",
    "Ethiopia",
    "Uganda",
    "Tanzania",
    "Mali",
    "Burkina Faso",
    "Sri Lanka",
    "Nepal",
)
LADDER = ["Not important at all", *[float(i) for i in range(1, 10)], "Very important"]
AGREEMENT = ["Strongly agree", "Agree", "Disagree", "Strongly disagree"]
QUIRKY_TEXT = (
    'Some say "the economy\nis improving" — do you agree?',
    "Is it l'État's job to ensure every citizen's well-being?",
    "¿Cuál es más importante: la familia o el trabajo?",
)
QUIRKS = ("ladder", "long", "same_text", "quirky_text", "zero", "tie", "off_one", "plain")


@dataclass(frozen=True)
class SurveyQuestion:
    question: str
    options: tuple  # text and numbers, as the source holds them
    selections: dict  # country name -> shares, one per option


def country_names(n: int) -> list[str]:
    return list(NAMED_COUNTRIES[:n]) + [
        f"Region {i:03d} (synthetic)" for i in range(n - len(NAMED_COUNTRIES))
    ]


def generate_survey(
    seed: int = 7,
    questions: int = PUBLISHED_QUESTIONS,
    countries: int = PUBLISHED_COUNTRIES,
    mixed_rate: float = 0.02,
    long_rate: float = 0.02,
    zero_rate: float = 0.01,
    tie_rate: float = 0.005,
    off_one_rate: float = 0.1,
) -> list[SurveyQuestion]:
    rng = random.Random(seed)
    names = country_names(countries)
    forced = list(QUIRKS[:-1])  # each quirk once in the first questions, then at the published rates
    out: list[SurveyQuestion] = []
    for index in range(questions):
        quirk = forced[index] if index < len(forced) else None
        options = _options(rng, index, quirk, mixed_rate, long_rate)
        text = (
            QUIRKY_TEXT[index % len(QUIRKY_TEXT)]
            if quirk == "quirky_text"
            else f"Survey question {index}: how do you see issue {index}?"
        )
        if quirk == "same_text" and out:
            text, options = out[0].question, tuple(AGREEMENT)  # the first question's text, other options
        asked = rng.sample(
            names, k=min(len(names), rng.randint(max(2, len(names) // 5), max(2, len(names) // 2)))
        )
        selections = {}
        for position, name in enumerate(asked):
            forced_cell = quirk if position == 0 and quirk in ("zero", "tie", "off_one") else None
            selections[name] = _shares(rng, len(options), forced_cell, zero_rate, tie_rate, off_one_rate)
        out.append(SurveyQuestion(text, options, selections))
    return out


def _options(rng: random.Random, index: int, quirk: str | None, mixed_rate: float, long_rate: float) -> tuple:
    if quirk == "ladder" or (quirk is None and rng.random() < mixed_rate):
        return tuple(LADDER)
    if quirk == "long" or (quirk is None and rng.random() < long_rate):
        return tuple(f"Option {i + 1} of question {index}" for i in range(rng.randint(12, 16)))
    if quirk == "quirky_text":
        return ("Oui, tout à fait", 'Only "sometimes"', "It's complicated", "Nein")
    return tuple(rng.choice((["Yes", "No"], AGREEMENT, ["Good", "Bad", "Neither", "Don't know"])))


def _shares(
    rng: random.Random, n: int, forced: str | None, zero_rate: float, tie_rate: float, off_one_rate: float
) -> list[float]:
    roll = rng.random()
    kind = forced or (
        "zero"
        if roll < zero_rate
        else "tie"
        if roll < zero_rate + tie_rate
        else "off_one"
        if roll > 1 - off_one_rate
        else "plain"
    )
    if kind == "zero":
        return [0.0] * n
    weights = [rng.random() for _ in range(n)]
    if kind == "tie":
        first, second = sorted(range(n), key=lambda i: -weights[i])[:2]
        weights[second] = weights[first]
    shares = [w / sum(weights) for w in weights]
    if kind == "off_one":
        shares = [round(s, 2) + 0.004 for s in shares]  # rounding noise: the sum is near, not at, 1
    if kind != "tie" and shares.count(max(shares)) > 1:
        shares[shares.index(max(shares))] += 0.01  # only "tie" rows may tie
    return shares


def canonical(option) -> str:
    if isinstance(option, float) and option.is_integer():
        return str(int(option))
    return str(option).strip()


def expected_cells(
    survey: list[SurveyQuestion],
) -> dict[tuple[str, tuple[str, ...], str], tuple[str, int | None]]:
    """(question, canonical options, country name) -> ('usable', most chosen option) or (reason, None)."""
    cells = {}
    for q in survey:
        options = tuple(canonical(o) for o in q.options)
        for name, shares in q.selections.items():
            if sum(shares) == 0:
                cells[(q.question, options, name)] = ("no_answers", None)
            elif shares.count(max(shares)) > 1:
                cells[(q.question, options, name)] = ("tied", None)
            else:
                cells[(q.question, options, name)] = ("usable", shares.index(max(shares)))
    return cells


def write_hf_csv(survey: list[SurveyQuestion], path: Path) -> Path:
    """The Hugging Face CSV: ``selections`` as the string of a defaultdict, ``options`` as a Python list
    literal."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "selections", "options", "source"])
        for i, q in enumerate(survey):
            writer.writerow(
                [
                    q.question,
                    f"defaultdict(<class 'list'>, {q.selections!r})",
                    repr(list(q.options)),
                    "WVS" if i % 7 == 0 else "GAS",
                ]
            )
    return path


def write_flat_json(survey: list[SurveyQuestion], path: Path) -> Path:
    """The flattened JSON: one object per (question, country); numbers in option lists stay numbers."""
    items = [
        {"country": name, "question": q.question, "options": list(q.options), "distribution": shares}
        for q in survey
        for name, shares in q.selections.items()
    ]
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    return path
