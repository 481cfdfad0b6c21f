"""Coreset selection in one process: CCS (Zheng et al., ICLR 2023), random, top-k and RS2 samples.

Every method runs the exact protocol of core/coresets/selection.py over in-process shards, so `shards=` only
checks layout independence (docs/design.md "CCS"). The distributed run asks actors instead
(workers/scorer.py); RS2 (Okanovic et al.) draws a fresh subset per epoch instead of selecting once.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from shardwalk.core.coresets.selection import (  # noqa: F401  (the public names of coreset selection)
    METHODS,
    Ask,
    Plan,
    ShardSelector,
    allocate_budget,
    budget,
    check_keep,
    class_budgets,
    default_beta,
    is_hard_high,
    plan_selection,
)
from shardwalk.core.coresets.selection_names import check_method_name
from shardwalk.core.data.builtin import hash_unit
from shardwalk.core.errors import ConfigError, DataError, InvariantError

# ----------------------------------------------------------------------------- single-process API


def _columns(scores: pa.Table | Mapping[str, Any], score: str | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(ids, score values or None, labels or None) from a scores table or a dict of arrays."""
    if isinstance(scores, pa.Table):
        names = scores.column_names
        get = lambda c: scores.column(c).to_numpy(zero_copy_only=False)  # noqa: E731
    elif isinstance(scores, Mapping):
        names = list(scores)
        get = lambda c: np.asarray(scores[c])  # noqa: E731
    else:
        raise DataError(f"scores must be a pyarrow.Table or a mapping of arrays, got {type(scores).__name__}")
    if "id" not in names:
        raise DataError(f"scores: missing column 'id'; found {names}")
    if score is not None and score not in names:
        raise DataError(f"scores: missing score column '{score}'; found {names}")
    ids = np.asarray(get("id"))
    if not np.issubdtype(ids.dtype, np.integer):
        raise DataError(f"scores: column 'id' must be integers, got {ids.dtype}")
    if len(np.unique(ids)) != len(ids):
        raise DataError("scores: column 'id' has duplicate values")
    if len(ids) == 0:
        raise DataError("scores: table is empty (0 rows)")
    values = None if score is None else np.asarray(get(score), dtype=np.float64)
    labels = np.asarray(get("label")) if "label" in names else None
    return ids, values, labels


def local_ask(shards: list[ShardSelector]) -> Ask:
    """An `ask` that answers the protocol from in-process shards."""
    return lambda name, **kw: [getattr(s, name)(**kw) for s in shards]


def _run_local(shards: list[ShardSelector], method: str, keep: float, **options: Any) -> pa.Table:
    ask = local_ask(shards)
    plan = plan_selection(ask, method, keep, **options)
    ids = np.sort(np.concatenate([s.selected(plan.spec, plan.order, plan.threshold) for s in shards]))
    if len(ids) != plan.size:  # exactness is the contract: never a silently short coreset
        raise InvariantError(f"{method} selected {len(ids)} rows, expected {plan.size}")
    return selection_table(ids)


def selection_table(ids: np.ndarray, weights: np.ndarray | None = None) -> pa.Table:
    """docs/design.md's selection table (`id`, `weight` = 1.0 unless a method weights)."""
    ids = np.asarray(ids, dtype=np.int64)
    w = np.ones(len(ids)) if weights is None else np.asarray(weights, dtype=np.float64)
    return pa.table({"id": pa.array(ids, pa.int64()), "weight": pa.array(w, pa.float64())})


def split_shards(
    scores: pa.Table | Mapping[str, Any], score: str | None, *, shards: int = 1, seed: int = 0, hard: bool = True
) -> list[ShardSelector]:
    """Build `shards` contiguous ShardSelectors over one scores table (tests use this for layout checks)."""
    ids, values, labels = _columns(scores, score)
    bounds = np.linspace(0, len(ids), shards + 1).astype(int)
    out = []
    for a, b in itertools.pairwise(bounds):
        out.append(
            ShardSelector(
                ids[a:b],
                None if values is None else values[a:b],
                None if labels is None else labels[a:b],
                seed=seed,
                hard_high=hard,
                row_offset=int(a),
            )
        )
    return out


