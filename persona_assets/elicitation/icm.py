"""Internal Coherence Maximization: an unsupervised search for labels a model finds coherent.

The energy of a labelling is ``alpha * mean signed margin - inconsistent pairs``,
where a claim's margin is log P(" True") - log P(" False") given every other
labelled claim as a demonstration (mutual predictability). Simulated annealing
proposes the model's own prediction for a picked claim, repairs the consistency
of the proposal, and accepts by Metropolis with a log temperature schedule.

Differences from the upstream fork, on purpose: every random choice comes from
one seeded generator whose state is checkpointed; the consistency penalty works
(the fork compared a dict to 1 and so never counted a pair); the acceptance test
never overflows; a proposal already scored by the consistency repair is not
scored again; margins are exact two-candidate log-odds, not top-5 guesses; the
leave-one-out prompts follow a seeded leaf order (``leaf_rank``), so a query's own
sibling is not systematically the demonstration right before it, and a proposal is
predicted from the same prompt order as the energy.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from persona_platform.persona_assets.elicitation.prompts import CANDIDATES, few_shot_prompt
from persona_platform.resources.llm.engine import Engine, ScoreRequest

CONSISTENCY_MODES = ("exactly_one", "at_most_one", "none")
POOL_ORDERS = ("tree", "naive")

Labels = list  # list[int | None], indexed by uid


@dataclass(frozen=True)
class IcmClaim:
    uid: int
    group: str
    question: str
    option: str
    gold: int


@dataclass(frozen=True)
class IcmParams:
    alpha: float = 3.5
    num_seed: int = 12
    iterations: int = 1000
    consistency_fix_iterations: int = 20
    proposal_fix_iterations: int = 10
    initial_temperature: float = 10.0
    final_temperature: float = 0.1
    schedule_constant: float = 2.75
    consistency: str = "exactly_one"
    sibling_weight: float = 100.0
    pool_order: str = "tree"
    seed: int = 0

    def __post_init__(self):
        if self.consistency not in CONSISTENCY_MODES:
            raise ValueError(
                f"consistency must be one of {', '.join(CONSISTENCY_MODES)}, got {self.consistency!r}"
            )
        if self.pool_order not in POOL_ORDERS:
            raise ValueError(f"pool_order must be one of {', '.join(POOL_ORDERS)}, got {self.pool_order!r}")
        if self.num_seed % 2:
            raise ValueError(f"num_seed must be even (half True, half False), got {self.num_seed}")

    def temperature(self, accepted: int) -> float:
        schedule = self.initial_temperature / (1.0 + self.schedule_constant * math.log(1 + accepted))
        return max(self.final_temperature, schedule)


# Labellings whose energy a search keeps (each a tuple of one label per claim).
MAX_SCORED_LABELLINGS = 4096


@dataclass(frozen=True)
class PoolMetric:
    energy: float
    mean_margin: float
    inconsistent: int


@dataclass
class SearchState:
    labels: Labels
    rng_state: list
    iteration: int
    accepted: int
    metric: PoolMetric
    trace: list[dict] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "metric": asdict(self.metric)})

    @classmethod
    def from_json(cls, text: str) -> SearchState:
        data = json.loads(text)
        return cls(
            labels=data["labels"],
            rng_state=data["rng_state"],
            iteration=data["iteration"],
            accepted=data["accepted"],
            metric=PoolMetric(**data["metric"]),
            trace=data["trace"],
        )


def tree_order(items: Sequence[int]) -> list[tuple[int, list[int]]]:
    """Leave-one-out prompts as a prefix tree: (query, demonstrations in order) per item.

    Split into halves A and B: every prompt for an item of A starts with all of B,
    then continues recursively within A (and the same for B). Each prompt holds
    every other item exactly once, and prompts share long prefixes, so with
    prefix reuse a pool costs O(n log n) demonstration tokens instead of O(n^2).
    """
    out: list[tuple[int, list[int]]] = []

    def visit(block: Sequence[int], prefix: list[int]) -> None:
        if len(block) == 1:
            out.append((block[0], prefix))
            return
        half = len(block) // 2
        first, second = block[:half], block[half:]
        visit(first, prefix + list(second))
        visit(second, prefix + list(first))

    if items:
        visit(list(items), [])
    return out


def naive_order(items: Sequence[int]) -> list[tuple[int, list[int]]]:
    return [(item, [other for other in items if other != item]) for item in items]


def leaf_rank(n: int, seed: int) -> list[int]:
    """A seeded position of every claim uid in the tree's leaf order.

    Claims arrive in split order, the two options of a question next to each other; built
    over that order, the tree would put a query's own sibling right before it in about half
    of the prompts. A seeded permutation makes that as rare as for any other claim (~1/n).
    """
    order = list(range(n))
    random.Random(f"icm-leaf-order:{seed}").shuffle(order)
    rank = [0] * n
    for position, uid in enumerate(order):
        rank[uid] = position
    return rank


class ClaimScorer:
    """Margins of claims given labelled demonstrations, through the engine's ``score``."""

    def __init__(
        self,
        engine: Engine,
        country: str,
        claims: Sequence[IcmClaim],
        pool_order: str = "tree",
        order_seed: int = 0,
    ):
        self.engine, self.country, self.claims = engine, country, claims
        self.pool_order = pool_order
        self.reuse_prefix = pool_order == "tree"
        self.rank = leaf_rank(len(claims), order_seed) if pool_order == "tree" else list(range(len(claims)))

    def order(self, pool: Sequence[int]) -> list[tuple[int, list[int]]]:
        """Leave-one-out prompts of a pool: (query, demonstrations in prompt order)."""
        ranked = sorted(pool, key=self.rank.__getitem__)
        return tree_order(ranked) if self.pool_order == "tree" else naive_order(ranked)

    def demos_for(self, query: int, labelled: Sequence[int]) -> list[int]:
        """The demonstrations ``query`` would get in a pool of ``labelled`` plus itself, in that pool's order,
        so that a proposal is predicted from the prompt the energy will score it with."""
        pool = sorted({*labelled, query})
        return next(demos for q, demos in self.order(pool) if q == query)

    def margins(self, queries: Sequence[tuple[int, Sequence[int]]], labels: Sequence[Labels]) -> list[float]:
        """One margin per (query uid, demo uids), demo labels from the matching labelling."""
        requests = []
        for (query, demos), labelling in zip(queries, labels, strict=True):
            demo_rows = [(self.claims[d].question, self.claims[d].option, labelling[d]) for d in demos]
            claim = self.claims[query]
            requests.append(
                ScoreRequest(
                    few_shot_prompt(self.country, demo_rows, (claim.question, claim.option)), CANDIDATES
                )
            )
        return [lp_true - lp_false for lp_true, lp_false in self.engine.score(requests, self.reuse_prefix)]

    def pool_margins(self, labellings: Sequence[Labels]) -> list[dict[int, float]]:
        """Leave-one-out margins of every labelled claim, for several labellings in one engine call."""
        queries, owners = [], []
        for index, labels in enumerate(labellings):
            pool = [uid for uid, label in enumerate(labels) if label is not None]
            for query, demos in self.order(pool):
                queries.append((query, demos))
                owners.append(index)
        values = self.margins(queries, [labellings[i] for i in owners])
        out: list[dict[int, float]] = [{} for _ in labellings]
        for (query, _), owner, value in zip(queries, owners, values, strict=True):
            out[owner][query] = value
        return out


