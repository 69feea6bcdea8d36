"""One-line verdicts on a result table: what it shows, and when it shows nothing, why."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# Scores closer than this are the same for a verdict (a tenth of a percentage point).
SAME = 1e-3
NO_SIGNAL = "the model shows no signal here (the embedded model has none by design)"


def scores_verdict(scores: Mapping[str, float], what: str, percent: bool = True) -> str:
    """Which of ``scores`` (method -> value) is highest and lowest, or that they are all the same."""
    if not scores:
        return f"no {what} to compare"
    shown = {m: f"{100 * v:.1f}%" if percent else f"{v:.3g}" for m, v in scores.items()}
    if max(scores.values()) - min(scores.values()) < SAME:
        return f"all {len(scores)} {what} score the same ({next(iter(shown.values()))}): {NO_SIGNAL}"
    best, worst = max(scores, key=scores.get), min(scores, key=scores.get)
    return f"highest: {best} ({shown[best]}); lowest: {worst} ({shown[worst]}) of {len(scores)} {what}"


def perplexity_verdict(
    models: Sequence[str], agents: Sequence[str], values: Sequence[Sequence[float]]
) -> str:
    """For how many agents their own adapter has the lowest perplexity on their held-out utterances."""
    flat = [v for row in values for v in row]
    if flat and max(flat) - min(flat) < SAME:
        return f"every model has the same perplexity on every agent: {NO_SIGNAL}"
    own = [
        a
        for j, a in enumerate(agents)
        if a in models and min(range(len(models)), key=lambda i: values[i][j]) == models.index(a)
    ]
    lowest = f"{len(own)} of {len(agents)} agents"
    return f"the agent's own adapter has the lowest perplexity on its held-out utterances for {lowest}"


def ties_verdict(decided: int, tied: int) -> str:
    """Pairwise comparisons: how many were decided, or that none was."""
    if decided == 0:
        return f"every one of {tied} pairs tied (or went both ways): no decision; {NO_SIGNAL}"
    return f"{decided} of {decided + tied} pairs decided, {tied} tied"


# A diagonal "stands out" at this one-sided permutation p-value or below.
DIAGONAL_ALPHA = 0.05


def diagonal_verdict(tests: Sequence[Mapping]) -> str:
    """Country personas: in how many (variant, label source) matrices the diagonal stands out; the ICM
    one in detail."""
    tested = [t for t in tests if t["p_value"] is not None]
    if not tested:
        return "fewer than 2 countries: no matrix to test"
    standing = [t for t in tested if t["p_value"] <= DIAGONAL_ALPHA]
    icm = next((t for t in tested if t["labels"] == "icm"), tested[0])
    detail = (
        f"{icm['labels']} ({icm['variant']}): own country closest for {icm['own_first']} of "
        f"{icm['countries']}, diagonal {icm['diagonal']:.3f} vs {icm['off_diagonal']:.3f} off it, "
        f"p = {icm['p_value']:.3g}"
    )
    if not standing:
        return f"the diagonal stands out in none of {len(tested)} matrices (p > {DIAGONAL_ALPHA}); {detail}"
    return f"the diagonal stands out in {len(standing)} of {len(tested)} matrices; {detail}"
