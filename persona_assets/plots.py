"""Plots as PNG bytes (matplotlib, no display), stored as files whose paths the UI shows."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from dagster import MetadataValue  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from persona_platform.resources.artifacts import ArtifactStore  # noqa: E402

METHOD_COLORS = {
    "zero_shot_base": "#9658ca",
    "zero_shot_chat": "#b366cc",
    "zero_shot_base_chat_template": "#c9a8dc",
    "icm": "#58b6c0",
    "gold": "#e0b400",
    "random_matched": "#7a7a7a",
}
METHOD_NAMES = {
    "zero_shot_base": "Zero-shot (base)",
    "zero_shot_chat": "Zero-shot (chat)",
    "zero_shot_base_chat_template": "Zero-shot (base, chat template)",
    "icm": "ICM (unsupervised)",
    "gold": "Golden supervision",
    "random_matched": "Random labels (accuracy-matched)",
}
AGENT_COLOR, BASELINE_COLOR = "#2a8a96", "#7b3fb0"
NOTE_COLOR = "#444444"


@dataclass(frozen=True)
class Bar:
    """One method's accuracy; ``low``/``high`` None where there is no interval, ``n`` its test questions."""

    method: str
    mean: float
    low: float | None
    high: float | None
    n: int | None = None


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


def text_color(rgba: Sequence[float]) -> str:
    """'black' or 'white', whichever contrasts more with a cell of this colour (WCAG relative luminance
    and contrast ratio), so a number printed on a cell stays readable wherever the colormap puts it."""
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3])
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "black" if (luminance + 0.05) / 0.05 >= 1.05 / (luminance + 0.05) else "white"


def _with_n(labels: Sequence[str], counts: Sequence[int] | None) -> list[str]:
    if counts is None:
        return list(labels)
    return [f"{label}\n(n={count})" for label, count in zip(labels, counts, strict=True)]


def _footnote(figure: Figure, *lines: str | None) -> None:
    """Every plot states its n and what its whiskers or bands are (or that it draws none) on the figure
    itself, since a PNG is often read away from its table. Placed below everything else: savefig's tight
    bounding box grows to include it."""
    text = "\n".join(line for line in lines if line)
    if text:
        figure.text(0.01, 0, text, ha="left", va="top", fontsize=8, color=NOTE_COLOR)


def _n_of(n: int | None, unit: str) -> str | None:
    return None if n is None else f"n = {n} {unit}"


def accuracy_bars(
    title: str, bars: Sequence[Bar], interval: str = "95% interval", footnote: str | None = None
) -> Figure:
    """Test accuracy per method with its interval (``Bar.n`` printed under each method when given)."""
    figure, axis = plt.subplots(figsize=(7, 4), layout="constrained")
    x = list(range(len(bars)))
    axis.bar(x, [100 * b.mean for b in bars], color=[METHOD_COLORS.get(b.method, "#888") for b in bars])
    # Whiskers only where an interval exists: a zero-length whisker would read as a certain value.
    shown = [i for i, b in enumerate(bars) if not (_missing(b.low) or _missing(b.high))]
    if shown:
        axis.errorbar(
            shown,
            [100 * bars[i].mean for i in shown],
            yerr=[
                [100 * (bars[i].mean - bars[i].low) for i in shown],
                [100 * (bars[i].high - bars[i].mean) for i in shown],
            ],
            fmt="none",
            ecolor="black",
            capsize=5,
        )
    for i, b in enumerate(bars):
        top = b.mean if i not in shown else b.high
        value = f"{100 * b.mean:.1f}%" + ("" if i in shown else "\nno interval")
        axis.text(i, 100 * top + 1.5, value, ha="center", va="bottom", fontsize=9)
    names = [METHOD_NAMES.get(b.method, b.method) for b in bars]
    counts = [b.n for b in bars]
    axis.set_xticks(
        x, _with_n(names, None if None in counts else counts), rotation=20, ha="right", rotation_mode="anchor"
    )
    # Headroom above 100% for a value label over a high whisker; the axis itself stops at 100.
    axis.set_ylim(0, 115)
    axis.set_yticks(range(0, 101, 20))
    axis.set_ylabel("Test accuracy (%)")
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    _footnote(
        figure,
        f"Whiskers: {interval}." + ("" if None in counts else " n: test questions per method."),
        footnote,
    )
    return figure