class IcmSearch:
    def __init__(self, claims: Sequence[IcmClaim], params: IcmParams, scorer: ClaimScorer):
        if any(c.uid != i for i, c in enumerate(claims)):
            raise ValueError("claim uids must be 0..n-1 in order")
        self.claims, self.params, self.scorer = claims, params, scorer
        members: dict[str, list[int]] = defaultdict(list)
        for c in claims:
            members[c.group].append(c.uid)
        self.siblings = {c.uid: [u for u in members[c.group] if u != c.uid] for c in claims}
        self.groups = list(members.values())
        self._scored: dict[tuple, PoolMetric] = {}

    # -- the energy ------------------------------------------------------------

    def inconsistent_pairs(self, labels: Labels) -> list[tuple[int, int]]:
        mode = self.params.consistency
        if mode == "none":
            return []
        pairs = []
        for members in self.groups:
            labelled = [u for u in members if labels[u] is not None]
            for a_index, a in enumerate(labelled):
                for b in labelled[a_index + 1 :]:
                    both_true = labels[a] == 1 and labels[b] == 1
                    if both_true or (mode == "exactly_one" and labels[a] == labels[b]):
                        pairs.append((a, b))
        return pairs

    def metrics(self, labellings: Sequence[Labels]) -> list[PoolMetric]:
        """The energy of each labelling. A labelling's energy depends on nothing else (the pool's order comes
        from the labelled claims and the seed), and the search scores the same labelling again and again (a
        rejected proposal's repair, a repair tried in two steps: a third of the scorings on the sample), so
        each is scored once per search."""
        missing = list(
            dict.fromkeys(tuple(labels) for labels in labellings if tuple(labels) not in self._scored)
        )
        for labels, margins in zip(missing, self.scorer.pool_margins(missing), strict=True):
            signed = [m if labels[uid] == 1 else -m for uid, m in margins.items()]
            mean = sum(signed) / len(signed) if signed else 0.0
            inconsistent = len(self.inconsistent_pairs(labels))
            if len(self._scored) >= MAX_SCORED_LABELLINGS:
                self._scored.pop(next(iter(self._scored)))  # the oldest
            self._scored[labels] = PoolMetric(self.params.alpha * mean - inconsistent, mean, inconsistent)
        return [self._scored[tuple(labels)] for labels in labellings]

    # -- the moves ---------------------------------------------------------------

    def consistency_fix(
        self, labels: Labels, metric: PoolMetric | None, rounds: int, rng: random.Random
    ) -> tuple[Labels, PoolMetric]:
        """Repair inconsistent pairs while that does not lower the energy (first improvement).

        ``metric=None`` means the labelling is unscored: its first repair is taken.
        """
        best_labels, best = labels, metric
        for _ in range(rounds):
            pairs = self.inconsistent_pairs(best_labels)
            if not pairs:
                break
            rng.shuffle(pairs)
            improved = False
            for a, b in pairs:
                candidates = [_repaired(best_labels, a, b, first_true) for first_true in (True, False)]
                scored = self.metrics(candidates)
                pick = 0 if scored[0].energy >= scored[1].energy else 1
                if best is None or scored[pick].energy >= best.energy:
                    best_labels, best, improved = candidates[pick], scored[pick], True
                    break
            if not improved or best.inconsistent == 0:
                break
        if best is None:
            best = self.metrics([best_labels])[0]
        return best_labels, best

    def initial_state(self) -> SearchState:
        rng = random.Random(self.params.seed)
        labels: Labels = [None] * len(self.claims)
        seeds = min(self.params.num_seed, len(self.claims))
        seed_labels = [1] * (seeds // 2) + [0] * (seeds - seeds // 2)
        rng.shuffle(seed_labels)
        for uid, label in enumerate(seed_labels):
            labels[uid] = label
        metric = self.metrics([labels])[0]
        labels, metric = self.consistency_fix(labels, metric, self.params.consistency_fix_iterations, rng)
        return SearchState(labels, _rng_state(rng), 0, 0, metric)

    def step(self, state: SearchState, rng: random.Random) -> dict:
        """One annealing iteration; mutates ``state`` and returns its trace row."""
        labels = state.labels
        weights = [1.0] * len(labels)
        for uid, label in enumerate(labels):
            if label is not None:
                for sibling in self.siblings[uid]:
                    if labels[sibling] is None:
                        weights[sibling] = self.params.sibling_weight
        uid = rng.choices(range(len(labels)), weights=weights)[0]
        demos = self.scorer.demos_for(
            uid, [u for u, label in enumerate(labels) if label is not None and u != uid]
        )
        margin = self.scorer.margins([(uid, demos)], [labels])[0]
        proposed = 1 if margin > 0 else 0
        temperature = self.params.temperature(state.accepted)
        row = {
            "iteration": state.iteration,
            "uid": uid,
            "previous_label": labels[uid],
            "proposed_label": proposed,
            "temperature": temperature,
            "pool_order": self.scorer.pool_order,
            "energy_before": state.metric.energy,
            "delta": 0.0,
            "accepted": False,
        }
        if proposed != labels[uid]:
            candidate = list(labels)
            candidate[uid] = proposed
            candidate, metric = self.consistency_fix(
                candidate, None, self.params.proposal_fix_iterations, rng
            )
            delta = metric.energy - state.metric.energy
            draw = rng.random()
            # exp(delta / T) is only taken for delta < 0, where it cannot overflow.
            accepted = delta >= 0 or draw < math.exp(delta / temperature)
            row.update(delta=delta, accepted=accepted)
            if accepted:
                state.labels, state.metric = candidate, metric
                state.accepted += 1
        row.update(
            energy=state.metric.energy,
            inconsistent=state.metric.inconsistent,
            labelled=sum(label is not None for label in state.labels),
            gold_agreement=self.gold_agreement(state.labels),
        )
        state.iteration += 1
        return row

    def run(
        self,
        state: SearchState | None = None,
        checkpoint: Callable[[SearchState], None] | None = None,
        checkpoint_every: int = 25,
        progress: Callable[[int, int, dict], None] | None = None,
    ) -> SearchState:
        """Anneal until ``params.iterations`` (from ``state`` when resuming); ``checkpoint`` gets the state
        every ``checkpoint_every`` iterations and at the end, ``progress`` every iteration's numbers."""
        state = state or self.initial_state()
        rng = random.Random()
        rng.setstate(_rng_tuple(state.rng_state))
        while state.iteration < self.params.iterations:
            row = self.step(state, rng)
            state.trace.append(row)
            state.rng_state = _rng_state(rng)
            if progress:
                numbers = {"energy": row["energy"], "accepted": state.accepted, "T": row["temperature"]}
                progress(state.iteration, self.params.iterations, numbers)
            if checkpoint and (
                state.iteration % checkpoint_every == 0 or state.iteration == self.params.iterations
            ):
                checkpoint(state)
        return state

    def gold_agreement(self, labels: Labels) -> float | None:
        labelled = [(label, self.claims[uid].gold) for uid, label in enumerate(labels) if label is not None]
        return sum(a == b for a, b in labelled) / len(labelled) if labelled else None


def _repaired(labels: Labels, a: int, b: int, first_true: bool) -> Labels:
    out = list(labels)
    out[a], out[b] = (1, 0) if first_true else (0, 1)
    return out


def _rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_tuple(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
