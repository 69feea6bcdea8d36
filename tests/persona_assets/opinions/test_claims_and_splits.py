from collections import Counter, defaultdict

import pytest

from persona_platform.persona_assets.opinions.claims import (
    NO_ANSWERS,
    NO_DISTRIBUTION,
    TIED,
    TOO_FEW_OPTIONS,
    SurveyAnswer,
    build_claims,
    unusable_reason,
)
from persona_platform.persona_assets.opinions.splits import SplitRules, split_country
from persona_platform.resources.inputs.survey import question_id, read_survey
from persona_platform.resources.settings import SAMPLE_GOQA_SOURCE


def answers_of(source):
    return [
        SurveyAnswer(question_id(r.question, r.options), r.country, r.options, r.distribution)
        for r in source.records
    ]


def question_order(source):
    order = {}
    for r in source.records:
        order.setdefault(question_id(r.question, r.options), len(r.options))
    return list(order.items())


@pytest.fixture(scope="module")
def sample():
    return read_survey(SAMPLE_GOQA_SOURCE)


@pytest.fixture(scope="module")
def sample_claims(sample):
    claims, excluded = build_claims(answers_of(sample), seed=42)
    assert excluded == []
    return claims


def test_a_row_makes_a_claim_only_with_a_unique_largest_share():
    assert unusable_reason(3, (0.4, 0.4, 0.2)) == TIED
    assert unusable_reason(3, (0.1, 0.45, 0.45)) == TIED
    assert unusable_reason(2, (0.0, 0.0)) == NO_ANSWERS
    assert unusable_reason(3, None) == NO_DISTRIBUTION
    assert unusable_reason(1, (1.0,)) == TOO_FEW_OPTIONS
    assert unusable_reason(3, (0.45, 0.45, 0.1000001)) == TIED  # a tie, whatever the other shares sum to
    assert unusable_reason(2, (0.5000001, 0.4999999)) is None
    assert unusable_reason(3, (0.2, 0.5, 0.31)) is None  # sums off 1 through rounding are normalised


def test_shares_off_one_are_normalised_and_ties_left_out():
    answers = [
        SurveyAnswer("q1", "X", ("a", "b", "c"), (0.2, 0.5, 0.31)),
        SurveyAnswer("q2", "X", ("a", "b"), (0.5, 0.5)),
        SurveyAnswer("q3", "X", ("a", "b"), (0.0, 0.0)),
    ]
    claims, excluded = build_claims(answers, seed=1)
    positive = next(c for c in claims if c.label == 1)
    assert (positive.question_id, positive.option_index) == ("q1", 1)
    assert positive.probability == pytest.approx(0.5 / 1.01)
    assert {c.question_id for c in claims} == {"q1"}
    assert excluded == [("q2", "X", TIED), ("q3", "X", NO_ANSWERS)]


def test_one_positive_and_one_negative_per_group(sample_claims):
    groups = defaultdict(list)
    for c in sample_claims:
        groups[(c.question_id, c.country)].append(c)
    assert len(groups) == 32 * 4
    for group in groups.values():
        assert sorted(c.label for c in group) == [0, 1]
        positive = next(c for c in group if c.label == 1)
        assert positive.probability == max(c.probability for c in group)


def test_positive_is_the_argmax_of_the_distribution(sample):
    claims, _ = build_claims(answers_of(sample), seed=42)
    by_group = {(c.question_id, c.country): c for c in claims if c.label == 1}
    for r in sample.records:
        best = max(range(len(r.distribution)), key=lambda i: (r.distribution[i], -i))
        assert by_group[(question_id(r.question, r.options), r.country)].option_index == best


