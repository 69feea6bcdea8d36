"""The fine-tuning tables: datasets from labels, country adapters, their test predictions, their answers to
the survey and the country x country alignment (no Dagster here)."""

from collections.abc import Sequence

import numpy as np
import polars as pl
from scipy import stats

from persona_platform.persona_assets.alignment.similarity import normalize, similarity
from persona_platform.persona_assets.columns import columns
from persona_platform.persona_assets.common import results_table
from persona_platform.persona_assets.elicitation.prompts import CANDIDATES, predicted_label, zero_shot_prompt
from persona_platform.persona_assets.finetune.examples import METHOD_OF_SOURCE
from persona_platform.persona_assets.provenance import row_ref
from persona_platform.resources.llm import ScoreRequest
from persona_platform.resources.training import LoraTraining, TrainingOutcome

DATASETS = "finetune.sft_examples", "finetune.preference_pairs"
ADAPTERS = "finetune.country_adapters"
OPINIONS = "finetune.persona_opinions"
SPLITS, CLAIMS, SURVEY = "opinions.goqa_splits", "opinions.goqa_claims", "opinions.goqa_survey"

_COUNTRY = ("country", pl.String, "the country's partition key: whose claims, labels and adapter")
_VARIANT = ("variant", pl.String, "claim variant: all (every question) or binary (two-option questions only)")
_LABELS = (
    "labels",
    pl.String,
    "the label source: icm (the ICM search's labels), gold, or random (gold with as many labels flipped, "
    "at random, as ICM got wrong)",
)
_QUESTION = ("question_id", pl.String, "the question in opinions.goqa_questions")
SFT_SCHEMA = columns(
    _COUNTRY,
    _VARIANT,
    _LABELS,
    ("claim_id", pl.String, "the claim's row in opinions.goqa_claims"),
    _QUESTION,
    ("prompt", pl.String, "the zero-shot claim prompt (what the evaluation scores)"),
    ("completion", pl.String, "' True' or ' False' under the label source: the tokens the loss counts"),
    ("label", pl.Int64, "the label the completion states: 1 True, 0 False"),
    ("gold", pl.Int64, "the gold label: 1 when the option is the country's most chosen answer"),
)
PREFERENCE_SCHEMA = columns(
    _COUNTRY,
    _VARIANT,
    _LABELS,
    _QUESTION,
    ("chosen_claim_id", pl.String, "the claim the source labels True"),
    ("rejected_claim_id", pl.String, "its sibling (same question) the source labels False"),
    ("prompt", pl.String, "the zero-shot claim prompt up to the option"),
    ("chosen", pl.String, "the chosen claim's option and the rest of its prompt, then ' True'"),
    ("rejected", pl.String, "the same for the rejected claim"),
    ("chosen_is_gold", pl.Boolean, "whether gold agrees: the chosen claim is True and the rejected False"),
)
ADAPTER_SCHEMA = columns(
    _COUNTRY,
    _VARIANT,
    _LABELS,
    ("objective", pl.String, "sft (cross-entropy on the completion) or dpo (TRL's DPO on preference pairs)"),
    ("adapter_path", pl.String, "directory of the saved PEFT adapter (adapter_model.safetensors and config)"),
    ("sha256", pl.String, "sha256 over the adapter directory's files (their relative paths and contents)"),
    ("rank", pl.Int64, "LoRA rank r"),
    ("alpha", pl.Int64, "LoRA alpha (scaling alpha / r)"),
    ("examples", pl.Int64, "training examples (SFT) or preference pairs (DPO)"),
    ("steps", pl.Int64, "optimizer steps trained in all (a resumed training counts the steps before it)"),
    ("tokens_trained", pl.Int64, "tokens the loss counted, over every step (SFT; null for DPO)"),
    ("seconds", pl.Float64, "wall-clock seconds of this run's training loop (after a resume, since it)"),
    ("tokens_per_second", pl.Float64, "tokens_trained / seconds; null when either is missing or 0"),
    ("resumed_from_step", pl.Int64, "the checkpoint's step this run resumed from; null for a fresh training"),
    ("final_loss", pl.Float64, "the loss of the last step; null when no step ran"),
)
LOSS_SCHEMA = columns(
    _COUNTRY,
    _VARIANT,
    _LABELS,
    ("step", pl.Int64, "1-based optimizer step"),
    ("loss", pl.Float64, "SFT: mean cross-entropy over the batch's completion tokens; DPO: the DPO loss"),
)
PREDICTION_SCHEMA = columns(
    _COUNTRY,
    _VARIANT,
    ("method", pl.String, "finetune_icm, finetune_gold or finetune_random: the adapter's label source"),
    ("claim_id", pl.String, "the test claim's row in opinions.goqa_claims"),
    ("repeat", pl.Int64, "always 0: an adapter scores each claim once, exactly"),
    ("logprob_true", pl.Float64, "log P(' True') after the zero-shot prompt, with the adapter"),
    ("logprob_false", pl.Float64, "log P(' False') after the same prompt"),
    ("predicted_label", pl.Int64, "1 when ' True' is the likelier, else 0"),
    ("label", pl.Int64, "gold label: 1 when the option is the country's most chosen answer, else 0"),
    ("correct", pl.Boolean, "whether predicted_label equals label"),
)
OPINION_SCHEMA = columns(
    ("country", pl.String, "the country whose adapter answers, as that country (the partition key)"),
    _VARIANT,
    _LABELS,
    _QUESTION,
    (
        "model_distribution",
        pl.List(pl.Float64),
        "per option, in option order: P(True) of the option's claim for the persona's country (True against "
        "False), normalised over the options",
    ),
)
ALIGNMENT_SCHEMA = columns(
    ("persona_country", pl.String, "the country whose adapter answered"),
    _VARIANT,
    _LABELS,
    ("country", pl.String, "the country whose survey answer distributions it is compared with"),
    ("questions", pl.Int64, "questions both answered: the mean's n"),
    ("similarity", pl.Float64, "mean over those questions of 1 - Jensen-Shannon distance (base 2)"),
)