def accuracy_curves(
    title: str,
    curves: dict[str, list[tuple[int, float, float | None, float | None]]],
    n: int | None = None,
    unit: str = "test questions",
    interval: str = "95% interval",
    footnote: str | None = None,
) -> Figure:
    """Accuracy vs number of in-context examples, each method a line with its interval as a shaded band;
    curves[method] = [(k, mean, low, high)], low/high None where there is no interval."""
    figure, axis = plt.subplots(figsize=(7, 4), layout="constrained")
    for method, points in curves.items():
        points = sorted(points, key=lambda p: p[0])
        ks = [p[0] for p in points]
        color = METHOD_COLORS.get(method, "#888")
        axis.plot(
            ks, [100 * p[1] for p in points], marker="o", color=color, label=METHOD_NAMES.get(method, method)
        )
        # A point without an interval leaves a gap in the band rather than pinching it to the line.
        low = [math.nan if _missing(p[2]) else 100 * p[2] for p in points]
        high = [math.nan if _missing(p[3]) else 100 * p[3] for p in points]
        axis.fill_between(ks, low, high, color=color, alpha=0.2, linewidth=0)
    axis.set_xlabel("Number of in-context examples")
    axis.set_ylabel("Test accuracy (%)")
    axis.set_ylim(0, 100)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if curves:
        handles, labels = axis.get_legend_handles_labels()
        handles.append(Patch(color="#888", alpha=0.3))
        labels.append(f"shaded: {interval}")
        axis.legend(handles, labels, fontsize=8, loc="lower right")
    _footnote(figure, _n_of(n, unit), footnote)
    return figure


def search_trace(
    title: str,
    iterations: Sequence[int],
    energy: Sequence[float],
    agreement: Sequence[float | None],
    n_claims: int | None = None,
) -> Figure:
    """ICM energy and agreement with gold per iteration; ``n_claims``: the claims agreement is over."""
    figure, left = plt.subplots(figsize=(7, 4), layout="constrained")
    left.plot(iterations, energy, color="#58b6c0", label="energy U")
    left.set_xlabel("iteration")
    left.set_ylabel("energy U")
    right = left.twinx()
    right.plot(
        iterations,
        [100 * a if a is not None else float("nan") for a in agreement],
        color="#e0b400",
        label="agreement with gold (%)",
    )
    right.set_ylabel("agreement with gold labels (%)")
    right.set_ylim(0, 100)
    left.set_title(title)
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    left.legend(handles, [h.get_label() for h in handles], loc="upper right", fontsize=8)
    _footnote(
        figure,
        f"n = {len(iterations)} iterations"
        + ("" if n_claims is None else f"; agreement over {n_claims} claims")
        + "; one search, no interval drawn.",
    )
    return figure


def loss_curve(
    title: str, steps: Sequence[int], losses: Sequence[float], ylabel: str = "training loss (agent tokens)"
) -> Figure:
    figure, axis = plt.subplots(figsize=(7, 3.5), layout="constrained")
    axis.plot(steps, losses, color="#58b6c0")
    axis.set_xlabel("step")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    _footnote(figure, f"n = {len(steps)} logged steps; one training run, no interval drawn.")
    return figure


