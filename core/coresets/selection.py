"""The exact distributed selection protocol behind every coreset method (CCS, random, top-k).

Every method reduces to "per group, keep the k smallest rows of a lexicographic order", where a row's
order is a tuple of uint64 columns ending in its unique id (so ties are impossible) and the middle
column is a seeded per-example hash key (`shardwalk.core.data.builtin.hash_unit`), which makes "the k smallest keys"
a uniform sample. The k-th smallest tuple of a group is found by a distributed radix selection: each
shard answers small histograms (`ShardSelector.radix_round`), the driver narrows the candidate range
8 bits at a time, and once at most `FETCH` candidates remain the shards send those rows' tuples. So
the driver only ever sees O(groups · 256) numbers per round, never the scores, and the result does not
depend on how rows are split into shards. core/coresets/single_process.py runs that same protocol in one process.

CCS, precisely (docs/design.md "CCS"):
  1. cutoff: drop the c = ⌊β·N⌋ hardest rows by (hardness, key, id) — hardness is the score oriented
     so that larger = harder (shardwalk.core.coresets.scores.HARD_HIGH); ties at the cut are broken by the hash key.
  2. split the rest into `strata` strata of equal width in score value over [min, max] of the kept
     rows; the max is included in the last stratum (the reference code's `max·1.0001` upper edge
     drops the max when it is negative, as AUM can be, and yields no strata at all when all scores
     equal 0 — the reference then returns an empty coreset; here all rows share stratum 0 and the
     result is a uniform sample of exactly m rows).
  3. budget m = ⌊keep·N⌋ allocated smallest stratum first, each stratum getting
     min(size, ⌊remaining / strata left⌋) (ties in size by stratum index).
  4. inside a stratum take the rows with the smallest (key, id).
  class_balanced: the class budgets m_c are the largest-remainder split of m proportional to class
  sizes, and steps 1–4 run within each class (cutoff ⌊β·N_c⌋, own score range, own strata).

β default (`default_beta`): 0.3 at keep ≤ 0.1 (90 % pruning, the paper's CIFAR-10 setting), 0 at
keep ≥ 0.5, linear in keep in between (e.g. 0.15 at keep = 0.3). β + keep > 1 is a ConfigError.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardwalk.core import validate
from shardwalk.core.coresets.scores import HARD_HIGH
from shardwalk.core.coresets.selection_names import (  # noqa: F401  (METHODS: public here too)
    AUTO,
    METHODS,
    check_method_name,
    parse_method,
)
from shardwalk.core.data.builtin import hash_unit
from shardwalk.core.errors import ConfigError, DataError, InvariantError

RADIX_BITS = 8
FETCH = 256  # once a group has at most this many candidates, shards send the rows themselves
_NONE, _ALL, _HIST, _FETCH, _DONE = 0, 1, 2, 3, 4
Ask = Callable[..., list]  # ask(method_name, **kwargs) -> one answer per shard


# ----------------------------------------------------------------------------- parameters


def default_beta(keep: float) -> float:
    """The hard-cutoff ratio β for a keep fraction (0.3 at keep ≤ 0.1, 0 at keep ≥ 0.5, linear between)."""
    if keep <= 0.1:
        return 0.3
    if keep >= 0.5:
        return 0.0
    return 0.3 * (0.5 - keep) / 0.4


BETA_GRID = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)  # the CCS paper's grid for β = "auto"
VALIDATION = 0.15  # the share of the training rows held out to choose β


def check_beta(value: Any, key: str = "beta") -> str | float:
    """A β setting: "auto" or a number in [0, 1)."""
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"{key} must be \"auto\" or a number in [0, 1), got {value!r}")
    return float(value)


def beta_candidates(keep: float, grid: Sequence[float] = BETA_GRID) -> list[float]:
    """The grid's β values that leave room for the budget (β + keep ≤ 1)."""
    return [b for b in grid if b + keep <= 1.0 + 1e-12]


def tuning_plan(methods: Sequence[str], beta: str | float) -> tuple[list[str], tuple[float, ...]]:
    """The CCS method names β tuning validates, and its β grid: every CCS method on `BETA_GRID` when β is
    "auto"; with a fixed β only the `ccs-SCORE-auto` methods (for their class balance), on that β alone."""
    ccs = [name for name in methods if parse_method(name)["method"] == "ccs"]
    if beta == "auto":
        return ccs, BETA_GRID
    return [name for name in ccs if parse_method(name)["class_balanced"] == AUTO], (float(beta),)


