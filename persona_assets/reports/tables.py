"""The elicitation report tables: accuracy per method, country and variant, and paired differences between
methods on the same questions (no Dagster here)."""

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from persona_platform.persona_assets.columns import columns
from persona_platform.persona_assets.elicitation.accuracy import (
    Difference,
    Estimate,
    QuestionScores,
    accuracy,
    difference,
    question_scores,
    repeat_std,
    weighted_accuracy,
    weighted_difference,
)
from persona_platform.persona_assets.provenance import row_ref

AGGREGATE = "aggregate"
BAR_METHODS = (
    "zero_shot_base",
    "zero_shot_base_chat_template",
    "zero_shot_chat",
    "icm",
    "gold",
    "finetune_icm",
    "finetune_gold",
    "finetune_random",
)
CURVE_METHODS = ("gold", "icm", "random_matched")

_SCOPE = (
    "scope",
    pl.String,
    "a country (its partition key), or aggregate: over countries, weighted by test claims",
)
_VARIANT = ("variant", pl.String, "claim variant: all (every question) or binary (two-option questions only)")
_N_QUESTIONS = ("n_questions", pl.Int64, "test questions scored (the bootstrap's unit; aggregate: summed)")
_INTERVAL = (
    "interval",
    pl.String,
    "how the interval was computed: cluster bootstrap over questions (stratified by country in aggregate)",
)


def _bounds(of: str) -> list[tuple]:
    """The two bound columns of a 95% percentile cluster-bootstrap interval over test questions."""
    return [
        (
            f"ci_{side}",
            pl.Float64,
            f"{bound} bound of the 95% bootstrap interval of {of}; null under 2 questions",
        )
        for side, bound in (("low", "lower"), ("high", "upper"))
    ]


SUMMARY_SCHEMA = columns(
    _SCOPE,
    _VARIANT,
    (
        "method",
        pl.String,
        "zero_shot_base, zero_shot_chat, zero_shot_base_chat_template, a few-shot method (gold, icm, "
        "random_matched), or a fine-tuned country adapter zero-shot (finetune_icm, finetune_gold, "
        "finetune_random)",
    ),
    (
        "k",
        pl.Int64,
        "few-shot demonstrations; null for zero-shot; -1 in an aggregate headline (each country's own M)",
    ),
    (
        "headline",
        pl.Boolean,
        "true for the row a method is reported by: zero-shot, or few-shot with every ICM-labelled claim",
    ),
    (
        "mean",
        pl.Float64,
        "accuracy: mean over test questions of each one's share of correct predictions (claims x repeats)",
    ),
    (
        "std",
        pl.Float64,
        "std of the accuracy over repeats (aggregate: of the countries' mean accuracies); 0 with only one",
    ),
    *_bounds("mean"),
    ("se", pl.Float64, "the bootstrap's standard error of mean; null under 2 questions"),
    _INTERVAL,
    ("repeats", pl.Int64, "repeats scored (demonstration draws, or chat repeats); aggregate: the fewest"),
    _N_QUESTIONS,
    ("n_test", pl.Int64, "distinct test claims scored (aggregate: summed; the aggregate's weights)"),
    ("n_unparsed", pl.Int64, "chat replies that did not parse, counted as wrong; 0 for the other methods"),
)
DIFFERENCES_SCHEMA = columns(
    _SCOPE,
    _VARIANT,
    ("comparison", pl.String, "the difference as shown: method_a − method_b"),
    ("method_a", pl.String, "the first method (a few-shot one at its headline k: every ICM-labelled claim)"),
    ("method_b", pl.String, "the method subtracted (a few-shot one at its headline k)"),
    (
        "mean_difference",
        pl.Float64,
        "mean over the test questions both scored of method_a's minus method_b's per-question accuracy; NaN "
        "without any",
    ),
    *_bounds("mean_difference"),
    (
        "p_value",
        pl.Float64,
        "two-sided sign-flip permutation p-value of a zero mean difference; null without shared questions",
    ),
    ("n_questions", pl.Int64, "test questions both methods scored (aggregate: summed)"),
    _INTERVAL,
)
# (a, b): a - b on the same test questions, each few-shot method at its headline k (every ICM-labelled claim).
COMPARISONS = (
    ("finetune_icm", "finetune_gold"),
    ("finetune_icm", "finetune_random"),
    ("finetune_icm", "icm"),
    ("icm", "gold"),
    ("icm", "zero_shot_base"),
    ("gold", "random_matched"),
    ("icm", "zero_shot_chat"),
)

Key = tuple  # (country, variant, method, k or None)


@dataclass(frozen=True)
class MethodScores:
    scores: QuestionScores
    refs: list[str]
    unparsed: int


