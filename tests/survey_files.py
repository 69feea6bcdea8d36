"""Write survey records in each supported format, for reader tests."""

import csv
import json
from pathlib import Path

from persona_platform.resources.inputs.survey import SurveyRecord


def write_flat_json(records: list[SurveyRecord], path: Path) -> Path:
    items = [
        {
            "country": r.country,
            "question": r.question,
            "options": list(r.options),
            "distribution": list(r.distribution),
        }
        for r in records
    ]
    path.write_text(json.dumps(items, indent=1))
    return path


def mean_position(distribution) -> float:
    total = sum(distribution)
    return sum(i * p for i, p in enumerate(distribution)) / total / (len(distribution) - 1)


def write_wide_csv(records: list[SurveyRecord], path: Path) -> Path:
    questions = list(dict.fromkeys((r.question, r.options) for r in records))
    countries = sorted({r.country for r in records})
    cells = {(r.question, r.options, r.country): mean_position(r.distribution) for r in records}
    header = ["Country"] + [
        q + "\n" + "".join(f"{chr(65 + i)}. {o}\n" for i, o in enumerate(opts)) for q, opts in questions
    ]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for c in countries:
            writer.writerow(
                [c] + [f"{cells[(q, o, c)]:.6f}" if (q, o, c) in cells else "" for q, o in questions]
            )
    return path
