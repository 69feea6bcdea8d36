"""ICM pool evaluation: tree order with prefix reuse vs naive leave-one-out prompts.

For each pool size n the same labelled claims are evaluated both ways on the
embedded model; reported per way: tokens computed, tokens reused, wall time, and
the target bound n * L * (log2 n + 2) on tree tokens, L being the mean tokens
per demonstration line. Both ways score every claim given exactly the other
claims, in another order, so what the order changes is measured too: the largest
and mean |tree - naive| margin, the difference of the energies (alpha x mean
signed margin under the gold labels), and the share of queries whose own sibling
(the other option of its question) is the demonstration right before it
(target: at most 10% in tree order; naive's is about 2/n).
"""

from __future__ import annotations

import math
import time

from persona_platform.persona_assets.elicitation.icm import ClaimScorer, IcmClaim, IcmParams
from persona_platform.persona_assets.elicitation.prompts import DEMO_LINE, FALSE
from persona_platform.persona_assets.opinions.claims import SurveyAnswer, build_claims
from persona_platform.resources.inputs.survey import question_id, read_survey
from persona_platform.resources.llm.engine import Engine, LoglikelihoodRequest
from persona_platform.resources.settings import SAMPLE_GOQA_SOURCE

SIZES = (32, 64, 125, 256)
COUNTRY = "Aldoria"


def sample_claims(limit: int) -> list[IcmClaim]:
    """Claims of every sample country, phrased for one country: up to 256 distinct demonstrations."""
    source = read_survey(SAMPLE_GOQA_SOURCE)
    answers = [
        SurveyAnswer(question_id(r.question, r.options), r.country, r.options, r.distribution)
        for r in source.records
    ]
    questions = {question_id(r.question, r.options): r.question for r in source.records}
    claims, _ = build_claims(answers, seed=42)
    return [
        IcmClaim(
            uid,
            f"{c.question_id}/{c.country}",
            f"{questions[c.question_id]} ({c.country})",
            c.option,
            c.label,
        )
        for uid, c in enumerate(claims[:limit])
    ]


def mean_line_tokens(engine: Engine, claims: list[IcmClaim]) -> float:
    """Tokens per demonstration line as a prompt holds it (after other text): the counted tokens of a line
    that follows an empty first segment (which holds only the begin-of-text token). Through the engine, which
    alone holds the tokenizer; one batched pass over short lines."""
    lines = [
        DEMO_LINE.format(question=c.question, option=c.option, country=COUNTRY, label=FALSE) for c in claims
    ]
    results = engine.loglikelihood([LoglikelihoodRequest((("", False), (line, True))) for line in lines])
    return sum(r.n_counted for r in results) / len(lines)


def sibling_right_before(scorer: ClaimScorer, claims: list[IcmClaim]) -> float:
    order = scorer.order(list(range(len(claims))))
    return sum(bool(demos) and claims[demos[-1]].group == claims[q].group for q, demos in order) / len(order)


def energy(margins: dict[int, float], labels: list[int]) -> float:
    signed = [m if labels[uid] == 1 else -m for uid, m in margins.items()]
    return IcmParams().alpha * sum(signed) / len(signed)


def run(engine: Engine, sizes=SIZES) -> dict:
    rows = []
    for n in sizes:
        claims = sample_claims(n)
        if len(claims) < n:
            raise ValueError(f"the sample has {len(claims)} claims, fewer than n={n}")
        labels = [c.gold for c in claims]
        line_tokens = mean_line_tokens(engine, claims)
        result = {
            "n": n,
            "tokens_per_demo": round(line_tokens, 2),
            "bound_tokens": round(n * line_tokens * (math.log2(n) + 2)),
        }
        margins = {}
        for order in ("tree", "naive"):
            scorer = ClaimScorer(engine, COUNTRY, claims, order)
            before = engine.usage.snapshot()
            started = time.perf_counter()
            margins[order] = scorer.pool_margins([labels])[0]
            seconds = time.perf_counter() - started
            used = engine.usage.since(before)
            result[order] = {
                "seconds": round(seconds, 3),
                "tokens_computed": used.tokens_computed,
                "tokens_reused": used.tokens_reused,
                "forward_passes": used.forward_passes,
            }
            result[order]["sibling_right_before"] = round(sibling_right_before(scorer, claims), 4)
        gaps = [abs(margins["tree"][u] - margins["naive"][u]) for u in margins["tree"]]
        result["margin_difference_max"] = float(f"{max(gaps):.3g}")
        result["margin_difference_mean"] = float(f"{sum(gaps) / len(gaps):.3g}")
        result["energy_difference"] = float(
            f"{energy(margins['tree'], labels) - energy(margins['naive'], labels):.3g}"
        )
        result["token_ratio"] = round(
            result["tree"]["tokens_computed"] / result["naive"]["tokens_computed"], 4
        )
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
            "sibling right before its query <= 10% (tree)": all(
                r["tree"]["sibling_right_before"] <= 0.10 for r in rows
            ),
        },
        "rows": rows,
    }


def markdown(report: dict) -> str:
    lines = [
        f"ICM pool evaluation on `{report['model']}`: tree order with prefix reuse vs naive leave-one-out.",
        "",
        "| n | L | tree tokens | bound n·L·(log2 n+2) | naive tokens | tree s | naive s "
        "| tokens tree/naive | time tree/naive |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['n']} | {r['tokens_per_demo']} | {r['tree']['tokens_computed']:,} "
            f"| {r['bound_tokens']:,} | "
            f"{r['naive']['tokens_computed']:,} | {r['tree']['seconds']} | {r['naive']['seconds']} | "
            f"{r['token_ratio']} | {r['time_ratio']} |"
        )
    lines += [
        "",
        "What the order changes (same claims, same labels; energy = alpha x mean signed margin under gold):",
        "",
        "| n | max abs(tree − naive) margin | mean abs(tree − naive) margin | energy tree − naive "
        "| sibling right before: tree | naive |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['n']} | {r['margin_difference_max']} | {r['margin_difference_mean']} "
        f"| {r['energy_difference']} "
        f"| {r['tree']['sibling_right_before']:.1%} | {r['naive']['sibling_right_before']:.1%} |"
        for r in report["rows"]
    ]
    lines += [
        "",
        "Targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in report["targets"].items()),
    ]
    return "\n".join(lines)
