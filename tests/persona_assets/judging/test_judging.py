"""Judging logic: references are required, both orders are judged, failures are counted, win rates."""

import json
import re

import polars as pl
import pytest

from persona_platform.persona_assets.judging.assets import judging_summary
from persona_platform.persona_assets.judging.judge import compare_pairs, score_responses
from persona_platform.persona_assets.judging.outcomes import (
    AGENT_FIRST,
    BASELINE_FIRST,
    FAILED,
    INCONSISTENT,
    TIE,
    combine,
    win_rates,
    winner_of,
)
from persona_platform.persona_assets.judging.rubrics import (
    ASPECTS,
    Item,
    MissingReferenceError,
    absolute_messages,
    pairwise_messages,
)
from persona_platform.persona_assets.judging.tables import SUMMARY_SCHEMA, summary_rows
from persona_platform.persona_assets.provenance import Provenance, result_frame
from persona_platform.persona_assets.statistics import interval_method
from persona_platform.resources.llm.engine import Engine
from tests.conftest import materialize_report, primary_experiment

ITEM = Item(
    "monologue/a/m/1",
    "monologue",
    None,
    "Interviewer: Why the pilot?",
    "I always start from the data.",
    "the monologue",
)


def test_a_reference_based_judgment_without_its_reference_is_refused():
    empty = Item("monologue/a/m/2", "monologue", None, "Interviewer: Why?", "  ", "the monologue")
    for aspect in ASPECTS["monologue"]:
        with pytest.raises(MissingReferenceError, match="monologue/a/m/2.*reference"):
            absolute_messages(aspect, empty, "an answer")
    with pytest.raises(MissingReferenceError):
        pairwise_messages(empty, "one", "two")
    plausibility = next(a for a in ASPECTS["completion"] if a.name == "plausibility")
    completion = Item(
        "completion/a/m/3", "completion", None, "Okafor: next item", None, "what the agent said next"
    )
    assert (
        "Reference" not in absolute_messages(plausibility, completion, "an answer")[1][1]
    )  # judged without one


def test_the_reference_is_in_the_prompt_of_every_reference_based_aspect():
    for aspect in ASPECTS["monologue"]:
        assert "I always start from the data." in absolute_messages(aspect, ITEM, "x")[1][1]
    trait = Item(
        "trait/belief/a/m/1#0", "trait", "belief", "Interviewer: q?", "Believes in pilots.", "trait summary"
    )
    user = absolute_messages(ASPECTS["trait"][0], trait, "x")[1][1]
    assert "Believes in pilots." in user and "core beliefs" not in user and "stance in the reference" in user


def test_verdicts_are_mapped_to_systems_by_order_and_combined():
    assert winner_of("A", AGENT_FIRST) == "agent" and winner_of("A", BASELINE_FIRST) == "baseline"
    assert winner_of("B", AGENT_FIRST) == "baseline" and winner_of("Tie", BASELINE_FIRST) == TIE
    assert winner_of(None, AGENT_FIRST) is None
    assert combine("agent", "agent") == "agent" and combine(TIE, TIE) == TIE
    assert combine("agent", "baseline") == INCONSISTENT and combine("agent", TIE) == INCONSISTENT
    assert combine(None, "agent") == FAILED


def test_win_rates_count_consistent_and_raw_wins():
    outcomes = ["agent"] * 6 + ["baseline"] * 2 + [TIE, INCONSISTENT, FAILED]
    agent_first = ["agent"] * 7 + ["baseline"] * 2 + [TIE, None]
    baseline_first = ["agent"] * 6 + ["baseline"] * 3 + [TIE, None]
    items = [f"item{i % 5}" for i in range(11)]
    rates = win_rates(items, outcomes, agent_first, baseline_first)
    assert (
        rates.pairs,
        rates.items,
        rates.judged,
        rates.agent_wins,
        rates.baseline_wins,
        rates.ties,
        rates.inconsistent,
        rates.failed,
    ) == (11, 5, 10, 6, 2, 1, 1, 1)
    assert rates.consistent_rate == pytest.approx(0.6) and rates.consistent_low < 0.6 < rates.consistent_high
    assert rates.raw_agent_wins == 13 and rates.raw_verdicts == 20 and rates.raw_rate == pytest.approx(0.65)
    assert rates.raw_low < 0.65 < rates.raw_high


