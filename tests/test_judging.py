"""Judging logic: references are required, both orders are judged, failures are counted, win rates."""

import json
import re

import pytest

from persona_assets.judging.judge import compare_pairs, score_responses
from persona_assets.judging.outcomes import AGENT_FIRST, BASELINE_FIRST, FAILED, INCONSISTENT, TIE, combine, win_rates, winner_of
from persona_assets.judging.rubrics import ASPECTS, Item, MissingReferenceError, absolute_messages, pairwise_messages
from resources.llm.engine import Engine

ITEM = Item("monologue/a/m/1", "monologue", None, "Interviewer: Why the pilot?", "I always start from the data.", "the monologue")


def test_a_reference_based_judgment_without_its_reference_is_refused():
    empty = Item("monologue/a/m/2", "monologue", None, "Interviewer: Why?", "  ", "the monologue")
    for aspect in ASPECTS["monologue"]:
        with pytest.raises(MissingReferenceError, match="monologue/a/m/2.*reference"):
            absolute_messages(aspect, empty, "an answer")
    with pytest.raises(MissingReferenceError):
        pairwise_messages(empty, "one", "two")
    plausibility = next(a for a in ASPECTS["completion"] if a.name == "plausibility")
    completion = Item("completion/a/m/3", "completion", None, "Okafor: next item", None, "what the agent said next")
    assert "Reference" not in absolute_messages(plausibility, completion, "an answer")[1][1]  # judged without one


def test_the_reference_is_in_the_prompt_of_every_reference_based_aspect():
    for aspect in ASPECTS["monologue"]:
        assert "I always start from the data." in absolute_messages(aspect, ITEM, "x")[1][1]
    trait = Item("trait/belief/a/m/1#0", "trait", "belief", "Interviewer: q?", "Believes in pilots.", "trait summary")
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
    verdicts = ["agent"] * 13 + ["baseline"] * 5 + [TIE, TIE, None, None]
    rates = win_rates(outcomes, verdicts)
    assert (rates.pairs, rates.judged, rates.agent_wins, rates.baseline_wins, rates.ties, rates.inconsistent, rates.failed) == (
        11, 10, 6, 2, 1, 1, 1)
    assert rates.consistent_rate == pytest.approx(0.6) and rates.consistent_low < 0.6 < rates.consistent_high
    assert rates.raw_agent_wins == 13 and rates.raw_verdicts == 20 and rates.raw_rate == pytest.approx(0.65)


class ScriptedJudge(Engine):
    """A judge whose preferences a test sets: the remote-model stand-in for behaviour the tiny model cannot show."""

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
        for system, text in (("agent", f"data first, sample {sample}"), ("baseline", f"generic words, sample {sample}")):
            rows.append({"row_id": f"{ITEM.item_id}/{system}/T1/{sample}", "agent": "a", "item_id": ITEM.item_id,
                         "task": "monologue", "system": system, "setting": "T1", "sample": sample, "response": text})
    return rows


def first_response(user):
    return re.search(r'Response A:\n"""\n(.*?)\n"""', user, re.S).group(1)


def test_both_orders_are_judged_and_a_position_biased_judge_is_inconsistent():
    judge = ScriptedJudge(lambda user, r: json.dumps({"justification": "A reads better.", "winner": "A"}))
    rows = compare_pairs(judge, {ITEM.item_id: ITEM}, responses(), 80)
    assert len(rows) == 2 and len(judge.prompts) == 4
    firsts = [first_response(p) for p in judge.prompts]
    assert firsts == ["data first, sample 0", "generic words, sample 0", "data first, sample 1", "generic words, sample 1"]
    assert all(p.count("I always start from the data.") == 1 for p in judge.prompts)  # the reference, every time
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
    assert win_rates([r["outcome"] for r in rows], []).failed == 1


def test_scores_are_stored_per_aspect_and_failures_have_no_score():
    def decide(user, request):
        assert json.loads(request.json_schema)["properties"]["score"]["maximum"] == 5  # constrained where possible
        return "Score: 4" if "sample 1" in user else json.dumps({"explanation": "close", "score": 3})

    rows = score_responses(ScriptedJudge(decide), {ITEM.item_id: ITEM}, responses(), 80)
    assert len(rows) == 4 * len(ASPECTS["monologue"])
    assert {r["aspect"] for r in rows} == {"fit", "style"}
    failed = [r for r in rows if r["failure"]]
    assert len(failed) == 4 and all(r["score"] is None and r["reply"] == "Score: 4" for r in failed)
    assert all(r["score"] == 3 for r in rows if not r["failure"])