def ccs_select(
    scores: pa.Table | Mapping[str, Any],
    keep: float,
    *,
    score: str = "aum",
    beta: float | None = None,
    strata: int = 50,
    class_balanced: bool = False,
    seed: int = 0,
    hard_high: bool | None = None,
    shards: int = 1,
    easiest: float = 0.0,
) -> pa.Table:
    """Coverage-centric Coreset Selection: exactly ⌊keep·N⌋ ids, the same for any `shards` (`easiest`: also drop
    that fraction of the easiest rows before stratifying)."""
    keep = check_keep(keep)
    parts = split_shards(scores, score, shards=shards, seed=seed, hard=is_hard_high(score, hard_high))
    return _run_local(parts, "ccs", keep, beta=beta, strata=strata, class_balanced=class_balanced, easiest=easiest)


def random_select(
    scores: pa.Table | Mapping[str, Any], keep: float, *, class_balanced: bool = False, seed: int = 0, shards: int = 1
) -> pa.Table:
    """A uniform random subset of exactly ⌊keep·N⌋ ids (the smallest seeded hash keys)."""
    keep = check_keep(keep)
    return _run_local(split_shards(scores, None, shards=shards, seed=seed), "random", keep, class_balanced=class_balanced)


def topk_select(
    scores: pa.Table | Mapping[str, Any],
    keep: float,
    *,
    score: str = "el2n",
    hardest: bool = True,
    class_balanced: bool = False,
    seed: int = 0,
    hard_high: bool | None = None,
    shards: int = 1,
) -> pa.Table:
    """The ⌊keep·N⌋ hardest (or easiest) ids by `score`; ties broken by the seeded hash key."""
    keep = check_keep(keep)
    parts = split_shards(scores, score, shards=shards, seed=seed, hard=is_hard_high(score, hard_high))
    return _run_local(parts, "topk", keep, class_balanced=class_balanced, hardest=hardest)


def select(scores: pa.Table | Mapping[str, Any], method: str, keep: float, **options: Any) -> pa.Table:
    """Dispatch by method name: 'ccs', 'random' or 'topk' ('d2' needs the kNN graph: shardwalk.core.coresets.d2.d2_select_arrays)."""
    fns = {"ccs": ccs_select, "random": random_select, "topk": topk_select}
    if check_method_name(method) == "d2":
        raise ConfigError("d2 selects over the kNN graph: use shardwalk.core.coresets.d2.d2_select_arrays (or the coreset pipeline)")
    return fns[method](scores, keep, **options)


# ----------------------------------------------------------------------------- RS2


def rs2_epoch(ids: np.ndarray, keep: float, epoch: int, seed: int = 0) -> np.ndarray:
    """RS2 without replacement (Okanovic et al.): epoch e's fresh random subset of ⌊keep·N⌋ ids.

    Each pass over the data is a seeded hash order; consecutive epochs take consecutive chunks, so
    every example is seen once per ⌊1/keep⌋ epochs. Layout-independent like everything here.
    """
    keep = check_keep(keep)
    ids = np.asarray(ids, dtype=np.int64)
    m = budget(keep, len(ids))
    per_pass = len(ids) // m
    p, j = divmod(int(epoch), per_pass)
    order = np.lexsort((ids, hash_unit(ids, seed * 1_000_003 + p)))
    return np.sort(ids[order[j * m : (j + 1) * m]])


def rs2_sampler(ids: np.ndarray, keep: float, seed: int = 0) -> Iterator[np.ndarray]:
    """An endless iterator of RS2 epoch subsets (see `rs2_epoch`)."""
    epoch = 0
    while True:
        yield rs2_epoch(ids, keep, epoch, seed)
        epoch += 1