def test_claims_are_balanced(sample_claims):
    assert Counter(c.label for c in sample_claims) == {0: len(sample_claims) // 2, 1: len(sample_claims) // 2}


def test_negative_choice_is_seeded_and_independent_of_other_countries(sample):
    answers = answers_of(sample)
    full, _ = build_claims(answers, seed=42)
    alone, _ = build_claims([a for a in answers if a.country == "Caldera"], seed=42)
    assert [c for c in full if c.country == "Caldera"] == alone
    other, _ = build_claims(answers, seed=43)
    assert {c.claim_id for c in other} != {c.claim_id for c in full}


def test_groups_without_distribution_are_excluded_and_reported():
    answers = [
        SurveyAnswer("q1", "X", ("a", "b", "c"), None),
        SurveyAnswer("q2", "X", ("a", "b"), (0.3, 0.7)),
    ]
    claims, excluded = build_claims(answers, seed=1)
    assert [c.question_id for c in claims] == ["q2", "q2"]
    assert [(q, c) for q, c, _ in excluded] == [("q1", "X")]


def split_of(claims, questions, country, variant, rules):
    return split_country([c for c in claims if c.country == country], questions, variant, rules)


def questions_by_split(rows):
    out = defaultdict(list)
    for r in rows:
        if not out[r.split] or out[r.split][-1] != r.claim.question_id:
            out[r.split].append(r.claim.question_id)
    return dict(out)


@pytest.mark.parametrize("variant", ["all", "binary"])
def test_every_country_gets_the_same_questions(sample, sample_claims, variant):
    questions = question_order(sample)
    rules = SplitRules()
    reference = questions_by_split(split_of(sample_claims, questions, "Aldoria", variant, rules))
    for country in sample.countries[1:]:
        assert questions_by_split(split_of(sample_claims, questions, country, variant, rules)) == reference


def test_no_question_in_both_train_and_test(sample, sample_claims):
    for country in sample.countries:
        by_split = questions_by_split(
            split_of(sample_claims, question_order(sample), country, "all", SplitRules())
        )
        assert not set(by_split["train"]) & set(by_split["test"])


def test_same_seed_same_split_other_seed_other_split(sample, sample_claims):
    questions = question_order(sample)
    first = split_of(sample_claims, questions, "Borvania", "all", SplitRules(seed=7))
    again = split_of(sample_claims, questions, "Borvania", "all", SplitRules(seed=7))
    other = split_of(sample_claims, questions, "Borvania", "all", SplitRules(seed=8))
    assert first == again
    assert [r.claim.claim_id for r in first] != [r.claim.claim_id for r in other]


def test_splits_are_balanced_whole_groups_within_caps(sample, sample_claims):
    rows = split_of(
        sample_claims, question_order(sample), "Dunmere", "all", SplitRules(train_cap=13, test_cap=6)
    )
    for split, cap in (("train", 13), ("test", 6)):
        part = [r for r in rows if r.split == split]
        assert len(part) <= cap and len(part) % 2 == 0
        assert Counter(r.claim.label for r in part)[1] == len(part) // 2
        assert [r.position for r in part] == list(range(len(part)))


def test_binary_variant_keeps_two_option_questions_only(sample, sample_claims):
    rows = split_of(sample_claims, question_order(sample), "Aldoria", "binary", SplitRules())
    assert rows and all(r.claim.n_options == 2 for r in rows)


def test_sample_split_sizes(sample, sample_claims):
    sizes = Counter(
        (r.variant, r.split)
        for r in split_of(sample_claims, question_order(sample), "Aldoria", "all", SplitRules())
    ) + Counter(
        (r.variant, r.split)
        for r in split_of(sample_claims, question_order(sample), "Aldoria", "binary", SplitRules())
    )
    # 32 questions (14 with two options); 75% of questions may go to train.
    assert sizes == {
        ("all", "train"): 48,
        ("all", "test"): 16,
        ("binary", "train"): 20,
        ("binary", "test"): 8,
    }


def test_real_data_split_sizes_and_shared_questions(real_wide_csv):
    source = read_survey(real_wide_csv)
    claims, excluded = build_claims(answers_of(source), seed=42)
    # The wide file determines distributions only for its 57 two-option questions.
    assert len({c.question_id for c in claims}) == 57
    # A mean position of exactly 0.5 on a two-option question is a tie: 6 cells of 4 countries.
    tied = Counter(country for _, country, reason in excluded if reason == TIED)
    assert tied == {"Brazil": 1, "India": 1, "Pakistan": 1, "United States": 3}
    assert len(excluded) == (180 - 57) * 14 + 6
    questions = question_order(source)
    reference = None
    for country in source.countries:
        rows = split_of(claims, questions, country, "binary", SplitRules())
        # 57 questions: 42 may go to train (84 claims), the other 15 to test (30 claims, under the cap of 50).
        assert len(rows) == 2 * (57 - tied[country])
        if not tied[country]:
            assert Counter(r.split for r in rows) == {"train": 84, "test": 30}
            by_split = questions_by_split(rows)
            reference = reference or by_split
            assert by_split == reference
