"""The comparison of experiments (``reports.experiment_comparison``): each experiment's headline accuracy per
method, country and variant, the paired differences between experiments on the same test questions, and each
experiment's perplexities and judge win rates, in one long table (no Dagster here).

Accuracy is recomputed from each experiment's prediction tables with the estimators of the elicitation report
(``reports.tables.method_scores``, ``elicitation.accuracy``: the mean over test questions, a cluster bootstrap
over questions, stratified by country in the aggregate), so every value equals its row of that experiment's
``elicitation.accuracy_summary``, which the row cites.

A difference between two experiments is paired: for each country, variant and method, only the test questions
both experiments scored enter it (a question one of them lacks is left out of both), as the mean over those
questions of the difference of their per-question accuracies, with a cluster-bootstrap interval over questions
and a sign-flip permutation p-value (``elicitation.accuracy.difference``). Over countries the differences are
weighted by the test claims of the shared questions (``weighted_difference``). Pairs are taken in name order
and shown as the later name minus the earlier one.

Every row cites the experiment rows it comes from by their qualified names (``default__elicitation.
accuracy_summary:<row_id>``), so lineage from a comparison row reaches each experiment's rows and through them
the model that made them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import polars as pl

from persona_platform.persona_assets.agents.tables import BASE_MODEL_ROW
from persona_platform.persona_assets.columns import columns
from persona_platform.persona_assets.elicitation.accuracy import (
    Difference,
    Estimate,
    QuestionScores,
    accuracy,
    difference,
    question_of,
    weighted_accuracy,
    weighted_difference,
)
from persona_platform.persona_assets.provenance import row_ref
from persona_platform.persona_assets.reports.tables import (
    AGGREGATE,
    Key,
    MethodScores,
    headline_keys,
    method_scores,
    summary_row_id,
)
from persona_platform.persona_assets.statistics import shown
from persona_platform.resources.warehouse import experiment_schema

ACCURACY, DIFFERENCE, PERPLEXITY, JUDGE_WIN_RATE = (
    "accuracy",
    "accuracy_difference",
    "perplexity",
    "judge_win_rate",
)
MEASURES = (ACCURACY, DIFFERENCE, PERPLEXITY, JUDGE_WIN_RATE)
QUESTIONS, TOKENS, PAIRS = "questions", "tokens", "pairs"
ALL_AGENTS = "all agents"
OWN_ADAPTER = "own adapter"
NO_INTERVAL = "none: a point value (the perplexity matrix carries no interval)"
SUMMARY_TABLE = ("elicitation", "accuracy_summary")
PERPLEXITY_TABLE = ("agents", "perplexity_matrix")
JUDGING_TABLE = ("judging", "judging_summary")

COMPARISON_SCHEMA = columns(
    (
        "measure",
        pl.String,
        "what the row measures: accuracy (an experiment's headline test accuracy), accuracy_difference (the "
        "paired difference between two experiments on the same test questions), perplexity (on held-out "
        "utterances), judge_win_rate (order-consistent win rate of the agents over the baseline)",
    ),
    (
        "experiment",
        pl.String,
        "the experiment the value is of; for accuracy_difference the later name of the pair, the minuend",
    ),
    (
        "other_experiment",
        pl.String,
        "for accuracy_difference the earlier name of the pair, subtracted (value = experiment − "
        "other_experiment); null for the other measures",
    ),
    (
        "model",
        pl.String,
        "the experiment's generator model (backend:model); for accuracy_difference 'experiment's vs "
        "other_experiment's'",
    ),
    (
        "scope",
        pl.String,
        "accuracy and accuracy_difference: a country (its partition key), or aggregate: over countries, "
        "weighted by test claims; perplexity: the agent whose held-out utterances were scored; "
        "judge_win_rate: all agents (the judging summary's task scope)",
    ),
    (
        "variant",
        pl.String,
        "claim variant: all (every question) or binary (two-option questions only); null for perplexity and "
        "judge_win_rate",
    ),
    (
        "method",
        pl.String,
        "accuracy and accuracy_difference: the elicitation method (few-shot ones at their headline k: every "
        "ICM-labelled claim); perplexity: the model scored, base or own adapter (the held-out agent's); "
        "judge_win_rate: the task (trait, completion or monologue)",
    ),
    (
        "value",
        pl.Float64,
        "accuracy (0-1): mean over test questions of each one's share of correct predictions; "
        "accuracy_difference: mean over shared questions of experiment's minus other_experiment's "
        "per-question accuracy (NaN without shared questions); perplexity: token-weighted perplexity; "
        "judge_win_rate: agent wins / pairs judged in both orders; null where undefined",
    ),
    ("ci_low", pl.Float64, "lower bound of value's 95% interval (see interval); null without one"),
    ("ci_high", pl.Float64, "upper bound of value's 95% interval (see interval); null without one"),
    (
        "p_value",
        pl.Float64,
        "accuracy_difference: two-sided sign-flip permutation p-value of a zero mean difference over the "
        "shared questions; null for the other measures and without shared questions",
    ),
    (
        "n",
        pl.Int64,
        "how much the value rests on, in unit: test questions scored (accuracy; aggregate: summed), test "
        "questions both experiments scored (accuracy_difference), tokens of the held-out utterances "
        "(perplexity), pairs judged in both orders (judge_win_rate)",
    ),
    ("unit", pl.String, "what n counts: questions, tokens or pairs"),
    (
        "clusters",
        pl.Int64,
        "the independent units the interval resamples: test questions (accuracy, accuracy_difference), "
        "evaluation items (judge_win_rate); null for perplexity (no interval)",
    ),
    (
        "interval",
        pl.String,
        "how the interval was computed: the method, its resampling unit (and the resamples and seed where "
        "the source table names them); none for a point value",
    ),
)


@dataclass(frozen=True)
class ExperimentInputs:
    """One experiment's tables as the comparison reads them. The prediction frames are the experiment's
    ``elicitation.*_predictions`` and ``finetune.finetuned_predictions`` (as
    ``reports.tables.method_scores`` takes them; None for a method not run); ``accuracy_summary`` is its
    ``elicitation.accuracy_summary``, whose rows the accuracy rows cite (a row it lacks is cited through the
    prediction rows instead); ``perplexity_matrix`` and ``judging_summary`` (its ``agents.perplexity_matrix``
    and ``judging.judging_summary``) may be None or empty when that part was not materialized."""

    name: str
    model: str  # the generator model's label, e.g. "transformers:tiny-b"
    zero_shot_base_predictions: pl.DataFrame | None
    zero_shot_chat_predictions: pl.DataFrame | None
    few_shot_predictions: pl.DataFrame | None
    finetuned_predictions: pl.DataFrame | None = None
    accuracy_summary: pl.DataFrame | None = None
    perplexity_matrix: pl.DataFrame | None = None
    judging_summary: pl.DataFrame | None = None


def qualified(experiment: str, ref: str) -> str:
    """``schema.table:row_id`` as the experiment's row: ``<experiment>__schema.table:row_id``."""
    table, row_id = ref.split(":", 1)
    schema, name = table.split(".", 1)
    return row_ref(f"{experiment_schema(experiment, schema)}.{name}", row_id)