def test_win_rate_intervals_resample_items_not_samples():
    """Three samples of each item that agree with each other are one item's evidence, not three pairs'."""
    outcomes = ["agent"] * 9 + ["baseline"] * 6
    verdicts = ["agent"] * 9 + ["baseline"] * 6
    per_item = win_rates([f"i{k // 3}" for k in range(15)], outcomes, verdicts, verdicts)
    per_pair = win_rates([f"i{k}" for k in range(15)], outcomes, verdicts, verdicts)
    assert per_item.consistent_rate == per_pair.consistent_rate == pytest.approx(0.6)
    assert per_item.items == 5 and per_pair.items == 15
    assert (per_item.consistent_high - per_item.consistent_low) > 1.3 * (
        per_pair.consistent_high - per_pair.consistent_low
    )


def test_degenerate_win_rates_have_null_intervals():
    none = win_rates([], [], [], [])
    assert (none.pairs, none.consistent_rate, none.consistent_low, none.raw_rate, none.raw_high) == (
        0,
        None,
        None,
        None,
        None,
    )
    one_item = win_rates(["i", "i"], ["agent", "baseline"], ["agent", "baseline"], ["agent", "baseline"])
    assert one_item.consistent_rate == 0.5 and one_item.consistent_low is None and one_item.raw_high is None
    all_ties = win_rates(["i", "j", "k"], [TIE] * 3, [TIE] * 3, [TIE] * 3)
    assert (
        all_ties.consistent_rate == 0.0
        and all_ties.consistent_low is None
        and all_ties.consistent_high is None
    )
    all_failed = win_rates(["i", "j"], [FAILED] * 2, [None] * 2, [None] * 2)
    assert all_failed.judged == 0 and all_failed.consistent_rate is None and all_failed.raw_rate is None


class ScriptedJudge(Engine):
    """A judge whose preferences a test sets: the remote-model stand-in for behaviour the tiny model cannot
    show."""

    def __init__(self, decide):
        super().__init__(model_id="scripted-judge")
        self.decide = decide
        self.prompts = []

    def generate(self, requests):
        replies = []
        for request in requests:
            user = request.prompt.messages[-1][1]
            self.prompts.append(user)
            replies.append(self.decide(user, request))
        return replies

    def score(self, requests, reuse_prefix=None):
        raise NotImplementedError

    def loglikelihood(self, requests):
        raise NotImplementedError


def responses(n_samples=2):
    rows = []
    for sample in range(n_samples):
        for system, text in (
            ("agent", f"data first, sample {sample}"),
            ("baseline", f"generic words, sample {sample}"),
        ):
            rows.append(
                {
                    "row_id": f"{ITEM.item_id}/{system}/T1/{sample}",
                    "agent": "a",
                    "item_id": ITEM.item_id,
                    "task": "monologue",
                    "system": system,
                    "setting": "T1",
                    "sample": sample,
                    "response": text,
                }
            )
    return rows


def first_response(user):
    return re.search(r'Response A:\n"""\n(.*?)\n"""', user, re.S).group(1)


def test_both_orders_are_judged_and_a_position_biased_judge_is_inconsistent():
    judge = ScriptedJudge(lambda user, r: json.dumps({"justification": "A reads better.", "winner": "A"}))
    rows = compare_pairs(judge, {ITEM.item_id: ITEM}, responses(), 80)
    assert len(rows) == 2 and len(judge.prompts) == 4
    firsts = [first_response(p) for p in judge.prompts]
    assert firsts == [
        "data first, sample 0",
        "generic words, sample 0",
        "data first, sample 1",
        "generic words, sample 1",
    ]
    assert all(
        p.count("I always start from the data.") == 1 for p in judge.prompts
    )  # the reference, every time
    assert {r["outcome"] for r in rows} == {INCONSISTENT}
    assert {(r["verdict_agent_first"], r["verdict_baseline_first"]) for r in rows} == {("agent", "baseline")}