def choose_beta(accuracy: Mapping[float, float]) -> float:
    """The β of the highest validation accuracy; ties go to the smaller β (the less the data is cut)."""
    return min(accuracy, key=lambda b: (-accuracy[b], b))


CONFIRM_SEEDS = 2  # fresh training seeds on which a tuned β must beat random again (β = "auto")


def beats_random(beta_accuracy: Sequence[float], random_accuracy: Sequence[float]) -> bool:
    """Whether the tuned β beat random on average over the refits (fresh subsets, fresh training seeds).

    The tuning fit is left out: it is biased upwards (the best of the grid's noisy scores; on mnist1d at
    keep 0.5 it beat random by +0.002 … +0.009 on validation in all 6 trials while losing on the test
    split). A tie counts for random (free, simpler).
    """
    if len(beta_accuracy) != len(random_accuracy) or not beta_accuracy:
        raise InvariantError(f"beats_random needs paired fits, got {len(beta_accuracy)} and {len(random_accuracy)}")
    return float(np.mean(beta_accuracy)) > float(np.mean(random_accuracy))


def tuning_variants(methods: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The CCS variants β tuning fits for parsed `methods`, each once: a `ccs-SCORE-auto` method needs both its
    plain and its class-balanced variant (shardwalk.core.coresets.selection_names.AUTO)."""
    out: list[dict[str, Any]] = []
    for method in methods:
        auto = method["class_balanced"] == AUTO
        for cb in (False, True) if auto else (bool(method["class_balanced"]),):
            variant = {**method, "class_balanced": cb}
            if variant not in out:
                out.append(variant)
    return out


def verdict_accuracy(verdict: Mapping[str, Any]) -> float:
    """The mean refit validation accuracy of what a tuned variant selects: its β, or random where β lost.

    `verdict` is one (variant, rate) of β tuning: {beta (None: random), confirm: {beta, random} per fit, the
    tuning fit first}. The tuning fit is left out, as in `beats_random`.
    """
    side = "beta" if verdict["beta"] is not None else "random"
    return float(np.mean(verdict["confirm"][side][1:]))


def choose_balance(verdicts: Mapping[bool, Mapping[str, Any]]) -> bool:
    """A `-auto` method's class balance at one rate (True = class-balanced): the variant whose verdict scored
    higher on the refits (`verdict_accuracy`); a tie goes to class-balanced (the safer split for skewed labels).

    Neither variant wins everywhere (bench_coreset, 5 seeds): on mnist1d 100k plain CCS beat random by +0.013 /
    +0.006 / +0.004 at keep 0.1 / 0.3 / 0.5 where class-balanced gained +0.003 / −0.001 / 0; on MNIST-5k
    class-balanced won at keep 0.1 and 0.3 where plain CCS fell back to random.
    """
    if not verdicts:
        raise InvariantError("choose_balance needs at least one tuned variant")
    return max(verdicts, key=lambda cb: (verdict_accuracy(verdicts[cb]), cb))


def method_verdicts(methods: Sequence[Mapping[str, Any]], rates: Sequence[float],
                    tuned: Mapping[tuple[int, float], Mapping[str, Any]]) -> dict[tuple[int, float], dict[str, Any]]:
    """β tuning's verdict per (index into `methods`, rate), from `tuned` per (index into
    `tuning_variants(methods)`, rate): a fixed balance's is its variant's; a `-auto` method's is the variant
    `choose_balance` takes, plus `class_balanced` (the choice), `balance` (each variant's `verdict_accuracy` by
    "plain" / "cb") and the CPU-seconds of both variants."""
    variants = tuning_variants(methods)
    out: dict[tuple[int, float], dict[str, Any]] = {}
    for m, method in enumerate(methods):
        auto = method["class_balanced"] == AUTO
        for r in map(float, rates):
            if not auto:
                out[(m, r)] = dict(tuned[(variants.index(dict(method)), r)])
                continue
            verdicts = {cb: tuned[(variants.index({**method, "class_balanced": cb}), r)] for cb in (False, True)}
            cb = choose_balance(verdicts)
            out[(m, r)] = {**verdicts[cb], "class_balanced": cb,
                           "balance": {"cb" if k else "plain": verdict_accuracy(v) for k, v in verdicts.items()},
                           "cpu_seconds": sum(float(v["cpu_seconds"]) for v in verdicts.values())}
    return out


def check_keep(keep: float) -> float:
    """A keep fraction in (0, 1) (shardwalk.core.validate.keep)."""
    return validate.keep(keep)


def budget(keep: float, n: int) -> int:
    """The coreset size ⌊keep·N⌋ (ConfigError when it is 0)."""
    m = int(np.floor(keep * n + 1e-9))
    if m < 1:
        raise ConfigError(f"keep={keep} of {n} examples selects no example; raise keep")
    return m


def is_hard_high(score: str, override: bool | None = None) -> bool:
    """Whether larger values of `score` mean harder examples (ConfigError for unknown names)."""
    if override is not None:
        return bool(override)
    if score not in HARD_HIGH:
        raise ConfigError(f"unknown score '{score}'; choose from {sorted(HARD_HIGH)} or pass hard_high=")
    return HARD_HIGH[score]


def allocate_budget(sizes: np.ndarray, m: int) -> np.ndarray:
    """CCS's stratum budgets: smallest stratum first, each min(size, ⌊remaining/strata left⌋)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    order = np.lexsort((np.arange(len(sizes)), sizes))  # by size, ties by stratum index
    budgets = np.zeros(len(sizes), dtype=np.int64)
    remaining = int(m)
    for i, s in enumerate(order):
        take = min(int(sizes[s]), remaining // (len(sizes) - i))
        budgets[s] = take
        remaining -= take
    if remaining and sizes.sum() >= m:  # cannot happen: water-filling is exact when the rows suffice
        raise InvariantError(f"budget allocation left {remaining} of {m} unassigned")
    return budgets


def class_budgets(sizes: np.ndarray, m: int, caps: np.ndarray | None = None) -> np.ndarray:
    """Split m over classes proportionally to `sizes` (largest remainder), never above `caps`."""
    sizes = np.asarray(sizes, dtype=np.int64)
    caps = sizes if caps is None else np.asarray(caps, dtype=np.int64)
    if caps.sum() < m:
        raise ConfigError(f"only {int(caps.sum())} examples are eligible but the budget is {m}")
    quota = m * sizes / sizes.sum()
    out = np.floor(quota + 1e-9).astype(np.int64)
    by_frac = np.lexsort((np.arange(len(sizes)), -(quota - out)))  # largest remainder first, then class
    for g in by_frac[: m - int(out.sum())]:
        out[g] += 1
    excess = int(np.maximum(out - caps, 0).sum())
    out = np.minimum(out, caps)
    for g in by_frac:  # hand any capped excess to classes with room, in the same order
        give = min(excess, int(caps[g] - out[g]))
        out[g] += give
        excess -= give
    return out


# ----------------------------------------------------------------------------- orders and thresholds


def _order_bits(x: np.ndarray) -> np.ndarray:
    """Map float64 to uint64 so that unsigned integer order equals float order (−0.0 == 0.0)."""
    b = (np.asarray(x, dtype=np.float64) + 0.0).view(np.uint64)
    sign = np.uint64(1) << np.uint64(63)
    return np.where(b & sign, ~b, b | sign)


def _id_bits(ids: np.ndarray) -> np.ndarray:
    return np.asarray(ids, dtype=np.int64).view(np.uint64) ^ (np.uint64(1) << np.uint64(63))


def _lex_le(cols: np.ndarray, thresh: np.ndarray) -> np.ndarray:
    """Row-wise lexicographic cols[i] <= thresh[i] over all columns."""
    le = np.ones(len(cols), dtype=bool)
    for level in reversed(range(cols.shape[1])):
        c, t = cols[:, level], thresh[:, level]
        le = (c < t) | ((c == t) & le)
    return le


@dataclass
class Threshold:
    """Per group: select none, all, or the rows whose order tuple is <= `values[g]`."""

    mode: np.ndarray  # (G,) int8: _NONE, _ALL or _DONE
    values: np.ndarray  # (G, L) uint64

    def selects(self, cols: np.ndarray, group: np.ndarray) -> np.ndarray:
        """Mask of rows (with their group, -1 = not eligible) that this threshold keeps."""
        ok = group >= 0
        g = np.where(ok, group, 0)
        mode = self.mode[g]
        le = _lex_le(cols, self.values[g]) if len(cols) else np.zeros(0, dtype=bool)
        return ok & ((mode == _ALL) | ((mode == _DONE) & le))


@dataclass
class _RadixState:
    k: np.ndarray  # (G,) 1-based rank still sought among the current candidates
    mode: np.ndarray  # (G,) _NONE/_ALL/_HIST/_FETCH/_DONE
    level: np.ndarray  # (G,) column being narrowed
    bits: np.ndarray  # (G,) high bits of that column already fixed
    prefix: np.ndarray  # (G, L) uint64: fixed columns, and the fixed high bits of the current one

    def for_shards(self) -> dict[str, np.ndarray]:
        return {"mode": self.mode, "level": self.level, "bits": self.bits, "prefix": self.prefix}


# ----------------------------------------------------------------------------- the shard side


class ShardSelector:
    """One shard's rows for selection: ids, one score, labels, and the seeded hash keys.

    Its methods answer the driver's protocol with small arrays; they are what a `workers/` actor calls.
    """

    def __init__(
        self,
        ids: np.ndarray,
        values: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        *,
        seed: int = 0,
        hard_high: bool = True,
        where: str = "scores",
        row_offset: int = 0,
    ):
        self.ids = np.asarray(ids, dtype=np.int64)
        n = len(self.ids)
        self.values = np.zeros(n) if values is None else np.asarray(values, dtype=np.float64)
        if self.values.shape != (n,):
            raise DataError(f"{where}: score has shape {self.values.shape}, expected ({n},)")
        bad = ~np.isfinite(self.values)
        if bad.any():
            raise DataError(f"{where}: score is NaN or inf at row {int(np.flatnonzero(bad)[0]) + row_offset}")
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.where = where
        hard = self.values if hard_high else -self.values
        key, idb = _order_bits(hash_unit(self.ids, seed)), _id_bits(self.ids)
        # Each order is a tuple of uint64 columns; smaller = selected first.
        self.orders = {
            "key": np.stack([key, idb], axis=1),
            "easy": np.stack([_order_bits(hard), key, idb], axis=1),  # cutoff keeps the easiest N - c
            "hard": np.stack([_order_bits(-hard), key, idb], axis=1),  # top-k hardest
        }

    # -- group assignment -------------------------------------------------------------------------

    def _class_index(self, classes: np.ndarray | None) -> np.ndarray:
        if classes is None:
            return np.zeros(len(self.ids), dtype=np.int64)
        if self.labels is None:
            raise DataError(f"{self.where}: class_balanced selection needs a 'label' column")
        return np.searchsorted(classes, self.labels)

    def groups(self, spec: Mapping[str, Any]) -> np.ndarray:
        """Group of each row under `spec` (classes, optional cutoff, optional strata); -1 = excluded."""
        g = self._class_index(spec.get("classes"))
        cut: Threshold | None = spec.get("cut")
        if cut is not None:
            g = np.where(cut.selects(self.orders["easy"], g), g, -1)
        easy_cut: Threshold | None = spec.get("easy_cut")
        if easy_cut is not None:
            g = np.where(easy_cut.selects(self.orders["hard"], g), g, -1)
        ranges = spec.get("ranges")
        if ranges is not None:
            s = int(spec["strata"])
            lo, width = ranges[np.maximum(g, 0), 0], ranges[np.maximum(g, 0), 1]
            with np.errstate(divide="ignore", invalid="ignore"):
                idx = np.where(width > 0, np.floor((self.values - lo) / width), 0.0)
            stratum = np.clip(np.nan_to_num(idx), 0, s - 1).astype(np.int64)  # the max joins the last
            g = np.where(g >= 0, g * s + stratum, -1)
        return g

    # -- protocol answers ---------------------------------------------------------------------------

    def class_counts(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(labels, counts) of this shard, or None when it has no labels."""
        if self.labels is None:
            return None
        return np.unique(self.labels, return_counts=True)

    def group_counts(self, spec: Mapping[str, Any], n_groups: int) -> np.ndarray:
        g = self.groups(spec)
        return np.bincount(g[g >= 0], minlength=n_groups)

    def score_range(self, spec: Mapping[str, Any], n_groups: int) -> np.ndarray:
        """(G, 2) min and max score per group (+inf, −inf where empty)."""
        g = self.groups(spec)
        out = np.tile([np.inf, -np.inf], (n_groups, 1))
        ok = g >= 0
        np.minimum.at(out[:, 0], g[ok], self.values[ok])
        np.maximum.at(out[:, 1], g[ok], self.values[ok])
        return out

    def radix_round(self, spec: Mapping[str, Any], order: str, state: Mapping[str, np.ndarray]) -> dict:
        """Histograms of the next 8 bits per narrowing group, and the candidate rows of fetching groups."""
        cols, g = self.orders[order], self.groups(spec)
        mode, level, bits, prefix = state["mode"], state["level"], state["bits"], state["prefix"]
        n_groups = len(mode)
        rows = np.flatnonzero(g >= 0)
        rows = rows[np.isin(mode[g[rows]], (_HIST, _FETCH))]
        gr = g[rows]
        lvl, b = level[gr], bits[gr].astype(np.uint64)
        match = np.ones(len(rows), dtype=bool)
        for col in range(cols.shape[1]):  # fixed earlier columns must equal the prefix
            match &= (col >= lvl) | (cols[rows, col] == prefix[gr, col])
        v = cols[rows, lvl]
        hi_shift = np.where(b == 0, np.uint64(0), np.uint64(64) - b)
        match &= (b == 0) | ((v >> hi_shift) == prefix[gr, lvl])
        rows, gr, v, b = rows[match], gr[match], v[match], b[match]
        hist_rows = mode[gr] == _HIST
        shift = np.uint64(64) - b[hist_rows] - np.uint64(RADIX_BITS)
        bucket = ((v[hist_rows] >> shift) & np.uint64((1 << RADIX_BITS) - 1)).astype(np.int64)
        hist = np.bincount(gr[hist_rows] * (1 << RADIX_BITS) + bucket, minlength=n_groups << RADIX_BITS)
        fetch = ~hist_rows
        return {"hist": hist.reshape(n_groups, 1 << RADIX_BITS), "group": gr[fetch], "rows": cols[rows[fetch]]}

    def selected(self, spec: Mapping[str, Any], order: str, threshold: Threshold) -> np.ndarray:
        """The ids of this shard that the final threshold keeps (sorted)."""
        keep = threshold.selects(self.orders[order], self.groups(spec))
        return np.sort(self.ids[keep])


# ----------------------------------------------------------------------------- the driver side


def kth_smallest(ask: Ask, spec: Mapping[str, Any], order: str, k: np.ndarray, totals: np.ndarray) -> Threshold:
    """Per group, the threshold that keeps exactly its k smallest rows of `order`, from shard summaries."""
    k, totals = np.asarray(k, dtype=np.int64), np.asarray(totals, dtype=np.int64)
    n_groups = len(k)
    width = {"key": 2, "easy": 3, "hard": 3}[order]
    mode = np.where(k <= 0, _NONE, np.where(k >= totals, _ALL, np.where(totals <= FETCH, _FETCH, _HIST)))
    state = _RadixState(
        k=k.copy(),
        mode=mode.astype(np.int8),
        level=np.zeros(n_groups, dtype=np.int64),
        bits=np.zeros(n_groups, dtype=np.int64),
        prefix=np.zeros((n_groups, width), dtype=np.uint64),
    )
    while np.isin(state.mode, (_HIST, _FETCH)).any():
        answers = ask("radix_round", spec=spec, order=order, state=state.for_shards())
        _merge_round(state, answers)
    return Threshold(mode=state.mode.copy(), values=state.prefix)


def _merge_round(state: _RadixState, answers: list[dict]) -> None:
    hist = np.sum([a["hist"] for a in answers], axis=0)
    groups = np.concatenate([a["group"] for a in answers])
    rows = np.concatenate([a["rows"] for a in answers])
    for g in np.flatnonzero(state.mode == _FETCH):
        cand = rows[groups == g]
        cand = cand[np.lexsort(cand.T[::-1])]
        state.prefix[g] = cand[state.k[g] - 1]
        state.mode[g] = _DONE
    for g in np.flatnonzero(state.mode == _HIST):
        counts = hist[g]
        cum = np.cumsum(counts)
        bucket = int(np.searchsorted(cum, state.k[g]))
        state.k[g] -= int(cum[bucket - 1]) if bucket else 0
        lvl = state.level[g]
        state.prefix[g, lvl] = (state.prefix[g, lvl] << np.uint64(RADIX_BITS)) | np.uint64(bucket)
        state.bits[g] += RADIX_BITS
        if counts[bucket] <= FETCH:
            state.mode[g] = _FETCH
        elif state.bits[g] == 64:  # too many exact ties in this column: narrow the next one
            state.level[g] += 1
            state.bits[g] = 0


def _classes(ask: Ask, class_balanced: bool) -> tuple[np.ndarray | None, np.ndarray]:
    """Merged (sorted class labels or None, rows per class group)."""
    if not class_balanced:
        return None, np.array([int(np.sum(ask("group_counts", spec={}, n_groups=1)))])
    answers = ask("class_counts")
    if any(a is None for a in answers):
        raise DataError("class_balanced selection needs a 'label' column")
    merged: dict[int, int] = {}
    for labels, counts in answers:
        for lab, c in zip(labels.tolist(), counts.tolist()):
            merged[lab] = merged.get(lab, 0) + c
    classes = np.array(sorted(merged), dtype=np.int64)
    return classes, np.array([merged[c] for c in classes.tolist()], dtype=np.int64)


@dataclass
class Plan:
    """What every shard needs to emit its part of the selection: groups, order, threshold."""

    spec: dict[str, Any]
    order: str
    threshold: Threshold
    size: int
    info: dict[str, Any]


def plan_selection(
    ask: Ask,
    method: str,
    keep: float,
    *,
    beta: float | None = None,
    strata: int = 50,
    class_balanced: bool = False,
    hardest: bool = True,
    easiest: float = 0.0,
) -> Plan:
    """Run the selection protocol against shards reached through `ask`; return the final plan."""
    check_method_name(method)
    keep = check_keep(keep)
    classes, sizes = _classes(ask, class_balanced)
    n = int(sizes.sum())
    m = budget(keep, n)
    base = {"classes": classes}
    if method == "random" or method == "topk":
        k = class_budgets(sizes, m) if class_balanced else np.array([m])
        order = "key" if method == "random" else ("hard" if hardest else "easy")
        return Plan(base, order, kth_smallest(ask, base, order, k, sizes), m, {"budget": m})
    return _plan_ccs(ask, base, keep, m, sizes, beta, strata, easiest)


def _plan_ccs(
    ask: Ask, base: dict, keep: float, m: int, sizes: np.ndarray, beta: float | None, strata: int,
    easiest: float = 0.0,
) -> Plan:
    beta = default_beta(keep) if beta is None else float(beta)
    if not 0.0 <= beta < 1.0:
        raise ConfigError(f"beta must be in [0, 1), got {beta}")
    if beta + keep > 1.0 + 1e-12:
        raise ConfigError(f"beta + keep must be <= 1 (drops the hardest beta, keeps keep), got {beta} + {keep}")
    easiest = float(easiest)
    if not 0.0 <= easiest < 1.0 or beta + easiest + keep > 1.0 + 1e-12:
        raise ConfigError(f"easiest must be in [0, 1) with beta + easiest + keep <= 1, got {easiest}")
    if not isinstance(strata, int) or strata < 1:
        raise ConfigError(f"strata must be a positive integer, got {strata!r}")
    drop = np.floor(beta * sizes + 1e-9).astype(np.int64)
    drop_easy = np.floor(easiest * sizes + 1e-9).astype(np.int64)
    class_m = class_budgets(sizes, m, caps=sizes - drop - drop_easy) if base["classes"] is not None else np.array([m])
    cut = kth_smallest(ask, base, "easy", sizes - drop, sizes)
    kept = {**base, "cut": cut}
    if drop_easy.any():  # disjoint from the hard cut (β + easiest < 1): the hardest N − e of all rows
        kept["easy_cut"] = kth_smallest(ask, base, "hard", sizes - drop_easy, sizes)
    n_cls = len(sizes)
    answers = ask("score_range", spec=kept, n_groups=n_cls)
    ranges = np.stack([np.min([a[:, 0] for a in answers], axis=0), np.max([a[:, 1] for a in answers], axis=0)], axis=1)
    lo_width = np.stack([ranges[:, 0], (ranges[:, 1] - ranges[:, 0]) / strata], axis=1)
    spec = {**kept, "ranges": lo_width, "strata": strata}
    counts = np.sum(ask("group_counts", spec=spec, n_groups=n_cls * strata), axis=0)
    budgets = np.concatenate(
        [allocate_budget(counts[c * strata : (c + 1) * strata], int(class_m[c])) for c in range(n_cls)]
    )
    threshold = kth_smallest(ask, spec, "key", budgets, counts)
    info = {"budget": m, "beta": beta, "dropped": int(drop.sum()), "nonempty_strata": int((counts > 0).sum()),
            **({"easiest": easiest, "dropped_easiest": int(drop_easy.sum())} if easiest else {})}
    return Plan(spec, "key", threshold, m, info)
