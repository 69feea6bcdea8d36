"""ICM pool evaluation: tree order with prefix reuse vs naive leave-one-out prompts.

For each pool size n the same labelled claims are evaluated both ways on the
embedded model; reported per way: tokens computed, tokens reused, wall time, and
the target bound n * L * (log2 n + 2) on tree tokens, L being the mean tokens
per demonstration line.
"""

from __future__ import annotations

import math
import time

from persona_assets.elicitation.icm import ClaimScorer, IcmClaim
from persona_assets.elicitation.prompts import DEMO_LINE, FALSE
from persona_assets.opinions.claims import SurveyAnswer, build_claims
from persona_assets.opinions.readers import question_id, read_survey
from persona_assets.settings import SAMPLE_GOQA_SOURCE
from resources.llm.engine import Engine

SIZES = (32, 64, 125, 256)
COUNTRY = "Aldoria"


def sample_claims(limit: int) -> list[IcmClaim]:
    """Claims of every sample country, phrased for one country: up to 256 distinct demonstrations."""
    source = read_survey(SAMPLE_GOQA_SOURCE)
    answers = [SurveyAnswer(question_id(r.question, r.options), r.country, r.options, r.distribution) for r in source.records]
    questions = {question_id(r.question, r.options): r.question for r in source.records}
    claims, _ = build_claims(answers, seed=42)
    return [
        IcmClaim(uid, f"{c.question_id}/{c.country}", f"{questions[c.question_id]} ({c.country})", c.option, c.label)
        for uid, c in enumerate(claims[:limit])
    ]


def mean_line_tokens(engine: Engine, claims: list[IcmClaim]) -> float:
    lines = [DEMO_LINE.format(question=c.question, option=c.option, country=COUNTRY, label=FALSE) for c in claims]
    return sum(len(engine.tokenizer(line, add_special_tokens=False)["input_ids"]) for line in lines) / len(lines)


def run(engine: Engine, sizes=SIZES) -> dict:
    rows = []
    for n in sizes:
        claims = sample_claims(n)
        if len(claims) < n:
            raise ValueError(f"the sample has {len(claims)} claims, fewer than n={n}")
        labels = [c.gold for c in claims]
        line_tokens = mean_line_tokens(engine, claims)
        result = {"n": n, "tokens_per_demo": round(line_tokens, 2), "bound_tokens": round(n * line_tokens * (math.log2(n) + 2))}
        margins = {}
        for order in ("tree", "naive"):
            scorer = ClaimScorer(engine, COUNTRY, claims, order)
            before = engine.usage.snapshot()
            started = time.perf_counter()
            margins[order] = scorer.pool_margins([labels])[0]
            seconds = time.perf_counter() - started
            used = engine.usage.since(before)
            result[order] = {"seconds": round(seconds, 3), "tokens_computed": used.tokens_computed,
                             "tokens_reused": used.tokens_reused, "forward_passes": used.forward_passes}
        result["token_ratio"] = round(result["tree"]["tokens_computed"] / result["naive"]["tokens_computed"], 4)
        result["time_ratio"] = round(result["tree"]["seconds"] / result["naive"]["seconds"], 4)
        result["tree_within_bound"] = result["tree"]["tokens_computed"] <= result["bound_tokens"]
        rows.append(result)
    at_125 = next((r for r in rows if r["n"] == 125), None)
    return {
        "benchmark": "icm_pool_evaluation",
        "model": engine.model_id,
        "targets": {
            "tree tokens <= n * L * (log2 n + 2)": all(r["tree_within_bound"] for r in rows),
            "tree time at n=125 <= 0.25 of naive": None if at_125 is None else at_125["time_ratio"] <= 0.25,
        },
        "rows": rows,
    }


def markdown(report: dict) -> str:
    lines = [
        f"ICM pool evaluation on `{report['model']}`: tree order with prefix reuse vs naive leave-one-out.",
        "",
        "| n | L | tree tokens | bound n·L·(log2 n+2) | naive tokens | tree s | naive s | tokens tree/naive | time tree/naive |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['n']} | {r['tokens_per_demo']} | {r['tree']['tokens_computed']:,} | {r['bound_tokens']:,} | "
            f"{r['naive']['tokens_computed']:,} | {r['tree']['seconds']} | {r['naive']['seconds']} | "
            f"{r['token_ratio']} | {r['time_ratio']} |"
        )
    lines += ["", "Targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in report["targets"].items())]
    return "\n".join(lines)
