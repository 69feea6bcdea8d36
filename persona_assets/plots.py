"""Plots as PNG bytes (matplotlib, no display), and their inline form for the Dagster UI."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

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


@dataclass(frozen=True)
class Bar:
    method: str
    mean: float
    low: float
    high: float


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def accuracy_bars(title: str, bars: Sequence[Bar]) -> bytes:
    """Test accuracy per method with its 95% interval."""
    figure, axis = plt.subplots(figsize=(7, 4))
    x = range(len(bars))
    heights = [100 * b.mean for b in bars]
    errors = [[100 * (b.mean - b.low) for b in bars], [100 * (b.high - b.mean) for b in bars]]
    axis.bar(x, heights, yerr=errors, capsize=5, color=[METHOD_COLORS.get(b.method, "#888") for b in bars])
    for i, b in enumerate(bars):
        axis.text(i, 100 * b.high + 1.5, f"{100 * b.mean:.1f}%", ha="center", fontsize=9)
    axis.set_xticks(list(x), [METHOD_NAMES.get(b.method, b.method) for b in bars], rotation=15)
    axis.set_ylim(0, 110)
    axis.set_ylabel("Test accuracy (%)")
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    return _png(figure)


def accuracy_curves(title: str, curves: dict[str, list[tuple[int, float, float, float]]]) -> bytes:
    """Accuracy vs number of in-context examples with 95% intervals;
    curves[method] = [(k, mean, low, high)]."""
    figure, axis = plt.subplots(figsize=(7, 4))
    for method, points in curves.items():
        points = sorted(points)
        axis.errorbar(
            [k for k, *_ in points],
            [100 * mean for _, mean, _, _ in points],
            yerr=[
                [100 * (mean - low) for _, mean, low, _ in points],
                [100 * (high - mean) for _, mean, _, high in points],
            ],
            marker="o",
            capsize=3,
            label=METHOD_NAMES.get(method, method),
            color=METHOD_COLORS.get(method),
        )
    axis.set_xlabel("Number of in-context examples")
    axis.set_ylabel("Test accuracy (%)")
    axis.set_ylim(0, 100)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if curves:
        axis.legend()
    return _png(figure)


def search_trace(
    title: str, iterations: Sequence[int], energy: Sequence[float], agreement: Sequence[float | None]
) -> bytes:
    """ICM energy and agreement with gold labels, per iteration."""
    figure, left = plt.subplots(figsize=(7, 4))
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
    return _png(figure)


def inline(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def loss_curve(title: str, steps: Sequence[int], losses: Sequence[float]) -> bytes:
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.plot(steps, losses, color="#58b6c0")
    axis.set_xlabel("step")
    axis.set_ylabel("training loss (agent tokens)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    return _png(figure)


def heatmap(
    title: str,
    rows: Sequence[str],
    columns: Sequence[str],
    values: Sequence[Sequence[float]],
    label: str,
    fmt: str = "{:.1f}",
) -> bytes:
    figure, axis = plt.subplots(figsize=(1.6 + 1.3 * len(columns), 1.2 + 0.6 * len(rows)))
    image = axis.imshow(values, cmap="viridis_r", aspect="auto")
    axis.set_xticks(range(len(columns)), columns, rotation=20)
    axis.set_yticks(range(len(rows)), rows)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            axis.text(j, i, fmt.format(value), ha="center", va="center", color="white", fontsize=9)
    axis.set_xlabel("held-out set of")
    axis.set_ylabel("model")
    axis.set_title(title)
    figure.colorbar(image, ax=axis, label=label)
    return _png(figure)


def confusion_matrix(
    title: str, truth: Sequence[str], predicted: Sequence[str], rows: Sequence[str], columns: Sequence[str]
) -> bytes:
    counts = [
        [sum(t == r and p == c for t, p in zip(truth, predicted, strict=True)) for c in columns] for r in rows
    ]
    figure, axis = plt.subplots(figsize=(1.5 + 1.2 * len(columns), 1.2 + 0.9 * len(rows)))
    axis.imshow(counts, cmap="Blues")
    for i, row in enumerate(counts):
        for j, value in enumerate(row):
            axis.text(j, i, str(value), ha="center", va="center")
    axis.set_xticks(range(len(columns)), columns)
    axis.set_yticks(range(len(rows)), rows)
    axis.set_xlabel("predicted")
    axis.set_ylabel("recorded vote")
    axis.set_title(title)
    return _png(figure)


def score_violins(title: str, groups: Sequence[tuple[str, Sequence[float], Sequence[float]]]) -> bytes:
    """Per group (a task's aspect): the agent's and the baseline's score distributions
    side by side, every sample."""
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    for index, (_, agent, baseline) in enumerate(groups):
        for offset, values, color in ((-0.2, agent, "#58b6c0"), (0.2, baseline, "#9658ca")):
            if len(values) > 1 and len(set(values)) > 1:
                parts = axis.violinplot([values], positions=[index + offset], widths=0.35, showmedians=True)
                for body in parts["bodies"]:
                    body.set_facecolor(color)
            axis.scatter([index + offset] * len(values), values, s=6, color=color, alpha=0.4)
    axis.set_xticks(range(len(groups)), [g[0] for g in groups], rotation=20)
    axis.set_ylim(0.5, 5.5)
    axis.set_ylabel("Judge score (1-5)")
    axis.scatter([], [], color="#58b6c0", label="agent (adapter)")
    axis.scatter([], [], color="#9658ca", label="baseline (base + persona)")
    axis.legend(loc="lower right", fontsize=8)
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    return _png(figure)


def win_rate_bars(
    title: str, labels: Sequence[str], rates: Sequence[tuple[float | None, float | None, float | None]]
) -> bytes:
    """Order-consistent agent win rate per group with its 95% interval (no bar or whisker
    where it is null); 50% marked."""
    figure, axis = plt.subplots(figsize=(max(6, 0.9 * len(labels)), 4))
    means = [100 * (r[0] if r[0] is not None and r[0] == r[0] else 0.0) for r in rates]
    errors = [
        [0.0 if r[1] is None else max(0.0, m - 100 * r[1]) for m, r in zip(means, rates, strict=True)],
        [0.0 if r[2] is None else max(0.0, 100 * r[2] - m) for m, r in zip(means, rates, strict=True)],
    ]
    axis.bar(range(len(labels)), means, yerr=errors, capsize=4, color="#58b6c0")
    axis.axhline(50, color="#888", linestyle="--", linewidth=1)
    axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    axis.set_ylim(0, 105)
    axis.set_ylabel("Agent wins (%, both orders agree)")
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    return _png(figure)


def saved_plot(artifacts: ArtifactStore, png: bytes, folder: str, name: str, title: str = "") -> str:
    """Store a plot as ``plots/<folder>/<name>.png`` and return its markdown: title, path, hash,
    the image inline."""
    path, sha = artifacts.write(png, "plots", folder, f"{name}.png")
    heading = f"**{title}** " if title else ""
    return f"{heading}`{path}` sha256 {sha[:12]}\n\n{inline(png, title or name)}"