def adapter_name(country: str, variant: str, labels: str) -> str:
    """The name an engine serves a country adapter under (one per country, variant and label source)."""
    return f"country:{country}/{variant}/{labels}"


def adapter_row(
    country: str,
    variant: str,
    labels: str,
    objective: str,
    outcome: TrainingOutcome,
    settings: LoraTraining,
    example_ids: Sequence[str],
    examples_table: str,
) -> dict:
    tokens = outcome.tokens_trained or None
    return {
        "row_id": f"{country}/{variant}/{labels}",
        "country": country,
        "variant": variant,
        "labels": labels,
        "objective": objective,
        "adapter": adapter_name(country, variant, labels),
        "adapter_path": str(outcome.adapter_dir),
        "sha256": outcome.fingerprint,
        "rank": settings.rank,
        "alpha": settings.alpha,
        "examples": len(example_ids),
        "steps": outcome.steps,
        "tokens_trained": tokens,
        "seconds": outcome.seconds,
        "tokens_per_second": tokens / outcome.seconds if tokens and outcome.seconds else None,
        "resumed_from_step": outcome.resumed_from_step,
        "final_loss": outcome.losses[-1]["loss"] if outcome.losses else None,
        "input_ids": [row_ref(examples_table, i) for i in example_ids],
    }


def loss_rows(country: str, variant: str, labels: str, outcome: TrainingOutcome) -> list[dict]:
    return [
        {
            "row_id": f"{country}/{variant}/{labels}/{p['step']}",
            "country": country,
            "variant": variant,
            "labels": labels,
            "step": p["step"],
            "loss": p["loss"],
            "input_ids": [row_ref(ADAPTERS, f"{country}/{variant}/{labels}")],
        }
        for p in outcome.losses
    ]


def prediction_rows(engine, adapters: pl.DataFrame, test: pl.DataFrame) -> list[dict]:
    """Each adapter scores its country's test claims of its variant zero-shot, as the zero-shot base baseline
    does, with the adapter active."""
    rows, requests = [], []
    for adapter in adapters.sort("row_id").iter_rows(named=True):
        claims = test.filter(
            (pl.col("country") == adapter["country"]) & (pl.col("variant") == adapter["variant"])
        ).sort("position")
        for r in claims.iter_rows(named=True):
            prompt = zero_shot_prompt(r["question"], r["option"], r["country"])
            requests.append(ScoreRequest(prompt, CANDIDATES, adapter=adapter["adapter"]))
            rows.append(
                {
                    "row_id": f"{r['variant']}/{adapter['labels']}/{r['claim_id']}",
                    "country": r["country"],
                    "variant": r["variant"],
                    "method": METHOD_OF_SOURCE[adapter["labels"]],
                    "claim_id": r["claim_id"],
                    "repeat": 0,
                    "label": r["label"],
                    "adapter": adapter["adapter"],
                    "input_ids": [
                        row_ref(SPLITS, r["row_id"]),
                        row_ref(CLAIMS, r["claim_id"]),
                        row_ref(ADAPTERS, adapter["row_id"]),
                    ],
                }
            )
    for row, (lp_true, lp_false) in zip(rows, engine.score(requests), strict=True):
        predicted = predicted_label(lp_true, lp_false)
        row.update(
            logprob_true=lp_true,
            logprob_false=lp_false,
            predicted_label=predicted,
            correct=predicted == row["label"],
        )
    return rows


def survey_questions(survey: pl.DataFrame) -> pl.DataFrame:
    """Each question of the survey once, with its options (the same in every country's row)."""
    return (
        survey.unique("question_id", keep="first")
        .sort("question_id")
        .select("question_id", "question", "options")
    )