def test_a_consistent_judge_gives_the_win_and_failures_are_counted_not_imputed():
    def decide(user, request):
        if "sample 1" in user:
            return '{"justification": "cut off'  # truncated: a failure, never a default verdict
        winner = "A" if first_response(user).startswith("data") else "B"
        return json.dumps({"justification": "closer to the reference", "winner": winner})

    rows = compare_pairs(ScriptedJudge(decide), {ITEM.item_id: ITEM}, responses(), 80)
    by_sample = {r["sample"]: r for r in rows}
    assert by_sample[0]["outcome"] == "agent"
    assert by_sample[1]["outcome"] == FAILED and by_sample[1]["failure_agent_first"].startswith("not JSON")
    assert (
        win_rates(
            [r["item_id"] for r in rows],
            [r["outcome"] for r in rows],
            [r["verdict_agent_first"] for r in rows],
            [r["verdict_baseline_first"] for r in rows],
        ).failed
        == 1
    )


def test_scores_are_stored_per_aspect_and_failures_have_no_score():
    def decide(user, request):
        assert (
            json.loads(request.json_schema)["properties"]["score"]["maximum"] == 5
        )  # constrained where possible
        return "Score: 4" if "sample 1" in user else json.dumps({"explanation": "close", "score": 3})

    rows = score_responses(ScriptedJudge(decide), {ITEM.item_id: ITEM}, responses(), 80)
    assert len(rows) == 4 * len(ASPECTS["monologue"])
    assert {r["aspect"] for r in rows} == {"fit", "style"}
    failed = [r for r in rows if r["failure"]]
    assert len(failed) == 4 and all(r["score"] is None and r["reply"] == "Score: 4" for r in failed)
    assert all(r["score"] == 3 for r in rows if not r["failure"])


def summary_inputs():
    """Agent "a", monologue task, items i0..i5, settings T0 and T1, two samples each: the agent wins on even
    items and loses on odd ones; it scores 4 against the baseline's 3 on every aspect, except a failed
    judgment."""
    comparisons, judgments = [], []
    for item in range(6):
        for setting in ("T0", "T1"):
            for sample in range(2):
                winner = "agent" if item % 2 == 0 else "baseline"
                comparisons.append(
                    {
                        "row_id": f"i{item}/{setting}/{sample}",
                        "agent": "a",
                        "item_id": f"i{item}",
                        "task": "monologue",
                        "setting": setting,
                        "sample": sample,
                        "outcome": winner,
                        "verdict_agent_first": winner,
                        "verdict_baseline_first": winner,
                    }
                )
                for system, score in (("agent", 4 + item % 2), ("baseline", 3)):
                    for aspect in ("fit", "style"):
                        failed = (item, setting, sample, system, aspect) == (5, "T1", 1, "baseline", "style")
                        judgments.append(
                            {
                                "agent": "a",
                                "item_id": f"i{item}",
                                "task": "monologue",
                                "system": system,
                                "setting": setting,
                                "sample": sample,
                                "aspect": aspect,
                                "score": None if failed else score,
                            }
                        )
    comparisons.append(
        {
            "row_id": "x0/T0/0",
            "agent": "a",
            "item_id": "x0",
            "task": "trait",
            "setting": "T0",
            "sample": 0,
            "outcome": TIE,
            "verdict_agent_first": TIE,
            "verdict_baseline_first": TIE,
        }
    )
    judgments += [
        {
            "agent": "a",
            "item_id": "x0",
            "task": "trait",
            "system": s,
            "setting": "T0",
            "sample": 0,
            "aspect": "alignment",
            "score": 3,
        }
        for s in ("agent", "baseline")
    ]
    return pl.DataFrame(judgments), pl.DataFrame(comparisons)


