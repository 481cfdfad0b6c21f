"""D2-Pruning (Maharana, Yadav & Bansal, ICLR 2024): difficulty and diversity by message passing on the kNN graph.

1. hardness h ∈ [0, 1]: the score oriented so that larger = harder (shardwalk.core.coresets.scores.HARD_HIGH), min-max scaled
   over the training rows;
2. forward message passing: s(u) = h(u) + Σ_{v ∈ N(u)} exp(−γ_f · d(u, v) / d̄) · h(v), over u's k nearest
   training neighbours (d: the graph's distances, d̄ their mean over all edges, so γ is scale-free);
3. reverse message passing = greedy selection: repeatedly take the unselected row with the largest s (ties:
   the seeded hash key, then the id) among classes with budget left, and lower each of its neighbours' s by
   exp(−γ_r · d(u, v) / d̄) · max(s(u), 0), until the budget is spent (class budgets as in class-balanced CCS).

Exact for any sharding: a row's messages use only its own graph row (its neighbours and distances) and the
global hardness, and the greedy runs in rounds that each take the longest prefix of the global top-`BATCH`
that the sequential greedy would take too — rows are taken in order until the first one a pick of this
round has lowered (every update only lowers scores, so no row outside the batch can overtake). Updates are
applied in pick order, so the bits equal the one-at-a-time greedy's. The driver sees only the top rows and
their neighbour lists per round, never the graph.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from shardwalk.core.coresets.selection import budget, check_keep, class_budgets
from shardwalk.core.data.builtin import hash_unit
from shardwalk.core.errors import DataError, InvariantError

BATCH = 256  # candidates per round
GAMMA_FORWARD = 1.0
GAMMA_REVERSE = 1.0


@dataclass(frozen=True)
class GraphRows:
    """One shard's graph rows restricted to training rows: neighbours padded with -1, distances."""

    ids: np.ndarray  # (n,) int64
    neighbors: np.ndarray  # (n, k) int64, -1 = none
    distances: np.ndarray  # (n, k) float64