def _table_ref(experiment: str, table: tuple[str, str], row_id: str) -> str:
    return row_ref(f"{experiment_schema(experiment, table[0])}.{table[1]}", row_id)


_PREDICTION_COLUMNS = {
    "country": pl.String,
    "variant": pl.String,
    "claim_id": pl.String,
    "correct": pl.Boolean,
    "row_id": pl.String,
}
_EMPTY = {
    "zero_base": _PREDICTION_COLUMNS,
    "zero_chat": {**_PREDICTION_COLUMNS, "method": pl.String, "repeat": pl.Int64},
    "few": {**_PREDICTION_COLUMNS, "method": pl.String, "k": pl.Int64, "repeat": pl.Int64},
}


def _present(frame: pl.DataFrame | None) -> bool:
    return frame is not None and frame.height > 0


def _or_empty(frame: pl.DataFrame | None, kind: str) -> pl.DataFrame:
    return frame if _present(frame) else pl.DataFrame(schema=_EMPTY[kind])


@dataclass(frozen=True)
class _Scored:
    """An experiment's per-question scores, headline keys, test claims per question, and summary rows."""

    inputs: ExperimentInputs
    scores: dict[Key, MethodScores]
    headlines: dict[tuple[str, str, str], Key]
    claims: dict[tuple[str, str, str], dict[str, int]]  # (country, variant, method) -> question -> claims
    summary_ids: frozenset[str]