def heatmap(
    title: str,
    rows: Sequence[str],
    columns: Sequence[str],
    values: Sequence[Sequence[float]],
    label: str,
    fmt: str = "{:.1f}",
    xlabel: str = "held-out set of",
    ylabel: str = "model",
    higher_is_better: bool = False,
    row_counts: Sequence[int] | None = None,
    column_counts: Sequence[int] | None = None,
    footnote: str | None = None,
) -> Figure:
    """values[row][column], NaN shown as 'n/a'; darker cells are better (``higher_is_better`` says which
    way); ``row_counts``/``column_counts`` print each row's and column's n under its label."""
    figure, axis = plt.subplots(
        figsize=(2.2 + 1.3 * len(columns), 1.6 + 0.6 * len(rows)), layout="constrained"
    )
    # Darker is better either way: a single-hue map runs light to dark, reversed where lower is better.
    cells = np.ma.masked_invalid(np.array(values, dtype=float))
    image = axis.imshow(cells, cmap="Blues" if higher_is_better else "Blues_r", aspect="auto")
    axis.set_xticks(range(len(columns)), _with_n(columns, column_counts), rotation=20)
    axis.set_yticks(range(len(rows)), _with_n(rows, row_counts))
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if _missing(value):
                axis.text(j, i, "n/a", ha="center", va="center", color=NOTE_COLOR, fontsize=9)
            else:
                color = text_color(image.cmap(image.norm(value)))
                axis.text(j, i, fmt.format(value), ha="center", va="center", color=color, fontsize=9)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    better = "higher" if higher_is_better else "lower"
    figure.colorbar(image, ax=axis, label=f"{label} ({better} is better, darker)")
    _footnote(figure, "Cells are point values; no interval drawn.", footnote)
    return figure


def confusion_matrix(
    title: str,
    truth: Sequence[str],
    predicted: Sequence[str],
    rows: Sequence[str],
    columns: Sequence[str],
    unit: str = "votes",
    footnote: str | None = None,
) -> Figure:
    """Counts of (recorded, predicted) pairs; the total n (in ``unit``) in the title, each row's n in its
    label."""
    pairs = list(zip(truth, predicted, strict=True))
    counts = [[sum(t == r and p == c for t, p in pairs) for c in columns] for r in rows]
    figure, axis = plt.subplots(
        figsize=(2.4 + 1.2 * len(columns), 1.6 + 0.9 * len(rows)), layout="constrained"
    )
    image = axis.imshow(counts, cmap="Blues", vmin=0)
    for i, row in enumerate(counts):
        for j, value in enumerate(row):
            color = text_color(image.cmap(image.norm(value)))
            axis.text(j, i, str(value), ha="center", va="center", color=color)
    axis.set_xticks(range(len(columns)), columns)
    axis.set_yticks(range(len(rows)), _with_n(rows, [sum(row) for row in counts]))
    axis.set_xlabel("predicted")
    axis.set_ylabel("recorded vote")
    axis.set_title(f"{title}\nn = {len(pairs)} {unit}")
    figure.colorbar(image, ax=axis, label=unit)
    _footnote(figure, f"Cells count {unit}; no interval drawn.", footnote)
    return figure


SYSTEMS = (("agent (adapter)", -0.2, AGENT_COLOR), ("baseline (base + persona)", 0.2, BASELINE_COLOR))


def score_violins(
    title: str, groups: Sequence[tuple[str, Sequence[float], Sequence[float]]], footnote: str | None = None
) -> Figure:
    """Per group (a task's aspect): the agent's and the baseline's score distributions side by side, every
    sample, each group's n under its label."""
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4), layout="constrained")
    # Scores are integers 1-5: without a little seeded horizontal jitter every sample of a score is one dot.
    jitter = np.random.default_rng(0)
    for index, (_, *systems) in enumerate(groups):
        for values, (_, offset, color) in zip(systems, SYSTEMS, strict=True):
            if len(values) > 1 and len(set(values)) > 1:
                parts = axis.violinplot([values], positions=[index + offset], widths=0.35, showmedians=True)
                for body in parts["bodies"]:
                    body.set_facecolor(color)
                    body.set_edgecolor(color)
                for line in ("cbars", "cmins", "cmaxes", "cmedians"):
                    parts[line].set_color(color)
            spread = jitter.uniform(-0.06, 0.06, len(values))
            axis.scatter(index + offset + spread, values, s=6, color=color, alpha=0.4)
    labels = [f"{name}\nn = {len(agent)} / {len(baseline)}" for name, agent, baseline in groups]
    axis.set_xticks(range(len(groups)), labels, rotation=20)
    axis.set_ylim(0.5, 5.5)
    axis.set_ylabel("Judge score (1-5)")
    for name, _, color in SYSTEMS:
        axis.scatter([], [], color=color, label=name)
    # Outside the axes: inside, it covers a violin whichever corner it takes.
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    _footnote(
        figure,
        "n = agent / baseline scores per group. Violin: density of the scores, its line the median, "
        "ends min and max; dots: every sample; no interval drawn.",
        footnote,
    )
    return figure


