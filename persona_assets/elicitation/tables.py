"""The elicitation tables: claims read from the opinions tables for ICM and evaluation, and the rows of
labels, search traces and predictions (no Dagster here)."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from persona_platform.persona_assets.columns import columns
from persona_platform.persona_assets.elicitation.evaluation import (
    ChatAnswers,
    Condition,
    DemoClaim,
    TestClaim,
    condition_margins,
)
from persona_platform.persona_assets.elicitation.icm import IcmClaim
from persona_platform.persona_assets.elicitation.prompts import predicted_label
from persona_platform.persona_assets.provenance import row_ref
from persona_platform.resources.llm import Engine


def split_claims(
    splits: pl.DataFrame, claims: pl.DataFrame, country: str, variant: str, split: str
) -> pl.DataFrame:
    """One country's claims of one split, in split order, with their text."""
    return (
        splits.filter(
            (pl.col("country") == country) & (pl.col("variant") == variant) & (pl.col("split") == split)
        )
        .join(claims.select("row_id", "question", "option"), left_on="claim_id", right_on="row_id")
        .sort("position")
    )


def test_split_claims(splits: pl.DataFrame, claims: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Test rows of every variant with their text, and the distinct claims among them (a claim in
    both variants is scored once)."""
    test = splits.filter(pl.col("split") == "test").join(
        claims.select("row_id", "question", "option"), left_on="claim_id", right_on="row_id"
    )
    return test, test.unique("claim_id", keep="first").sort("claim_id")


def icm_claims(train: pl.DataFrame) -> list[IcmClaim]:
    return [
        IcmClaim(uid, r["question_id"], r["question"], r["option"], r["label"])
        for uid, r in enumerate(train.iter_rows(named=True))
    ]


def demo_pool(labels: pl.DataFrame) -> list[DemoClaim]:
    """ICM-labelled train claims (in split order) with both their gold and ICM labels."""
    labelled = labels.filter(pl.col("icm_label").is_not_null()).sort("position")
    return [
        DemoClaim(r["claim_id"], r["question"], r["option"], r["label"], r["icm_label"])
        for r in labelled.iter_rows(named=True)
    ]


def test_claims(test: pl.DataFrame) -> list[TestClaim]:
    return [
        TestClaim(r["claim_id"], r["question"], r["option"], r["label"]) for r in test.iter_rows(named=True)
    ]


_VARIANT = ("variant", pl.String, "claim variant: all (every question) or binary (two-option questions only)")
_COUNTRY = ("country", pl.String, "the country's partition key")
_CLAIM_ID = (
    "claim_id",
    pl.String,
    "the claim's row in opinions.goqa_claims: {question_id}/{country}/{option index}",
)
_LABEL = ("label", pl.Int64, "gold label: 1 when the option is the country's most chosen answer, else 0")
_CORRECT = ("correct", pl.Boolean, "whether predicted_label equals label")

LABEL_SCHEMA = columns(
    _VARIANT,
    _COUNTRY,
    ("position", pl.Int64, "0-based order of the claim in the country's train split of the variant"),
    _CLAIM_ID,
    ("question_id", pl.String, "the claim's question in opinions.goqa_questions"),
    ("question", pl.String, "the claim's question text"),
    ("option", pl.String, "the option the claim says is the country's most chosen answer"),
    (
        "icm_label",
        pl.Int64,
        "1 when ICM labelled the claim True, 0 False; null when the search never labelled it",
    ),
    _LABEL,
)
TRACE_SCHEMA = columns(
    _VARIANT,
    _COUNTRY,
    ("iteration", pl.Int64, "0-based annealing iteration of the search"),
    (
        "uid",
        pl.Int64,
        "the claim the iteration picked: its position in the search's train claims (icm_labels)",
    ),
    ("previous_label", pl.Int64, "the claim's label before the iteration: 1 True, 0 False, null unlabelled"),
    (
        "proposed_label",
        pl.Int64,
        "the model's label for the claim given the other labelled claims: 1 when its margin is above 0",
    ),
    (
        "temperature",
        pl.Float64,
        "annealing temperature: max(final, initial / (1 + c ln(1 + accepted so far)))",
    ),
    ("pool_order", pl.String, "leave-one-out prompt order: tree (prefix reuse, seeded leaf order) or naive"),
    (
        "energy_before",
        pl.Float64,
        "energy of the labelling before the iteration: alpha x mean signed margin - inconsistent pairs",
    ),
    (
        "delta",
        pl.Float64,
        "energy change of the proposal after its consistency repair; 0 when it proposed no change",
    ),
    (
        "accepted",
        pl.Boolean,
        "whether the proposal was taken (delta >= 0, else with probability exp(delta / temperature))",
    ),
    ("energy", pl.Float64, "energy of the labelling after the iteration"),
    ("inconsistent", pl.Int64, "inconsistent claim pairs of the labelling after the iteration"),
    ("labelled", pl.Int64, "claims labelled after the iteration"),
    (
        "gold_agreement",
        pl.Float64,
        "share of labelled claims whose label is the gold label, after the iteration; null with none",
    ),
)
ZERO_SHOT_SCHEMA = columns(
    _VARIANT,
    _COUNTRY,
    _CLAIM_ID,
    ("logprob_true", pl.Float64, 'log P(" True") after the zero-shot prompt, in nats'),
    ("logprob_false", pl.Float64, 'log P(" False") after the zero-shot prompt, in nats'),
    ("predicted_label", pl.Int64, "1 when logprob_true > logprob_false, else 0"),
    _LABEL,
    _CORRECT,
)
CHAT_SCHEMA = columns(
    _VARIANT,
    _COUNTRY,
    _CLAIM_ID,
    (
        "method",
        pl.String,
        "zero_shot_chat (a chat model of its own) or zero_shot_base_chat_template (the base model in a chat "
        "template)",
    ),
    (
        "repeat",
        pl.Int64,
        "0-based repeat of the question (an API may be asked several times, a local model once)",
    ),
    (
        "answered_by",
        pl.String,
        "local:{model id} (True scored against False after the template) or api:{model id} (a reply "
        "generated)",
    ),
    ("reply", pl.String, "the API's reply as generated, or True/False from local scoring"),
    ("predicted_label", pl.Int64, "1 for True, 0 for False; null when the reply did not parse"),
    _LABEL,
    ("correct", pl.Boolean, "whether predicted_label equals label; null when the reply did not parse"),
    ("parse_failed", pl.Boolean, "true when the reply was not exactly True or False"),
)
FEW_SHOT_SCHEMA = columns(
    _VARIANT,
    _COUNTRY,
    (
        "method",
        pl.String,
        "labels of the demonstrations: gold, icm, or random_matched (gold, with as many flipped at random "
        "as ICM got wrong in the subset)",
    ),
    (
        "k",
        pl.Int64,
        "demonstrations: ICM-labelled train claims drawn as whole questions; the largest k is all of them",
    ),
    ("repeat", pl.Int64, "0-based seeded draw of the demonstrations (subset and order) for this k"),
    _CLAIM_ID,
    ("margin", pl.Float64, 'log P(" True") - log P(" False") for the test claim after the demonstrations'),
    ("predicted_label", pl.Int64, "1 when margin > 0, else 0"),
    _LABEL,
    _CORRECT,
)
SPLITS, CLAIMS, LABELS = "opinions.goqa_splits", "opinions.goqa_claims", "elicitation.icm_labels"


def label_rows(train: pl.DataFrame, labels: Sequence[int | None], variant: str, country: str) -> list[dict]:
    """The ICM label (None: never labelled) of each train claim, beside its gold label."""
    return [
        {
            "row_id": f"{variant}/{r['claim_id']}",
            "variant": variant,
            "country": country,
            "position": r["position"],
            "claim_id": r["claim_id"],
            "question_id": r["question_id"],
            "question": r["question"],
            "option": r["option"],
            "icm_label": label,
            "label": r["label"],
            "input_ids": [row_ref(SPLITS, r["row_id"])],
        }
        for r, label in zip(train.iter_rows(named=True), labels, strict=True)
    ]


def trace_rows(trace: Sequence[dict], claim_ids: Sequence[str], variant: str, country: str) -> list[dict]:
    """One row per ICM iteration, pointing at the label it proposed to change."""
    return [
        {
            "row_id": f"{variant}/{country}/{t['iteration']}",
            "variant": variant,
            "country": country,
            **t,
            "input_ids": [row_ref(LABELS, f"{variant}/{claim_ids[t['uid']]}")],
        }
        for t in trace
    ]


def _test_rows(test: pl.DataFrame) -> list[dict]:
    return test.sort("variant", "country", "position").to_dicts()


def _test_refs(r: dict) -> list[str]:
    return [row_ref(SPLITS, r["row_id"]), row_ref(CLAIMS, r["claim_id"])]


def zero_shot_rows(test: pl.DataFrame, scores_by_claim: dict[str, Sequence[float]]) -> list[dict]:
    """A row per (variant, test claim): log P(" True") and log P(" False"), the label they predict."""
    rows = []
    for r in _test_rows(test):
        lp_true, lp_false = scores_by_claim[r["claim_id"]]
        predicted = predicted_label(lp_true, lp_false)
        rows.append(
            {
                "row_id": f"{r['variant']}/{r['claim_id']}",
                "variant": r["variant"],
                "country": r["country"],
                "claim_id": r["claim_id"],
                "logprob_true": lp_true,
                "logprob_false": lp_false,
                "predicted_label": predicted,
                "label": r["label"],
                "correct": predicted == r["label"],
                "input_ids": _test_refs(r),
            }
        )
    return rows


def zero_shot_accuracy_table(frame: pl.DataFrame) -> tuple[list[str], list[list]]:
    """Header and rows of the zero-shot accuracy per country and variant."""
    accuracy = (
        frame.group_by("country", "variant")
        .agg(pl.len(), pl.col("correct").mean())
        .sort("country", "variant")
    )
    header = ["country", "variant", "test claims", "accuracy"]
    return header, [[c, v, n, round(a, 3)] for c, v, n, a in accuracy.iter_rows()]


def chat_rows(
    test: pl.DataFrame,
    claim_ids: list[str],
    replies: list[list[str]],
    predictions: list[list[int | None]],
    method: str,
    answered_by: str,
) -> list[dict]:
    """One row per (repeat, variant, test claim); replies and predictions are per repeat,
    in claim_ids order."""
    rows = []
    for repeat, (repeat_replies, repeat_predictions) in enumerate(zip(replies, predictions, strict=True)):
        by_claim = dict(zip(claim_ids, zip(repeat_replies, repeat_predictions, strict=True), strict=True))
        for r in _test_rows(test):
            reply, predicted = by_claim[r["claim_id"]]
            rows.append(
                {
                    "row_id": f"{r['variant']}/r{repeat}/{r['claim_id']}",
                    "variant": r["variant"],
                    "country": r["country"],
                    "claim_id": r["claim_id"],
                    "method": method,
                    "repeat": repeat,
                    "answered_by": answered_by,
                    "reply": reply,
                    "predicted_label": predicted,
                    "label": r["label"],
                    "correct": None if predicted is None else predicted == r["label"],
                    "parse_failed": predicted is None,
                    "input_ids": _test_refs(r),
                }
            )
    return rows


def search_table(searches: dict[str, dict]) -> tuple[list[str], list[list]]:
    """Header and rows of one country's ICM searches, a row per variant (``searches[variant]`` is the
    search's summary)."""
    header = ["variant", *next(iter(searches.values()), {})]
    return header, [[variant, *summary.values()] for variant, summary in searches.items()]


def chat_metadata(frame: pl.DataFrame, method: str, answers: ChatAnswers) -> dict:
    """The chat baseline's metadata: its method, who answered, its repeats, and how many replies failed
    to parse."""
    return {
        "method": method,
        "answered_by": answers.answered_by,
        "repeats": len(answers.replies),
        "parse_failures": int(frame["parse_failed"].sum()),
    }


def few_shot_rows(
    engine: Engine, country: str, variant: str, tests: Sequence[TestClaim], conditions: Sequence[Condition]
) -> list[dict]:
    """Every test claim's margin under every demonstration condition (method, k, repeat) of one country
    and variant."""
    rows = []
    for condition in conditions:
        condition_id = f"{variant}/{condition.method}/k{condition.k}/r{condition.repeat}"
        demo_refs = [row_ref(LABELS, f"{variant}/{d}") for d in condition.demo_ids]
        for test, margin in zip(tests, condition_margins(engine, country, condition, tests), strict=True):
            predicted = int(margin > 0)
            rows.append(
                {
                    "row_id": f"{condition_id}/{test.claim_id}",
                    "variant": variant,
                    "country": country,
                    "method": condition.method,
                    "k": condition.k,
                    "repeat": condition.repeat,
                    "claim_id": test.claim_id,
                    "margin": margin,
                    "predicted_label": predicted,
                    "label": test.label,
                    "correct": predicted == test.label,
                    "input_ids": [row_ref(SPLITS, f"{variant}/{test.claim_id}"), *demo_refs],
                }
            )
    return rows


def few_shot_accuracy_table(frame: pl.DataFrame) -> tuple[list[str], list[list]]:
    """Header and rows of the mean few-shot accuracy per country, variant, method and k."""
    accuracy = (
        frame.group_by("country", "variant", "method", "k")
        .agg(pl.col("correct").mean().alias("accuracy"))
        .sort("country", "variant", "k", "method")
    )
    header = ["country", "variant", "method", "k", "mean accuracy"]
    return header, [[c, v, m, k, round(a, 3)] for c, v, m, k, a in accuracy.iter_rows()]