def _claims_per_question(frames: Sequence[tuple[pl.DataFrame, str | None]]) -> dict:
    parts = [
        (frame if method is None else frame.with_columns(pl.lit(method).alias("method"))).select(
            "country", "variant", "method", "claim_id"
        )
        for frame, method in frames
        if frame.height
    ]
    out: dict[tuple[str, str, str], dict[str, int]] = {}
    if not parts:
        return out
    for country, variant, method, claim_id in pl.concat(parts).unique().rows():
        per_question = out.setdefault((country, variant, method), {})
        question = question_of(claim_id)
        per_question[question] = per_question.get(question, 0) + 1
    return out


def _scored(inputs: ExperimentInputs) -> _Scored:
    zero_base = _or_empty(inputs.zero_shot_base_predictions, "zero_base")
    zero_chat = _or_empty(inputs.zero_shot_chat_predictions, "zero_chat")
    few = _or_empty(inputs.few_shot_predictions, "few")
    scores = method_scores(zero_base, zero_chat, few, inputs.finetuned_predictions)
    summary = inputs.accuracy_summary
    return _Scored(
        inputs,
        scores,
        headline_keys(scores),
        _claims_per_question([(zero_base, "zero_shot_base"), (zero_chat, None), (few, None)]),
        frozenset(summary["row_id"].to_list() if _present(summary) else ()),
    )


def _cited(scored: _Scored, key: Key) -> list[str]:
    """The experiment's accuracy_summary row of ``key``; where that table lacks it, its prediction rows."""
    name, row_id = scored.inputs.name, summary_row_id(*key)
    if row_id in scored.summary_ids:
        return [_table_ref(name, SUMMARY_TABLE, row_id)]
    return [qualified(name, ref) for ref in scored.scores[key].refs]


def _row(measure: str, experiment: str, model: str, scope: str, variant, method, **values) -> dict:
    row = {
        "measure": measure,
        "experiment": experiment,
        "other_experiment": None,
        "model": model,
        "scope": scope,
        "variant": variant,
        "method": method,
        "value": None,
        "ci_low": None,
        "ci_high": None,
        "p_value": None,
        "n": None,
        "unit": None,
        "clusters": None,
        "interval": None,
        "partition_key": None,
        **values,
    }
    other = row["other_experiment"]
    row["row_id"] = "/".join(
        str(part)
        for part in (measure, experiment, *([other] if other else []), scope, variant, method)
        if part is not None
    )
    return row


def _estimate_values(e: Estimate) -> dict:
    return {
        "value": e.mean,
        "ci_low": e.ci_low,
        "ci_high": e.ci_high,
        "n": e.n_questions,
        "unit": QUESTIONS,
        "clusters": e.n_questions,
        "interval": e.interval,
    }


def _countries(headlines, variant: str, method: str) -> list[str]:
    return sorted(c for c, v, m in headlines if v == variant and m == method)


def _accuracy_rows(scored: _Scored) -> list[dict]:
    """Each headline accuracy of one experiment per country, variant and method, and over countries."""
    name, model = scored.inputs.name, scored.inputs.model
    rows = []
    for (country, variant, method), key in sorted(scored.headlines.items()):
        rows.append(
            _row(
                ACCURACY,
                name,
                model,
                country,
                variant,
                method,
                **_estimate_values(accuracy(scored.scores[key].scores)),
                input_ids=_cited(scored, key),
            )
        )
    for variant, method in sorted({(v, m) for _, v, m in scored.headlines}):
        keys = [scored.headlines[(c, variant, method)] for c in _countries(scored.headlines, variant, method)]
        rows.append(
            _row(
                ACCURACY,
                name,
                model,
                AGGREGATE,
                variant,
                method,
                **_estimate_values(weighted_accuracy([scored.scores[k].scores for k in keys])),
                input_ids=[ref for k in keys for ref in _cited(scored, k)],
            )
        )
    return rows