def win_rate_bars(
    title: str,
    labels: Sequence[str],
    rates: Sequence[tuple[float | None, float | None, float | None]],
    counts: Sequence[int] | None = None,
    ties: Sequence[int] | None = None,
    interval: str = "95% interval",
    footnote: str | None = None,
) -> Figure:
    """Order-consistent agent win rate per group with its interval (no bar where the rate is null, no
    whisker where the interval is); 50% marked; ``counts``: each group's judged pairs, ``ties``: its ties."""
    figure, axis = plt.subplots(figsize=(max(6, 0.9 * len(labels)), 4), layout="constrained")
    for i, (rate, low, high) in enumerate(rates):
        # A null rate is no bar at all: drawn as 0% it would claim the agent never won.
        if _missing(rate):
            axis.text(i, 2, "n/a\nno judged pair", ha="center", va="bottom", fontsize=7, color=NOTE_COLOR)
            continue
        axis.bar(i, 100 * rate, color="#58b6c0")
        top, note = 100 * rate, ""
        if _missing(low) or _missing(high):
            note = "\nno interval"
        else:
            axis.errorbar(
                i,
                100 * rate,
                yerr=[[max(0.0, 100 * (rate - low))], [max(0.0, 100 * (high - rate))]],
                fmt="none",
                ecolor="black",
                capsize=4,
            )
            top = 100 * high
        if ties is not None and counts is not None and counts[i] and ties[i] == counts[i]:
            note = "\nall tied"
        axis.text(i, top + 1.5, f"{100 * rate:.0f}%{note}", ha="center", va="bottom", fontsize=7)
    axis.axhline(50, color="#888", linestyle="--", linewidth=1)
    axis.set_xticks(range(len(labels)), _with_n(labels, counts), rotation=30, ha="right", fontsize=8)
    axis.set_xlim(-0.6, len(labels) - 0.4)  # set, since a group without a bar does not widen the axis
    axis.set_ylim(0, 115)
    axis.set_yticks(range(0, 101, 20))
    axis.set_ylabel("Agent wins (%, both orders agree)")
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    message = None
    if rates and all(_missing(r[0]) for r in rates):
        message = "No win rate: no pair was judged in both orders"
    elif (
        ties is not None
        and counts is not None
        and rates
        and all(t == c for t, c in zip(ties, counts, strict=True))
    ):
        message = "Every pair tied: no decisive pair in any group"
    if message:
        axis.text(
            0.5,
            0.5,
            message,
            transform=axis.transAxes,
            ha="center",
            va="center",
            fontsize=11,
            bbox={"facecolor": "white", "edgecolor": "#888"},
        )
    _footnote(
        figure,
        f"Whiskers: {interval}; dashed line: 50%. Ties and inconsistent pairs count as not won."
        + ("" if counts is None else " n: pairs judged in both orders."),
        footnote,
    )
    return figure


def saved_plot(artifacts: ArtifactStore, figure: Figure, folder: str, name: str) -> MetadataValue:
    """Store a plot as ``plots/<folder>/<name>.png``; its path, as metadata. A path, not the image inline:
    a report holds many plots, and inline images made one metadata entry megabytes long."""
    path, _ = artifacts.write(_png(figure), "plots", folder, f"{name}.png")
    return MetadataValue.path(str(path))


EXPERIMENT_COLORS = ("#58b6c0", "#9658ca", "#e0b400", "#7a7a7a", "#2a8a96", "#b366cc")


