"""Plots read right: cell text readable on its cell, colours that match their legend, nothing drawn for a
value that does not exist, every interval drawn, every n shown."""

import math

import matplotlib.pyplot as plt
import pytest
from matplotlib import colormaps
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.colors import to_rgba
from matplotlib.container import BarContainer, ErrorbarContainer

from persona_platform.persona_assets.plots import (
    Bar,
    accuracy_bars,
    accuracy_curves,
    confusion_matrix,
    heatmap,
    score_violins,
    text_color,
    win_rate_bars,
)


@pytest.fixture
def figures():
    """Figures a test opened, closed after it."""
    opened = []
    yield opened.append
    for figure in opened:
        plt.close(figure)


def cell_texts(axis):
    """(x, y) -> the text artist printed at that data position."""
    return {tuple(round(v) for v in t.get_position()): t for t in axis.texts}


def footnote(figure) -> str:
    return "\n".join(t.get_text() for t in figure.texts)


@pytest.mark.parametrize(
    ("color", "expected"),
    [
        ("white", "black"),
        ("#ffff66", "black"),  # light yellow: the viridis end where white text was unreadable
        (colormaps["viridis"](1.0), "black"),
        (colormaps["Blues"](0.0), "black"),
        ("#000080", "white"),  # navy: where black text was unreadable in the confusion matrix
        (colormaps["Blues"](1.0), "white"),
        (colormaps["viridis"](0.0), "white"),
        ("black", "white"),
    ],
)
def test_cell_text_is_dark_on_light_cells_and_light_on_dark_ones(color, expected):
    assert text_color(to_rgba(color)) == expected


def test_heatmap_axis_labels_are_the_ones_passed_and_ns_are_printed(figures):
    figures(
        figure := heatmap(
            "Similarity (n = 2 agents)",
            ["alice", "bob"],
            ["Aldoria", "Borvania"],
            [[0.9, 0.6], [0.5, 0.8]],
            "similarity",
            xlabel="country (survey answers)",
            ylabel="agent",
            higher_is_better=True,
            column_counts=[32, 30],
        )
    )
    axis = figure.axes[0]
    assert (axis.get_xlabel(), axis.get_ylabel()) == ("country (survey answers)", "agent")
    assert [t.get_text() for t in axis.get_xticklabels()] == ["Aldoria\n(n=32)", "Borvania\n(n=30)"]
    assert "no interval" in footnote(figure)


def test_heatmap_defaults_keep_the_perplexity_labels(figures):
    figures(figure := heatmap("Perplexity", ["base"], ["alice"], [[12.0]], "perplexity"))
    assert (figure.axes[0].get_xlabel(), figure.axes[0].get_ylabel()) == ("held-out set of", "model")


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_heatmap_draws_the_better_cell_darker_with_readable_text(figures, higher_is_better):
    values = [[0.2, 0.5], [0.8, float("nan")]]
    figures(figure := heatmap("t", ["a", "b"], ["x", "y"], values, "v", higher_is_better=higher_is_better))
    axis = figure.axes[0]
    image = axis.images[0]

    def luminance(value):
        r, g, b, _ = image.cmap(image.norm(value))
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    best, worst = (0.8, 0.2) if higher_is_better else (0.2, 0.8)
    assert luminance(best) < luminance(worst)
    texts = cell_texts(axis)
    best_cell, worst_cell = ((0, 1), (0, 0)) if higher_is_better else ((0, 0), (0, 1))
    assert to_rgba(texts[best_cell].get_color()) == to_rgba("white")
    assert to_rgba(texts[worst_cell].get_color()) == to_rgba("black")
    assert texts[(1, 1)].get_text() == "n/a"


def test_confusion_matrix_has_its_total_n_and_white_text_on_its_darkest_cell(figures):
    truth = ["Aye"] * 50 + ["No"] * 10
    predicted = ["Aye"] * 45 + ["No"] * 5 + ["No"] * 10
    figures(figure := confusion_matrix("Votes", truth, predicted, ["Aye", "No"], ["Aye", "No", "Unknown"]))
    axis = figure.axes[0]
    assert "n = 60 votes" in axis.get_title()
    texts = cell_texts(axis)
    assert texts[(0, 0)].get_text() == "45" and to_rgba(texts[(0, 0)].get_color()) == to_rgba("white")
    assert texts[(2, 0)].get_text() == "0" and to_rgba(texts[(2, 0)].get_color()) == to_rgba("black")
    assert [t.get_text() for t in axis.get_yticklabels()] == ["Aye\n(n=50)", "No\n(n=10)"]
    assert len(figure.axes) == 2  # the colorbar