def _shared(scored: _Scored, key: Key, questions: set[str]) -> QuestionScores:
    """``key``'s scores on ``questions`` only; its claims those of these questions (the weight)."""
    scores = scored.scores[key].scores
    claims = scored.claims.get(key[:3], {})
    return QuestionScores(
        {q: v for q, v in scores.by_question.items() if q in questions},
        scores.per_repeat,
        sum(claims.get(q, 0) for q in questions),
    )


def _difference_values(d: Difference) -> dict:
    return {
        "value": d.mean,
        "ci_low": d.ci_low,
        "ci_high": d.ci_high,
        "p_value": d.p_value,
        "n": d.n_questions,
        "unit": QUESTIONS,
        "clusters": d.n_questions,
        "interval": d.interval,
    }


def _difference_rows(a: _Scored, b: _Scored) -> list[dict]:
    """b − a per country, variant and method both experiments scored, and over countries: paired on the
    test questions both scored."""
    later, earlier = b.inputs, a.inputs
    model = f"{later.model} vs {earlier.model}"
    rows = []
    pooled: dict[tuple[str, str], list[tuple[list[str], QuestionScores, QuestionScores]]] = {}
    for country, variant, method in sorted(set(a.headlines) & set(b.headlines)):
        key_a, key_b = a.headlines[(country, variant, method)], b.headlines[(country, variant, method)]
        questions = set(a.scores[key_a].scores.by_question) & set(b.scores[key_b].scores.by_question)
        shared_b, shared_a = _shared(b, key_b, questions), _shared(a, key_a, questions)
        cited = _cited(b, key_b) + _cited(a, key_a)
        rows.append(
            _row(
                DIFFERENCE,
                later.name,
                model,
                country,
                variant,
                method,
                other_experiment=earlier.name,
                **_difference_values(difference(shared_b, shared_a)),
                input_ids=cited,
            )
        )
        if questions:
            pooled.setdefault((variant, method), []).append((cited, shared_b, shared_a))
    for (variant, method), parts in sorted(pooled.items()):
        rows.append(
            _row(
                DIFFERENCE,
                later.name,
                model,
                AGGREGATE,
                variant,
                method,
                other_experiment=earlier.name,
                **_difference_values(weighted_difference([(sb, sa) for _, sb, sa in parts])),
                input_ids=[ref for cited, _, _ in parts for ref in cited],
            )
        )
    return rows


def _perplexity_rows(inputs: ExperimentInputs) -> list[dict]:
    """The base model's and each agent's own adapter's perplexity on the agent's held-out utterances."""
    matrix = inputs.perplexity_matrix
    if not _present(matrix):
        return []
    own = matrix.filter((pl.col("model") == BASE_MODEL_ROW) | (pl.col("model") == pl.col("heldout_agent")))
    return [
        _row(
            PERPLEXITY,
            inputs.name,
            inputs.model,
            r["heldout_agent"],
            None,
            BASE_MODEL_ROW if r["model"] == BASE_MODEL_ROW else OWN_ADAPTER,
            value=None if r["perplexity"] is None or math.isnan(r["perplexity"]) else r["perplexity"],
            n=r["tokens"],
            unit=TOKENS,
            interval=NO_INTERVAL,
            input_ids=[_table_ref(inputs.name, PERPLEXITY_TABLE, r["row_id"])],
        )
        for r in own.sort("heldout_agent", pl.col("model") != BASE_MODEL_ROW).iter_rows(named=True)
    ]


def _judge_rows(inputs: ExperimentInputs) -> list[dict]:
    """Each task's order-consistent win rate of the agents over the baseline (the task-scope rows)."""
    summary = inputs.judging_summary
    if not _present(summary):
        return []
    return [
        _row(
            JUDGE_WIN_RATE,
            inputs.name,
            inputs.model,
            ALL_AGENTS,
            None,
            r["task"],
            value=r["consistent_rate"],
            ci_low=r["consistent_low"],
            ci_high=r["consistent_high"],
            n=r["judged"],
            unit=PAIRS,
            clusters=r["items"],
            interval=r["interval_method"],
            input_ids=[_table_ref(inputs.name, JUDGING_TABLE, r["row_id"])],
        )
        for r in summary.filter(pl.col("scope") == "task").sort("task").iter_rows(named=True)
    ]