def experiment_accuracy_bars(
    title: str,
    series: dict[str, Sequence[Bar]],
    interval: str = "95% interval",
    footnote: str | None = None,
) -> Figure:
    """Test accuracy per method, one bar per experiment side by side (``series``: experiment label -> its
    bars), each with its interval (no whisker where there is none) and its n under it."""
    methods = list(dict.fromkeys(b.method for bars in series.values() for b in bars))
    width = 0.8 / max(1, len(series))
    figure, axis = plt.subplots(figsize=(max(7, 1.4 * len(methods) * max(1, len(series))), 4.5))
    figure.set_layout_engine("constrained")
    for index, (label, bars) in enumerate(series.items()):
        color = EXPERIMENT_COLORS[index % len(EXPERIMENT_COLORS)]
        offset = (index - (len(series) - 1) / 2) * width
        for b in bars:
            x = methods.index(b.method) + offset
            axis.bar(x, 100 * b.mean, width=width * 0.95, color=color, label=label)
            label = None  # one legend entry per experiment
            top, note = 100 * b.mean, "\nno interval"
            if not (_missing(b.low) or _missing(b.high)):
                axis.errorbar(
                    x,
                    100 * b.mean,
                    yerr=[[max(0.0, 100 * (b.mean - b.low))], [max(0.0, 100 * (b.high - b.mean))]],
                    fmt="none",
                    ecolor="black",
                    capsize=3,
                )
                top, note = 100 * b.high, ""
            n = "" if b.n is None else f"\nn={b.n}"
            axis.text(x, top + 1.5, f"{100 * b.mean:.0f}%{note}{n}", ha="center", va="bottom", fontsize=7)
    axis.set_xticks(
        range(len(methods)),
        [METHOD_NAMES.get(m, m) for m in methods],
        rotation=20,
        ha="right",
        rotation_mode="anchor",
    )
    axis.set_ylim(0, 120)
    axis.set_yticks(range(0, 101, 20))
    axis.set_ylabel("Test accuracy (%)")
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    if series:
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    _footnote(figure, f"Whiskers: {interval}. n: test questions per bar.", footnote)
    return figure


@dataclass(frozen=True)
class Effect:
    """A paired difference (as a share, drawn in points); ``low``/``high`` None where there is no interval,
    ``n`` the paired units, ``p`` its p-value."""

    label: str
    value: float
    low: float | None
    high: float | None
    n: int | None = None
    p: float | None = None


def difference_forest(
    title: str,
    effects: Sequence[Effect],
    unit: str = "questions",
    interval: str = "95% interval",
    footnote: str | None = None,
) -> Figure:
    """Forest plot of paired differences in percentage points, one row each with its interval, n and p; the
    line of no difference marked. A difference without an interval is a point marked 'no interval'."""
    figure, axis = plt.subplots(figsize=(7.5, 1.4 + 0.45 * max(1, len(effects))), layout="constrained")
    ys = list(range(len(effects)))[::-1]  # the first effect on top
    for y, e in zip(ys, effects, strict=True):
        apart = not (_missing(e.low) or _missing(e.high)) and (e.low > 0 or e.high < 0)
        color = "#2a8a96" if apart else "#444444"
        if not (_missing(e.low) or _missing(e.high)):
            axis.errorbar(
                100 * e.value,
                y,
                xerr=[[max(0.0, 100 * (e.value - e.low))], [max(0.0, 100 * (e.high - e.value))]],
                fmt="o",
                color=color,
                ecolor=color,
                capsize=4,
            )
        else:
            axis.plot(100 * e.value, y, marker="o", color=color)
            axis.annotate(
                "no interval", (100 * e.value, y), xytext=(6, 4), textcoords="offset points", fontsize=7
            )
    labels = [
        f"{e.label}\n{100 * e.value:+.1f} pts"
        + ("" if e.n is None else f", n={e.n}")
        + ("" if e.p is None else f", p={e.p:.2g}")
        for e in effects
    ]
    axis.set_yticks(ys, labels, fontsize=8)
    axis.axvline(0, color="#888", linestyle="--", linewidth=1)
    axis.set_xlabel("Difference in test accuracy (percentage points)")
    axis.set_title(title)
    axis.grid(axis="x", alpha=0.3)
    if not effects:
        axis.text(
            0.5,
            0.5,
            "No paired difference: no shared test question",
            transform=axis.transAxes,
            ha="center",
            va="center",
        )
    _footnote(
        figure,
        f"Whiskers: {interval}; dashed line: no difference; teal: interval excludes 0.",
        f"n: {unit} both experiments scored; p: sign-flip permutation test.",
        footnote,
    )
    return figure
