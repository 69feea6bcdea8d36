"""Test-set scoring: batched (one call per demonstration set) vs one prompt at a time (the upstream fork).

The same few-shot prompts (k demonstrations + one test claim each) are scored three
ways on the embedded model: batched with the shared demonstration prefix computed
once, batched with padding only, and one request per prompt. Reported: wall time of
each, the ratios, and the largest margin difference (the results must agree).
"""

from __future__ import annotations

import time

from persona_platform.benchmarks.icm_pool import COUNTRY, sample_claims
from persona_platform.persona_assets.elicitation.prompts import CANDIDATES, few_shot_prompt
from persona_platform.resources.llm.engine import Engine, ScoreRequest

DEMONSTRATIONS = 16
TESTS = 128


def run(engine: Engine) -> dict:
    claims = sample_claims(DEMONSTRATIONS + TESTS)
    demos = [(c.question, c.option, c.gold) for c in claims[:DEMONSTRATIONS]]
    requests = [
        ScoreRequest(few_shot_prompt(COUNTRY, demos, (c.question, c.option)), CANDIDATES)
        for c in claims[DEMONSTRATIONS:]
    ]
    engine.score(requests[:2])  # warm up
    timings, margins = {}, {}
    for name, score in (
        ("batched_shared_prefix", lambda: engine.score(requests, reuse_prefix=True)),
        ("batched_padded", lambda: engine.score(requests, reuse_prefix=False)),
        ("one_at_a_time", lambda: [engine.score([r], reuse_prefix=False)[0] for r in requests]),
    ):
        started = time.perf_counter()
        scores = score()
        timings[name] = time.perf_counter() - started
        margins[name] = [t - f for t, f in scores]
    reference = margins["one_at_a_time"]
    return {
        "benchmark": "test_scoring",
        "model": engine.model_id,
        "test_prompts": len(requests),
        "demonstrations": DEMONSTRATIONS,
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "ratio_batched_vs_one_at_a_time": round(
            timings["batched_shared_prefix"] / timings["one_at_a_time"], 3
        ),
        "ratio_padded_vs_one_at_a_time": round(timings["batched_padded"] / timings["one_at_a_time"], 3),
        "max_margin_difference": max(
            abs(a - b) for name in margins for a, b in zip(margins[name], reference, strict=True)
        ),
    }


def markdown(report: dict) -> str:
    s = report["seconds"]
    return "\n".join(
        [
            f"### Test scoring: {report['test_prompts']} prompts, "
            f"{report['demonstrations']} demonstrations each",
            "",
            "| way | seconds | ratio to one at a time |",
            "|---|---|---|",
            f"| batched, shared prefix once | {s['batched_shared_prefix']} "
            f"| {report['ratio_batched_vs_one_at_a_time']} |",
            f"| batched, padded | {s['batched_padded']} | {report['ratio_padded_vs_one_at_a_time']} |",
            f"| one at a time (upstream) | {s['one_at_a_time']} | 1.0 |",
            "",
            f"Largest margin difference between the ways: {report['max_margin_difference']:.2e}",
        ]
    )