def comparison_rows(experiments: Sequence[ExperimentInputs]) -> list[dict]:
    """The rows of ``reports.experiment_comparison`` (each with ``row_id``, ``partition_key`` and
    ``input_ids``): every experiment's accuracy, perplexity and judge win rates, and the paired accuracy
    differences of every pair of experiments (later name − earlier name)."""
    names = [e.name for e in experiments]
    if len(set(names)) != len(names):
        raise ValueError(f"experiments named twice: {sorted(names)}")
    scored = [_scored(e) for e in sorted(experiments, key=lambda e: e.name)]
    rows = [row for s in scored for row in _accuracy_rows(s)]
    rows += [row for a, b in combinations(scored, 2) for row in _difference_rows(a, b)]
    rows += [row for s in scored for row in _perplexity_rows(s.inputs)]
    rows += [row for s in scored for row in _judge_rows(s.inputs)]
    return rows


# --- what the UI shows -------------------------------------------------------------------------------------


def _of(frame: pl.DataFrame, measure: str) -> pl.DataFrame:
    return frame.filter(pl.col("measure") == measure)


_SCOPE_ORDER = [  # aggregate first, then by scope, variant, method
    pl.col("scope") != AGGREGATE,
    "scope",
    "variant",
    "method",
]


_SCALE = {ACCURACY: (100, 1), DIFFERENCE: (100, 1), PERPLEXITY: (1, 2), JUDGE_WIN_RATE: (100, 0)}
_VALUE_NAME = {
    ACCURACY: "accuracy %",
    PERPLEXITY: "perplexity",
    JUDGE_WIN_RATE: "consistent win %",
}


def _shown(row: dict, measure: str) -> str:
    scale, digits = _SCALE[measure]
    value = row["value"]
    return shown(
        None if value is None or math.isnan(value) else value, row["ci_low"], row["ci_high"], scale, digits
    )


def side_by_side_table(frame: pl.DataFrame, measure: str = ACCURACY) -> tuple[list[str], list[list]]:
    """Header and rows of one per-experiment measure (accuracy, perplexity or judge_win_rate), experiments
    side by side: per scope, variant and method, each experiment's value [95% interval] and its n."""
    part = _of(frame, measure)
    experiments = part.select("experiment", "model").unique().sort("experiment").rows()
    header = ["scope", "variant", "method"]
    for name, model in experiments:
        header += [f"{name} ({model}) {_VALUE_NAME[measure]} [95% CI]", f"{name} n"]
    cells = {(r["scope"], r["variant"], r["method"], r["experiment"]): r for r in part.iter_rows(named=True)}
    rows = []
    for scope, variant, method in (
        part.select("scope", "variant", "method").unique().sort(_SCOPE_ORDER).rows()
    ):
        row = [scope, variant, method]
        for name, _ in experiments:
            cell = cells.get((scope, variant, method, name))
            row += [None, None] if cell is None else [_shown(cell, measure), cell["n"]]
        rows.append(row)
    return header, rows


DIFFERENCE_HEADER = [
    "scope",
    "variant",
    "method",
    "comparison",
    "difference (points) [95% CI]",
    "p_value",
    "n_questions",
]


def difference_table(frame: pl.DataFrame) -> tuple[list[str], list[list]]:
    """Header and rows of the paired differences between experiments, aggregate first."""
    part = _of(frame, DIFFERENCE).sort(_SCOPE_ORDER + ["experiment", "other_experiment"])
    rows = [
        [
            r["scope"],
            r["variant"],
            r["method"],
            f"{r['experiment']} − {r['other_experiment']}",
            _shown(r, DIFFERENCE),
            r["p_value"],
            r["n"],
        ]
        for r in part.iter_rows(named=True)
    ]
    return DIFFERENCE_HEADER, rows