def test_the_summary_gives_every_number_its_n_and_interval():
    judgments, comparisons = summary_inputs()
    rows = summary_rows(judgments, comparisons)
    frame = result_frame(
        rows, SUMMARY_SCHEMA, Provenance("run", "v")
    )  # every column in the schema, of its type
    assert set(SUMMARY_SCHEMA) <= set(rows[0])
    by_scope = {(r["scope"], r["task"], r["setting"]): r for r in frame.iter_rows(named=True)}
    assert set(by_scope) == {
        ("agent x task x setting", "monologue", "T0"),
        ("agent x task x setting", "monologue", "T1"),
        ("agent x task x setting", "trait", "T0"),
        ("agent x task", "monologue", "all"),
        ("agent x task", "trait", "all"),
        ("task", "monologue", "all"),
        ("task", "trait", "all"),
    }
    monologue = by_scope[("agent x task", "monologue", "all")]
    assert (monologue["items"], monologue["pairs"], monologue["judged"], monologue["raw_verdicts"]) == (
        6,
        24,
        24,
        48,
    )
    assert monologue["consistent_rate"] == pytest.approx(0.5)
    assert monologue["consistent_low"] < 0.5 < monologue["consistent_high"]
    assert (monologue["agent_scores"], monologue["baseline_scores"], monologue["score_pairs"]) == (48, 47, 47)
    assert monologue["agent_mean_score"] == pytest.approx(4.5) and monologue["baseline_mean_score"] == 3.0
    assert monologue["score_difference"] == pytest.approx(
        (24 * 1 + 23 * 2) / 47
    )  # the failed judgment's pair is left out
    assert (
        monologue["score_difference_low"] < monologue["score_difference"] < monologue["score_difference_high"]
    )
    assert monologue["agent_score_low"] < 4.5 < monologue["agent_score_high"]
    assert monologue["baseline_score_low"] is None  # every baseline score is 3: no spread between items
    assert monologue["interval_method"] == interval_method("evaluation items")
    trait = by_scope[("task", "trait", "all")]  # one item, one tied pair
    assert (trait["items"], trait["pairs"], trait["ties"], trait["consistent_rate"]) == (1, 1, 1, 0.0)
    assert (
        trait["consistent_low"] is None
        and trait["raw_high"] is None
        and trait["score_difference_low"] is None
    )
    assert trait["score_difference"] == 0.0


def test_summary_intervals_are_reproducible_from_the_seed_they_name():
    judgments, comparisons = summary_inputs()
    first, again, other = (summary_rows(judgments, comparisons, seed) for seed in (0, 0, 1))
    assert first == again
    assert {r["interval_method"] for r in other} == {interval_method("evaluation items", 1)}


def test_the_summary_asset_reports_each_interval_beside_its_number(tmp_path):
    judgments, comparisons = summary_inputs()
    judgments = judgments.with_columns(failure=pl.lit(None, pl.String))
    comparisons = comparisons.with_columns(
        failure_agent_first=pl.lit(None, pl.String), failure_baseline_first=pl.lit(None, pl.String)
    )
    table, metadata = materialize_report(
        judging_summary(primary_experiment()),
        {
            ("primary", "judging", "judgments"): judgments,
            ("primary", "judging", "pairwise_comparisons"): comparisons,
        },
        tmp_path,
    )
    assert table.height == 7 and set(SUMMARY_SCHEMA) <= set(table.columns)
    assert metadata["interval_method"] == interval_method("evaluation items")
    rows = {
        (r.data["agent"], r.data["task"], r.data["setting"]): r.data for r in metadata["win_rates"].records
    }
    assert rows[("a", "monologue", "all")]["items"] == 6 and rows[("a", "monologue", "all")]["pairs"] == 24
    assert rows[("a", "trait", "all")]["consistent win %"] == "0 [no interval]"  # one tied item
    assert metadata["verdict"].endswith("tied") and "pairs decided" in metadata["verdict"]
    assert {"plot/score_violins", "plot/win_rates"} <= set(metadata)