def method_scores(
    zero_base: pl.DataFrame,
    zero_chat: pl.DataFrame,
    few_shot: pl.DataFrame,
    finetuned: pl.DataFrame | None = None,
) -> dict[Key, MethodScores]:
    """Per (country, variant, method, k): per-question scores and the prediction rows they come from.
    A chat reply that did not parse counts as wrong, and is counted apart. ``finetuned``: the country
    adapters' zero-shot predictions (methods finetune_*), where they were trained."""
    out = {}
    no_k = pl.lit(None, pl.Int64).alias("k")
    sources = [
        (
            zero_base.with_columns(pl.lit(0).alias("repeat"), pl.lit("zero_shot_base").alias("method"), no_k),
            "elicitation.zero_shot_base_predictions",
        ),
        (zero_chat.with_columns(no_k), "elicitation.zero_shot_chat_predictions"),
        (few_shot, "elicitation.few_shot_predictions"),
    ]
    if finetuned is not None:
        sources.append((finetuned.with_columns(no_k), "finetune.finetuned_predictions"))
    for frame, table in sources:
        for (country, variant, name, k), unordered in frame.group_by("country", "variant", "method", "k"):
            part = unordered.sort("row_id")  # group and row order vary between reads; results must not
            rows = zip(part["repeat"], part["claim_id"], part["correct"].fill_null(False), strict=True)
            out[(country, variant, name, k)] = MethodScores(
                question_scores(list(rows)),
                [row_ref(table, i) for i in part["row_id"]],
                part["correct"].null_count(),
            )
    return dict(sorted(out.items(), key=lambda item: _sortable(item[0])))


def _sortable(key: Key) -> tuple:
    country, variant, method, k = key
    return country, variant, method, -1 if k is None else k


def plotted(row: dict) -> tuple[float, float | None, float | None]:
    """An accuracy and its interval as plotted (None, so none is drawn, where a bootstrap had under two
    questions)."""
    return row["mean"], row["ci_low"], row["ci_high"]


Bars = list[tuple[str, float, float | None, float | None, int]]  # [(method, mean, low, high, n questions)]
Curves = dict[str, list[tuple[int, float, float | None, float | None]]]  # method -> [(k, mean, low, high)]


def plot_series(summary: pl.DataFrame) -> list[tuple[str, str, Bars, Curves]]:
    """Per (scope, variant) of the summary, countries before the aggregate: each bar method's headline
    accuracy as (method, mean, low, high), and each curve method's accuracy per number of examples as
    (k, mean, low, high), for the curve methods that have any."""
    series = []
    for (scope, variant), part in sorted(
        summary.group_by("scope", "variant"), key=lambda g: (g[0][0] == AGGREGATE, g[0])
    ):
        headline = {r["method"]: r for r in part.filter(pl.col("headline")).iter_rows(named=True)}
        bars = [(m, *plotted(headline[m]), headline[m]["n_questions"]) for m in BAR_METHODS if m in headline]
        curves = {
            m: [
                (r["k"], *plotted(r))
                for r in part.filter((pl.col("method") == m) & (pl.col("k") > 0)).iter_rows(named=True)
            ]
            for m in CURVE_METHODS
        }
        series.append((scope, variant, bars, {m: c for m, c in curves.items() if c}))
    return series


HEADLINE_COLUMNS = ["scope", "variant", "method", "mean", "ci_low", "ci_high", "n_questions", "n_test"]


def headline_table(summary: pl.DataFrame) -> tuple[list[str], list[list]]:
    """Header and rows of each method's headline accuracy per scope and variant, aggregate first."""
    headline = summary.filter(pl.col("headline")).sort(
        pl.col("scope") != AGGREGATE, "scope", "variant", "method"
    )
    return HEADLINE_COLUMNS, [list(r) for r in headline.select(HEADLINE_COLUMNS).rows()]


def aggregate_headline(summary: pl.DataFrame) -> dict[str, float]:
    """Method -> headline accuracy over every country (every variant pooled by taking the first: binary
    sorts first and is the one the paper reports)."""
    rows = summary.filter(pl.col("headline") & (pl.col("scope") == AGGREGATE)).sort("variant")
    return {m: mean for m, mean in rows.unique("method", keep="first").select("method", "mean").rows()}


def summary_row_id(scope: str, variant: str, method: str, k: int | None) -> str:
    return f"{scope}/{variant}/{method}/{'-' if k is None else k}"