def opinion_rows(engine, adapters: pl.DataFrame, questions: pl.DataFrame) -> list[dict]:
    """Each adapter answers every survey question as its country: per option, the True-vs-False probability
    of the option's claim; the distribution over options is those normalised."""
    requests, keys = [], []
    for adapter in adapters.sort("row_id").iter_rows(named=True):
        for q in questions.iter_rows(named=True):
            for option in q["options"]:
                prompt = zero_shot_prompt(q["question"], option, adapter["country"])
                requests.append(ScoreRequest(prompt, CANDIDATES, adapter=adapter["adapter"]))
                keys.append((adapter["row_id"], q["question_id"]))
    p_true: dict[tuple[str, str], list[float]] = {}
    for key, (lp_true, lp_false) in zip(keys, engine.score(requests), strict=True):
        p_true.setdefault(key, []).append(1.0 / (1.0 + float(np.exp(lp_false - lp_true))))
    rows = []
    for adapter in adapters.sort("row_id").iter_rows(named=True):
        for q in questions.iter_rows(named=True):
            rows.append(
                {
                    "row_id": f"{adapter['row_id']}/{q['question_id']}",
                    "country": adapter["country"],
                    "variant": adapter["variant"],
                    "labels": adapter["labels"],
                    "question_id": q["question_id"],
                    "model_distribution": normalize(p_true[(adapter["row_id"], q["question_id"])]),
                    "adapter": adapter["adapter"],
                    "input_ids": [row_ref(ADAPTERS, adapter["row_id"])],
                }
            )
    return rows


def alignment_rows(opinions: pl.DataFrame, survey: pl.DataFrame) -> list[dict]:
    """Mean similarity of each persona's answers to each country's, over the questions the country was asked
    (with answer shares that sum above 0), one row per (persona country, variant, labels, country)."""
    asked = survey.filter(pl.col("distribution").list.sum().fill_null(0) > 0).select(
        "row_id", "question_id", "country", "distribution"
    )
    joined = opinions.select(
        pl.col("row_id").alias("opinion_row"),
        pl.col("country").alias("persona_country"),
        "variant",
        "labels",
        "question_id",
        "model_distribution",
    ).join(asked, on="question_id")
    cells: dict[tuple, list] = {}
    for r in joined.iter_rows(named=True):
        key = (r["persona_country"], r["variant"], r["labels"], r["country"])
        value = similarity(r["model_distribution"], normalize(r["distribution"]))
        cells.setdefault(key, []).append((value, r["opinion_row"], r["row_id"]))
    rows = []
    for (persona, variant, labels, country), values in sorted(cells.items()):
        rows.append(
            {
                "row_id": f"{persona}/{variant}/{labels}/{country}",
                "persona_country": persona,
                "variant": variant,
                "labels": labels,
                "country": country,
                "questions": len(values),
                "similarity": float(np.mean([v for v, _, _ in values])),
                "input_ids": [row_ref(OPINIONS, o) for _, o, _ in values]
                + [row_ref(SURVEY, s) for _, _, s in values],
            }
        )
    return rows


def diagonal_test(matrix: np.ndarray, seed: int = 0) -> dict:
    """Does each persona stand closest to its own country? The mean of the diagonal (persona i against country
    i) against every other pairing of personas with countries: scipy's permutation test over pairings (exact
    up to 9 countries), one-sided."""
    n = matrix.shape[0]
    off = matrix[~np.eye(n, dtype=bool)]
    if n < 2:
        return {"countries": n, "diagonal": None, "off_diagonal": None, "p_value": None, "own_first": None}

    def statistic(order):
        return np.nanmean(matrix[order, np.arange(n)])

    test = stats.permutation_test(
        (np.arange(n),),
        statistic,
        permutation_type="pairings",
        alternative="greater",
        n_resamples=9999,
        rng=np.random.default_rng(seed),
    )
    own_first = sum(
        int(np.nanargmax(matrix[:, j]) == j) for j in range(n) if not np.isnan(matrix[:, j]).all()
    )
    return {
        "countries": n,
        "diagonal": float(np.nanmean(np.diag(matrix))),
        "off_diagonal": float(np.nanmean(off)),
        "p_value": float(test.pvalue),
        "own_first": own_first,
    }


def alignment_matrix(part: pl.DataFrame) -> tuple[list[str], np.ndarray]:
    """The countries both as personas and as survey columns, and similarity[persona][country] (NaN where a
    persona and a country share no question)."""
    countries = sorted(set(part["persona_country"]) & set(part["country"]))
    cell = {(r["persona_country"], r["country"]): r["similarity"] for r in part.iter_rows(named=True)}
    matrix = np.array([[cell.get((p, c), np.nan) for c in countries] for p in countries], dtype=float)
    return countries, matrix


def diagonal_tests(alignment: pl.DataFrame) -> list[dict]:
    """``diagonal_test`` of each (variant, label source) matrix of the country_alignment rows."""
    groups = sorted(alignment.group_by("variant", "labels"), key=lambda group: group[0])
    return [
        {"variant": variant, "labels": labels, **diagonal_test(alignment_matrix(part)[1])}
        for (variant, labels), part in groups
    ]


def diagonal_table(tests: list[dict]):
    header = ["variant", "labels", "countries", "diagonal", "off_diagonal", "p_value", "own_first"]
    return results_table(header, [[t[h] for h in header] for t in tests])
