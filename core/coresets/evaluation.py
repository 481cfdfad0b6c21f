"""The whole evaluation of a coreset: split, pick the rows, (RS2-)sample, fit a fresh model, test accuracy.

Pure (no Ray): workers/scorer.py's `evaluate_coreset` task only sets threads and calls `evaluate_selection`,
so a test or a notebook evaluates a coreset in process with the same code (docs/design.md "Coreset pipeline").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardwalk.core import validate
from shardwalk.core.coresets.checks import majority_rate
from shardwalk.core.coresets.proxy_spec import TrainSpec
from shardwalk.core.coresets.scaling import FeatureSums, fit_scaling
from shardwalk.core.coresets.selection_names import read_selection
from shardwalk.core.coresets.single_process import rs2_epoch
from shardwalk.core.data.builtin import test_mask
from shardwalk.core.errors import DataError
from shardwalk.core.storage.labelled import read_labelled

VALIDATION_SEED_OFFSET = 7919  # the validation split is seeded apart from the test split


@dataclass(frozen=True)
class Split:
    """Which rows are tested on: a seeded `test_fraction` of the source (0 with a separate test source);
    `validation` > 0 holds out that fraction of the training split instead (for tuning, never the test split)."""

    test_fraction: float = 0.2
    split_seed: int = 0
    validation: float = 0.0

    def __post_init__(self) -> None:
        validate.fraction("test_fraction", self.test_fraction, closed_low=True)
        validate.integer("split_seed", self.split_seed, 0)
        validate.fraction("validation", self.validation, closed_low=True)

    def test_rows(self, ids: np.ndarray) -> np.ndarray:
        """The held-out test rows of `ids` (none when the test split is a separate source)."""
        if self.test_fraction <= 0:
            return np.zeros(len(ids), dtype=bool)
        return test_mask(ids, self.test_fraction, self.split_seed)

    def validation_rows(self, ids: np.ndarray) -> np.ndarray:
        """The training rows held out for validation (none unless `validation` > 0)."""
        if self.validation <= 0:
            return np.zeros(len(ids), dtype=bool)
        return ~self.test_rows(ids) & test_mask(ids, self.validation, self.split_seed + VALIDATION_SEED_OFFSET)


def _restrict(ids: np.ndarray, train: np.ndarray, selected: np.ndarray | str | os.PathLike | None) -> np.ndarray:
    """The training mask restricted to a selection (ids or a selection directory); every id must match."""
    if selected is None:
        return train
    chosen = read_selection(selected) if isinstance(selected, str | os.PathLike) else np.asarray(selected)
    out = train & np.isin(ids, chosen)
    if out.sum() != len(chosen):
        raise DataError(f"selection has {len(chosen)} ids but {int(out.sum())} match training rows")
    return out


def rs2_rows(train_ids: np.ndarray, keep: float, seed: int) -> Callable[[int], np.ndarray]:
    """`sampler(pass)` for shardwalk.core.coresets.proxy.fit: a fresh RS2 subset's row positions each pass, shuffled."""
    pos = {int(i): r for r, i in enumerate(train_ids.tolist())}
    rng = np.random.default_rng(seed)

    def sampler(epoch: int) -> np.ndarray:
        chosen = rs2_epoch(train_ids, keep, epoch, seed)
        return rng.permutation(np.array([pos[int(i)] for i in chosen.tolist()], dtype=np.int64))

    return sampler


def evaluate_selection(
    source: Any,
    selected: np.ndarray | str | os.PathLike | None,
    split: Split,
    train: TrainSpec,
    *,
    rs2_keep: float | None = None,
    device: str = "cpu",
    test_source: Any = None,
    standardize: str | bool = "auto",
) -> dict[str, Any]:
    """Train a fresh model on the selected training rows (all when None) for `train.steps` steps; test accuracy.

    `rs2_keep` instead trains on a fresh RS2 subset of that fraction every pass; `test_source` is the
    user's own test split (labels encoded like `source`), ignored when `split.validation` > 0.
    `standardize` (core/coresets/scaling.py) is fitted on the whole training split (less any validation rows),
    whatever the coreset, and applied to every split; `majority` is the majority-class rate on the `test_rows` rows
    (the validation rows when `split.validation` > 0).
    """
    ids, x, y = read_labelled(source)
    test_rows = split.test_rows(ids)
    fitted_on = ~test_rows
    train_rows = _restrict(ids, fitted_on, selected)  # a selection holds ids of the whole training split
    if split.validation > 0:
        test_rows = split.validation_rows(ids)
        train_rows &= ~test_rows
        fitted_on = fitted_on & ~test_rows
    scaling = fit_scaling(FeatureSums.of(x[fitted_on]), standardize)
    x_test, y_test = x[test_rows], y[test_rows]
    if test_source is not None and split.validation <= 0:
        _, x_test, y_test = read_labelled(test_source)
    x, x_test = scaling(x), scaling(x_test)
    classes = int(max(y.max(), y_test.max(initial=0))) + 1
    sampler = None if rs2_keep is None else rs2_rows(ids[train_rows], validate.keep(rs2_keep, "rs2_keep"), train.seed)
    from shardwalk.core.coresets import (
        proxy,  # torch: only where a model trains, not in every process that imports Split
    )

    model = proxy.fit(x[train_rows], y[train_rows], classes, train, sampler=sampler, device=device)
    return {"accuracy": proxy.accuracy(model, x_test, y_test), "train_rows": int(train_rows.sum()), "test_rows": len(y_test),
            "majority": majority_rate(y[fitted_on], y_test), "standardized": scaling.applied}