def headline_keys(scores: Mapping[Key, MethodScores]) -> dict[tuple[str, str, str], Key]:
    """(country, variant, method) -> the key of its headline: zero-shot, or few-shot with every
    ICM-labelled claim."""
    largest: dict[tuple, int] = defaultdict(int)
    for country, variant, _, k in scores:
        if k is not None:
            largest[(country, variant)] = max(largest[(country, variant)], k)
    return {(c, v, m): (c, v, m, k) for c, v, m, k in scores if k is None or k == largest[(c, v)]}


def summary_rows(scores: Mapping[Key, MethodScores]) -> list[dict]:
    rows = []
    headlines = headline_keys(scores)

    def add(scope, variant, method, k, headline, estimate: Estimate, std, repeats, n_test, unparsed, inputs):
        rows.append(
            {
                "row_id": summary_row_id(scope, variant, method, k),
                "scope": scope,
                "variant": variant,
                "method": method,
                "k": k,
                "headline": headline,
                "mean": estimate.mean,
                "std": std,
                "ci_low": estimate.ci_low,
                "ci_high": estimate.ci_high,
                "se": estimate.se,
                "interval": estimate.interval,
                "repeats": repeats,
                "n_questions": estimate.n_questions,
                "n_test": n_test,
                "n_unparsed": unparsed,
                "partition_key": None if scope == AGGREGATE else scope,
                "input_ids": inputs,
            }
        )

    for key, m in sorted(scores.items(), key=lambda i: str(i[0])):
        country, variant, method, k = key
        add(
            country,
            variant,
            method,
            k,
            headlines.get((country, variant, method)) == key,
            accuracy(m.scores),
            repeat_std(m.scores),
            len(m.scores.per_repeat),
            m.scores.n_claims,
            m.unparsed,
            m.refs,
        )
    countries = sorted({c for c, *_ in scores})
    for variant, method in sorted({(v, m) for _, v, m, _ in scores}):
        groups = [([headlines.get((c, variant, method)) for c in countries], True)]
        ks = sorted({k for _, v, m, k in scores if v == variant and m == method and k is not None})
        groups += [([(c, variant, method, k) for c in countries], False) for k in ks]
        for keys, headline in groups:
            if not all(key in scores for key in keys) or (
                not headline and all(k == headlines[k[:3]] for k in keys)
            ):
                continue
            parts = [scores[key].scores for key in keys]
            k = keys[0][3] if not headline or keys[0][3] is None else -1
            add(
                AGGREGATE,
                variant,
                method,
                k,
                headline,
                weighted_accuracy(parts),
                float(np.std([np.mean(p.per_repeat) for p in parts], ddof=1)) if len(parts) > 1 else 0.0,
                min(len(p.per_repeat) for p in parts),
                sum(p.n_claims for p in parts),
                sum(scores[key].unparsed for key in keys),
                [row_ref("elicitation.accuracy_summary", summary_row_id(*key)) for key in keys],
            )
    return rows


def difference_rows(scores: Mapping[Key, MethodScores]) -> list[dict]:
    """Paired differences between methods on the same test questions, per country and aggregated."""
    headlines = headline_keys(scores)
    rows = []
    for variant in sorted({v for _, v, _, _ in scores}):
        for a, b in COMPARISONS:
            pairs = {
                c: (headlines[(c, variant, a)], headlines[(c, variant, b)])
                for c, v, _, _ in scores
                if v == variant and (c, variant, a) in headlines and (c, variant, b) in headlines
            }
            for scope, keys in sorted(pairs.items()):
                rows.append(
                    _difference_row(
                        scope,
                        variant,
                        a,
                        b,
                        difference(scores[keys[0]].scores, scores[keys[1]].scores),
                        [summary_row_id(*key) for key in keys],
                    )
                )
            if pairs:
                both = [(scores[ka].scores, scores[kb].scores) for ka, kb in pairs.values()]
                rows.append(
                    _difference_row(
                        AGGREGATE,
                        variant,
                        a,
                        b,
                        weighted_difference(both),
                        [summary_row_id(*key) for keys in pairs.values() for key in keys],
                    )
                )
    return rows


def _difference_row(scope, variant, a, b, d: Difference, summary_ids: list[str]) -> dict:
    return {
        "row_id": f"{scope}/{variant}/{a}-{b}",
        "scope": scope,
        "variant": variant,
        "comparison": f"{a} − {b}",
        "method_a": a,
        "method_b": b,
        "mean_difference": d.mean,
        "ci_low": d.ci_low,
        "ci_high": d.ci_high,
        "p_value": d.p_value,
        "n_questions": d.n_questions,
        "interval": d.interval,
        "partition_key": None if scope == AGGREGATE else scope,
        "input_ids": [row_ref("elicitation.accuracy_summary", i) for i in summary_ids],
    }