def test_violin_lines_take_their_system_colour_and_the_legend_stays_off_the_violins(figures):
    groups = [("advice/style", [1, 2, 3, 4, 5, 4], [2, 3, 3, 2]), ("debate/style", [3, 4, 5], [4, 4])]
    figures(figure := score_violins("Scores", groups))
    axis = figure.axes[0]
    legend = axis.get_legend()
    legend_colors = {tuple(h.get_facecolor()[0]) for h in legend.legend_handles}
    line_colors = {
        tuple(c) for lc in axis.collections if isinstance(lc, LineCollection) for c in lc.get_colors()
    }
    body_colors = {
        tuple(b.get_facecolor()[0][:3])
        for b in axis.collections
        if isinstance(b, PolyCollection) and not isinstance(b, LineCollection)
    }
    # Three violins (the baseline's constant [4, 4] gets none): two agent, one baseline, in both colours.
    assert line_colors == legend_colors
    assert body_colors == {c[:3] for c in legend_colors}
    figure.canvas.draw()
    assert legend.get_window_extent().x0 >= axis.get_window_extent().x1
    assert [t.get_text() for t in axis.get_xticklabels()] == [
        "advice/style\nn = 6 / 4",
        "debate/style\nn = 3 / 2",
    ]


def bars_and_whiskers(axis):
    bars = [p for c in axis.containers if isinstance(c, BarContainer) for p in c.patches]
    whiskers = [c for c in axis.containers if isinstance(c, ErrorbarContainer)]
    return bars, whiskers


def test_win_rates_that_are_all_null_draw_no_bar_and_say_why(figures):
    figures(figure := win_rate_bars("Wins", ["a/t", "b/t"], [(None, None, None), (math.nan, None, None)]))
    axis = figure.axes[0]
    assert bars_and_whiskers(axis) == ([], [])
    texts = [t.get_text() for t in axis.texts]
    assert any("no pair was judged" in t for t in texts)
    assert sum("n/a" in t for t in texts) == 2


def test_a_null_rate_gets_no_bar_and_a_null_interval_no_whisker(figures):
    rates = [(0.6, 0.5, 0.7), (None, None, None), (0.0, None, None)]
    figures(
        figure := win_rate_bars("Wins", ["a/t", "b/t", "c/t"], rates, counts=[40, 0, 12], ties=[4, 0, 12])
    )
    axis = figure.axes[0]
    bars, whiskers = bars_and_whiskers(axis)
    assert [(round(b.get_x() + b.get_width() / 2), b.get_height()) for b in bars] == [(0, 60.0), (2, 0.0)]
    assert len(whiskers) == 1
    texts = [t.get_text() for t in axis.texts]
    assert "0%\nall tied" in texts and not any("Every pair tied" in t for t in texts)
    assert [t.get_text() for t in axis.get_xticklabels()] == ["a/t\n(n=40)", "b/t\n(n=0)", "c/t\n(n=12)"]


def test_win_rates_where_every_pair_tied_say_so_on_the_axes(figures):
    figures(
        figure := win_rate_bars("Wins", ["a/t", "b/t"], [(0.0, None, None)] * 2, counts=[5, 3], ties=[5, 3])
    )
    assert any("Every pair tied" in t.get_text() for t in figure.axes[0].texts)


def test_accuracy_curves_draw_one_band_per_method_spanning_its_interval(figures):
    curves = {
        "gold": [(20, 0.7, 0.6, 0.8), (10, 0.6, 0.5, 0.7)],
        "icm": [(10, 0.55, 0.5, 0.6), (20, 0.65, None, None), (30, 0.7, 0.62, 0.77)],
    }
    figures(figure := accuracy_curves("Curves", curves, n=120, interval="95% cluster bootstrap"))
    axis = figure.axes[0]
    bands = [c for c in axis.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2
    gold = bands[0].get_paths()[0].vertices
    assert (gold[:, 1].min(), gold[:, 1].max()) == pytest.approx((50, 80))
    # The icm point without an interval splits its band in two rather than pinching it to the line.
    assert len(bands[1].get_paths()) == 2
    assert [len(line.get_xdata()) for line in axis.lines] == [2, 3]
    assert any("95% cluster bootstrap" in t.get_text() for t in axis.get_legend().get_texts())
    assert "n = 120 test questions" in footnote(figure)


def test_accuracy_bars_print_n_and_draw_no_whisker_without_an_interval(figures):
    bars = [Bar("icm", 0.7, 0.6, 0.8, n=120), Bar("gold", 0.75, None, None, n=120)]
    figures(figure := accuracy_bars("Accuracy", bars, interval="95% cluster bootstrap"))
    axis = figure.axes[0]
    drawn, whiskers = bars_and_whiskers(axis)
    assert len(drawn) == 2 and len(whiskers) == 1
    (whisker,) = whiskers[0].lines[2][0].get_segments()
    assert whisker.ravel().tolist() == pytest.approx([0, 60, 0, 80])
    assert [t.get_text() for t in axis.get_xticklabels()] == [
        "ICM (unsupervised)\n(n=120)",
        "Golden supervision\n(n=120)",
    ]
    assert "75.0%\nno interval" in [t.get_text() for t in axis.texts]
    assert "95% cluster bootstrap" in footnote(figure)