def _excludes_zero(row: dict) -> bool:
    return (
        row["ci_low"] is not None and row["ci_high"] is not None and (row["ci_low"] > 0 or row["ci_high"] < 0)
    )


def comparison_verdict(frame: pl.DataFrame) -> str:
    """One line on the aggregate paired differences: the largest one whose interval excludes 0, and how many
    do, or that the experiments score the same within their intervals."""
    experiments = frame["experiment"].unique().sort().to_list() if frame.height else []
    if len(experiments) < 2:
        return f"{len(experiments)} experiment(s): nothing to compare"
    aggregate = [
        r
        for r in _of(frame, DIFFERENCE).filter(pl.col("scope") == AGGREGATE).iter_rows(named=True)
        if r["n"] and r["value"] is not None and not math.isnan(r["value"])
    ]
    if not aggregate:
        return "no test question scored by two experiments: nothing to compare"
    apart = [r for r in aggregate if _excludes_zero(r)]
    if not apart:
        widest = max(aggregate, key=lambda r: abs(r["value"]))
        return (
            f"experiments score the same within their intervals: every one of {len(aggregate)} aggregate "
            f"paired differences has 0 in its 95% interval (largest: {_difference_text(widest)})"
        )
    largest = max(apart, key=lambda r: abs(r["value"]))
    return (
        f"{_difference_text(largest)}; {len(apart)} of {len(aggregate)} aggregate paired differences "
        "exclude 0 (95% intervals, not corrected for multiple comparisons)"
    )


def _difference_text(row: dict) -> str:
    low, high = row["ci_low"], row["ci_high"]
    interval = "no interval" if low is None or high is None else f"{100 * low:+.1f}, {100 * high:+.1f}"
    p = "" if row["p_value"] is None else f", p = {row['p_value']:.3g}"
    return (
        f"{row['experiment']} − {row['other_experiment']}: {100 * row['value']:+.1f} points on "
        f"{row['method']} ({row['variant']}) [{interval}]{p}, n = {row['n']} questions"
    )


# --- what the plots draw -------------------------------------------------------------------------------


def accuracy_plot_series(frame: pl.DataFrame) -> list[tuple[str, str, str, dict[str, list[tuple]]]]:
    """Per (scope, variant), aggregate first: the interval method, and per experiment (labelled 'name
    (model)') its headline accuracies as (method, mean, low, high, n questions), ``plots.Bar``'s fields."""
    part = _of(frame, ACCURACY)
    series = []
    for scope, variant in (
        part.select("scope", "variant").unique().sort(pl.col("scope") != AGGREGATE, "scope", "variant").rows()
    ):
        rows = part.filter((pl.col("scope") == scope) & (pl.col("variant") == variant)).sort(
            "experiment", "method"
        )
        bars: dict[str, list[tuple]] = {}
        for r in rows.iter_rows(named=True):
            bars.setdefault(f"{r['experiment']} ({r['model']})", []).append(
                (r["method"], r["value"], r["ci_low"], r["ci_high"], r["n"])
            )
        series.append((scope, variant, rows["interval"][0], bars))
    return series


def difference_plot_series(frame: pl.DataFrame, scope: str = AGGREGATE) -> list[tuple[str, str, list[tuple]]]:
    """Per variant, of ``scope``'s paired differences: the interval method and each difference as (label,
    value, low, high, n questions, p), ``plots.Effect``'s fields; differences without shared questions
    are left out."""
    part = _of(frame, DIFFERENCE).filter((pl.col("scope") == scope) & (pl.col("n") > 0))
    series = []
    for (variant,) in part.select("variant").unique().sort("variant").rows():
        rows = part.filter(pl.col("variant") == variant).sort("experiment", "other_experiment", "method")
        effects = [
            (
                f"{r['experiment']} − {r['other_experiment']}: {r['method']}",
                r["value"],
                r["ci_low"],
                r["ci_high"],
                r["n"],
                r["p_value"],
            )
            for r in rows.iter_rows(named=True)
        ]
        series.append((variant, rows["interval"][0], effects))
    return series
