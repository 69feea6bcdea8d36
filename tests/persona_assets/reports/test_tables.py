"""The elicitation reports do not depend on the order the warehouse returns rows in."""

import random

import polars as pl

from persona_platform.persona_assets.reports.tables import difference_rows, method_scores, summary_rows


def predictions(seed: int) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    rng = random.Random(seed)
    countries, questions = ["Aldoria", "Borvania", "Caldera"], [f"q{i}" for i in range(12)]
    claims = [(c, f"{q}/{c}/{o}") for c in countries for q in questions for o in (0, 1)]
    base = pl.DataFrame(
        [
            {
                "country": c,
                "variant": "all",
                "claim_id": i,
                "correct": rng.random() < 0.6,
                "row_id": f"all/{i}",
            }
            for c, i in claims
        ]
    )
    chat = pl.DataFrame(
        [
            {
                "country": c,
                "variant": "all",
                "method": "zero_shot_chat",
                "repeat": 0,
                "claim_id": i,
                "correct": rng.random() < 0.5,
                "row_id": f"all/r0/{i}",
            }
            for c, i in claims
        ]
    )
    few = pl.DataFrame(
        [
            {
                "country": c,
                "variant": "all",
                "method": m,
                "k": k,
                "repeat": r,
                "claim_id": i,
                "correct": rng.random() < (0.7 if m == "gold" else 0.55),
                "row_id": f"all/{m}/k{k}/r{r}/{i}",
            }
            for c, i in claims
            for m in ("gold", "icm", "random_matched")
            for k in (4, 8)
            for r in (0, 1)
        ]
    )
    return base, chat, few


def test_summary_and_differences_are_the_same_whatever_the_row_order():
    frames = predictions(0)
    shuffled = [f.sample(fraction=1.0, shuffle=True, seed=7) for f in frames]
    reversed_ = [f.reverse() for f in frames]
    results = []
    for version in (frames, shuffled, reversed_):
        scores = method_scores(*version)
        results.append((summary_rows(scores), difference_rows(scores)))
    assert results[0] == results[1] == results[2]
    summary, differences = results[0]
    assert any(r["scope"] == "aggregate" for r in differences) and all(r["input_ids"] for r in summary)