class D2Shard:
    """A shard's rows for D2: its graph rows, their scores and labels, the current message-passed scores."""

    def __init__(self, rows: GraphRows, hardness_of: Callable[[np.ndarray], np.ndarray], labels: np.ndarray | None,
                 *, mean_distance: float, seed: int = 0, gamma_forward: float = GAMMA_FORWARD,
                 gamma_reverse: float = GAMMA_REVERSE):
        self.ids, self.nbr, dist = rows.ids, rows.neighbors, rows.distances
        scale = mean_distance if mean_distance > 0 else 1.0
        valid = self.nbr >= 0
        self.w_reverse = np.where(valid, np.exp(-gamma_reverse * dist / scale), 0.0)
        h_nbr = np.where(valid, hardness_of(np.where(valid, self.nbr, self.ids[:, None])), 0.0)
        w_forward = np.where(valid, np.exp(-gamma_forward * dist / scale), 0.0)
        self.score = hardness_of(self.ids) + (w_forward * h_nbr).sum(axis=1)
        self.key = hash_unit(self.ids, seed)
        self.labels = np.zeros(len(self.ids), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        self.taken = np.zeros(len(self.ids), dtype=bool)

    def class_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, counts) of my rows."""
        return np.unique(self.labels, return_counts=True)

    def top(self, full: np.ndarray, batch: int) -> dict[str, np.ndarray]:
        """My `batch` best rows not taken and of classes not `full`: score, key, id, label, neighbours."""
        ok = ~self.taken & ~np.isin(self.labels, full)
        rows = np.flatnonzero(ok)
        order = rows[np.lexsort((self.ids[rows], self.key[rows], -self.score[rows]))[:batch]]
        return {"score": self.score[order], "key": self.key[order], "id": self.ids[order], "label": self.labels[order],
                "neighbors": self.nbr[order], "weights": self.w_reverse[order]}

    def apply(self, picked: np.ndarray, targets: np.ndarray, amounts: np.ndarray) -> None:
        """Mark `picked` ids taken and lower `targets` by `amounts`, in the order given (the greedy's order)."""
        self.taken |= np.isin(self.ids, picked)
        pos = {int(i): r for r, i in enumerate(self.ids.tolist())}
        rows = np.array([pos.get(int(t), -1) for t in targets.tolist()], dtype=np.int64)
        mine = rows >= 0
        np.subtract.at(self.score, rows[mine], amounts[mine])

    def selected(self) -> np.ndarray:
        """My taken ids, sorted."""
        return np.sort(self.ids[self.taken])


Ask = Callable[..., list]


def _merge_top(answers: list[dict[str, np.ndarray]], batch: int) -> dict[str, np.ndarray]:
    merged = {k: np.concatenate([a[k] for a in answers]) for k in answers[0]}
    order = np.lexsort((merged["id"], merged["key"], -merged["score"]))[:batch]
    return {k: v[order] for k, v in merged.items()}


def greedy_select(ask: Ask, budgets: Mapping[int, int], batch: int = BATCH) -> int:
    """Run the reverse message passing against shards reached through `ask`; returns the rows taken."""
    left = {int(c): int(b) for c, b in budgets.items()}
    total = 0
    while any(b > 0 for b in left.values()):
        full = np.array([c for c, b in left.items() if b <= 0], dtype=np.int64)
        cand = _merge_top(ask("top", full=full, batch=batch), batch)
        if len(cand["id"]) == 0:
            raise InvariantError(f"D2 ran out of rows with {sum(left.values())} still to take")
        picked, targets, amounts, lowered = [], [], [], set()
        for i in range(len(cand["id"])):
            u, c = int(cand["id"][i]), int(cand["label"][i])
            if u in lowered:
                break  # its score changed this round: the order past it is not known
            if left.get(c, 0) <= 0:
                continue  # its class filled up this round: the sequential greedy skips it too
            picked.append(u)
            left[c] -= 1
            nbr, w = cand["neighbors"][i], cand["weights"][i]
            valid = nbr >= 0
            targets.extend(nbr[valid].tolist())
            amounts.extend((w[valid] * max(float(cand["score"][i]), 0.0)).tolist())
            lowered.update(nbr[valid].tolist())
        ask("apply", picked=np.array(picked, dtype=np.int64), targets=np.array(targets, dtype=np.int64),
            amounts=np.array(amounts, dtype=np.float64))
        total += len(picked)
    return total


def class_budget_map(ask: Ask, m: int, class_balanced: bool) -> dict[int, int]:
    """The budget per class (largest remainder, as class-balanced CCS) or one budget for all rows."""
    answers = ask("class_counts")
    merged: dict[int, int] = {}
    for labels, counts in answers:
        for lab, c in zip(labels.tolist(), counts.tolist()):
            merged[lab] = merged.get(lab, 0) + c
    classes = sorted(merged)
    if not class_balanced:
        if len(classes) > 1:
            raise InvariantError("plain D2 is built with one label for every row")
        return {classes[0]: m}
    sizes = np.array([merged[c] for c in classes], dtype=np.int64)
    return dict(zip(classes, class_budgets(sizes, m).tolist()))


def hardness_table(ids: np.ndarray, values: np.ndarray, hard_high: bool) -> Callable[[np.ndarray], np.ndarray]:
    """A lookup id → hardness in [0, 1] (min-max over the given training rows); unknown ids are an error."""
    order = np.argsort(ids)
    sorted_ids = np.asarray(ids, dtype=np.int64)[order]
    h = np.asarray(values, dtype=np.float64)[order]
    h = h if hard_high else -h
    lo, hi = float(h.min()), float(h.max())
    h = (h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)

    def lookup(query: np.ndarray) -> np.ndarray:
        q = np.asarray(query, dtype=np.int64)
        pos = np.clip(np.searchsorted(sorted_ids, q), 0, len(sorted_ids) - 1)
        if len(q) and not np.array_equal(sorted_ids[pos], q):
            raise DataError("d2: a graph row names an id that has no score")
        return h[pos]

    return lookup


def training_rows(ids: np.ndarray, neighbors: np.ndarray, distances: np.ndarray, train_ids: np.ndarray) -> GraphRows:
    """The graph rows of training ids, with neighbours outside the training rows dropped (padded with -1)."""
    keep = np.isin(ids, train_ids)
    nbr, dist = neighbors[keep], distances[keep].astype(np.float64)
    valid = np.isin(nbr, train_ids)
    return GraphRows(ids[keep].astype(np.int64), np.where(valid, nbr, -1).astype(np.int64), np.where(valid, dist, 0.0))


def local_ask(shards: list[D2Shard]) -> Ask:
    """An `ask` over in-process shards (tests, and the single-process API)."""
    return lambda name, **kw: [getattr(s, name)(**kw) for s in shards]


def d2_select_arrays(ids: np.ndarray, neighbors: np.ndarray, distances: np.ndarray, values: np.ndarray,
                     labels: np.ndarray | None, keep: float, *, hard_high: bool = True, class_balanced: bool = False,
                     seed: int = 0, shards: int = 1, batch: int = BATCH) -> np.ndarray:
    """In one process: the D2 coreset of ⌊keep·N⌋ ids (the same for any `shards`); rows are graph rows."""
    ids = np.asarray(ids, dtype=np.int64)
    rows = GraphRows(ids, np.asarray(neighbors, dtype=np.int64), np.asarray(distances, dtype=np.float64))
    lookup = hardness_table(ids, values, hard_high)
    mean_d = mean_distance([distance_sum(rows)])
    bounds = np.linspace(0, len(ids), shards + 1).astype(int)
    lab = None if labels is None or not class_balanced else np.asarray(labels)
    parts = [D2Shard(GraphRows(ids[a:b], rows.neighbors[a:b], rows.distances[a:b]), lookup,
                     None if lab is None else lab[a:b], mean_distance=mean_d, seed=seed)
             for a, b in itertools.pairwise(bounds)]
    ask = local_ask(parts)
    m = budget(check_keep(keep), len(ids))
    taken = greedy_select(ask, class_budget_map(ask, m, class_balanced), batch)
    out = np.sort(np.concatenate([p.selected() for p in parts]))
    if taken != m or len(out) != m:
        raise InvariantError(f"d2 selected {len(out)} rows, expected {m}")
    return out


def distance_sum(rows: GraphRows) -> tuple[Fraction, int]:
    """The exact sum and the count of a shard's edge distances: shards add them without rounding, so the
    mean distance (and every weight) has the same bits for any sharding."""
    valid = rows.neighbors >= 0
    return sum(map(Fraction, rows.distances[valid].tolist()), Fraction(0)), int(valid.sum())


def mean_distance(sums: list[tuple[Fraction, int]]) -> float:
    """The mean edge distance from every shard's `distance_sum`."""
    total, edges = sum((s for s, _ in sums), Fraction(0)), sum(n for _, n in sums)
    return float(total / edges) if edges else 1.0
