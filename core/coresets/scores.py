"""Per-example difficulty scores from training dynamics and geometry (docs/design.md "Scores").

Every function is pure numpy. `DynamicsRecorder` keeps O(n·C) running sums so a shard actor can record
the dynamics of the examples it owns epoch by epoch, proxy model by proxy model, and emit the scores
table (`id` + float64 columns) without ever holding a logits history.

Hard direction (what "difficult" means) per score, used by core/coresets/single_process.py:
  el2n high, forgetting high, aum LOW, entropy high, knn_density high (far from neighbours = sparse).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shardwalk.core.data.schema import validate_knn_graph
from shardwalk.core.errors import DataError

# True where a larger value means a harder example.
HARD_HIGH: dict[str, bool] = {"el2n": True, "forgetting": True, "aum": False, "entropy": True, "knn_density": True}
DYNAMICS_SCORES = ("el2n", "forgetting", "aum", "entropy")


def _check_labels(labels: np.ndarray | None, n: int, num_classes: int, where: str) -> np.ndarray:
    if labels is None:
        raise DataError(f"{where}: labels are required for label-based scores (el2n, forgetting, aum)")
    y = np.asarray(labels)
    if y.shape != (n,):
        raise DataError(f"{where}: labels have shape {y.shape}, expected ({n},)")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels must be integers, got dtype {y.dtype}")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where}: label {int(y[row])} at row {row} is outside [0, {num_classes})")
    return y.astype(np.int64, copy=False)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, shifted by the row max for stability."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def el2n(probs: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """EL2N (Paul et al. 2021): ‖p − onehot(y)‖₂; a leading model axis (m, n, C) is averaged over."""
    p = np.asarray(probs, dtype=np.float64)
    p3 = p[None] if p.ndim == 2 else p
    y = _check_labels(labels, p3.shape[1], p3.shape[2], "el2n")
    err = p3.copy()
    err[:, np.arange(len(y)), y] -= 1.0
    return np.linalg.norm(err, axis=2).mean(axis=0)


def forgetting(correct: np.ndarray) -> np.ndarray:
    """Forgetting events (Toneva et al. 2019) from (epochs, n) correctness; never learned → epochs."""
    c = np.asarray(correct, dtype=bool)
    if c.ndim != 2 or c.shape[0] == 0:
        raise DataError(f"forgetting: correctness must be (epochs >= 1, n), got shape {c.shape}")
    events = (c[:-1] & ~c[1:]).sum(axis=0).astype(np.float64)
    events[~c.any(axis=0)] = float(c.shape[0])
    return events


def margin(logits: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """The AUM margin of one epoch: z_y − max_{j≠y} z_j (Pleiss et al. 2020)."""
    z = np.asarray(logits, dtype=np.float64)
    y = _check_labels(labels, z.shape[0], z.shape[1], "aum")
    rows = np.arange(len(y))
    assigned = z[rows, y]
    other = z.copy()
    other[rows, y] = -np.inf
    return assigned - other.max(axis=1)


def aum(logits: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """Area under the margin: the margin averaged over epochs of (epochs, n, C) logits."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 3:
        raise DataError(f"aum: logits must be (epochs, n, C), got shape {z.shape}")
    return np.mean([margin(z[e], labels) for e in range(z.shape[0])], axis=0)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of the final predicted distribution (n, C)."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=1)


def knn_density(graph: pa.Table, k: int | None = None) -> pa.Table:
    """Scores table (`id`, `knn_density`): mean distance to the k nearest neighbours (all if k is None)."""
    g = validate_knn_graph(graph)
    lengths = pc.list_value_length(g.column("distances")).to_numpy(zero_copy_only=False)
    if (lengths == 0).any():
        row = int(np.flatnonzero(lengths == 0)[0])
        raise DataError(f"knn graph: row {row} has no neighbours; knn_density needs k >= 1")
    width = int(lengths.min()) if k is None else int(k)
    if width < 1 or (lengths < width).any():
        raise DataError(f"knn graph: k={width} but some rows have only {int(lengths.min())} neighbours")
    dist = g.column("distances").combine_chunks()
    flat = np.asarray(pc.list_flatten(dist).to_numpy(zero_copy_only=False), dtype=np.float64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    cols = starts[:, None] + np.arange(width)[None, :]
    values = flat[cols].mean(axis=1)
    if not np.isfinite(values).all():
        row = int(np.flatnonzero(~np.isfinite(values))[0])
        raise DataError(f"knn graph: non-finite distance at row {row}")
    return pa.table({"id": g.column("id"), "knn_density": pa.array(values, pa.float64())})


class DynamicsRecorder:
    """Running per-example training dynamics of the examples one shard owns, over proxy models and epochs.

    Call `start_model()` before each proxy model, `record(logits)` after each of its epochs with the
    logits of this recorder's examples (in `ids` order). EL2N is taken at epoch `el2n_epoch` (1-based,
    "early in training") of every model and averaged over models; forgetting events are counted per
    model and averaged; AUM averages the margin over all (model, epoch) pairs; entropy is of the
    final prediction averaged over models. Each model's contribution is kept apart (`model_parts`) and
    `combine_parts` adds them in model order, so proxies trained on different actors give the same bits.
    """

    def __init__(self, ids: np.ndarray, labels: np.ndarray | None, num_classes: int, el2n_epoch: int = 2):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.labels = _check_labels(labels, len(self.ids), num_classes, "dynamics recorder")
        self.num_classes = int(num_classes)
        self.el2n_epoch = int(el2n_epoch)
        self._parts: dict[int, ModelPart] = {}
        self._model = -1
        self._reset()

    def _reset(self) -> None:
        n = len(self.ids)
        self._epoch = 0
        self._prev_correct: np.ndarray | None = None
        self._events = np.zeros(n)
        self._ever = np.zeros(n, dtype=bool)
        self._margin = np.zeros(n)
        self._el2n: np.ndarray | None = None
        self._last_probs: np.ndarray | None = None

    def start_model(self, index: int | None = None) -> None:
        """Close the previous proxy model's counts (if any) and start model `index` (default: the next)."""
        self._finish_model()
        self._model = self._model + 1 if index is None else int(index)
        self._reset()

    def record(self, logits: np.ndarray) -> None:
        """Record one epoch's logits (n, C) for this recorder's examples."""
        z = np.asarray(logits, dtype=np.float64)
        if z.shape != (len(self.ids), self.num_classes):
            raise DataError(f"dynamics recorder: logits shape {z.shape}, expected {(len(self.ids), self.num_classes)}")
        if not np.isfinite(z).all():
            row = int(np.flatnonzero(~np.isfinite(z).all(axis=1))[0])
            raise DataError(f"dynamics recorder: non-finite logits at row {row} (proxy diverged?)")
        self._epoch += 1
        probs = softmax(z)
        correct = z.argmax(axis=1) == self.labels
        if self._prev_correct is not None:
            self._events += self._prev_correct & ~correct
        self._prev_correct = correct
        self._ever |= correct
        self._margin += margin(z, self.labels)
        if self._epoch == self.el2n_epoch:
            self._el2n = el2n(probs, self.labels)
        self._last_probs = probs

    def _finish_model(self) -> None:
        if self._last_probs is None:
            return
        el2n_part = self._el2n if self._el2n is not None else el2n(self._last_probs, self.labels)  # short model
        self._parts[self._model] = ModelPart(
            el2n=el2n_part, forgetting=np.where(self._ever, self._events, float(self._epoch)),  # never learned → max
            margin_sum=self._margin, epochs=self._epoch, entropy=entropy(self._last_probs),
        )
        self._last_probs = None

    def model_parts(self) -> dict[int, ModelPart]:
        """Each recorded proxy model's contribution, by model index (small: O(n) per model)."""
        self._finish_model()
        return dict(self._parts)

    def scores(self) -> pa.Table:
        """The scores table of docs/design.md: `id`, `label` and one float64 column per score."""
        return combine_parts(self.ids, self.labels, self.model_parts())


@dataclass(frozen=True)
class ModelPart:
    """One proxy model's per-example dynamics: what `combine_parts` averages over models."""

    el2n: np.ndarray
    forgetting: np.ndarray
    margin_sum: np.ndarray  # the AUM margin summed over this model's epochs
    epochs: int
    entropy: np.ndarray

    def rows(self, sel: slice) -> ModelPart:
        """The same contribution for a slice of the examples."""
        return ModelPart(self.el2n[sel], self.forgetting[sel], self.margin_sum[sel], self.epochs, self.entropy[sel])


def combine_parts(ids: np.ndarray, labels: np.ndarray, parts: dict[int, ModelPart]) -> pa.Table:
    """Scores from per-model parts, always added in model-index order (the same bits for any layout)."""
    if not parts:
        raise DataError("dynamics recorder: no epoch was recorded")
    n = len(ids)
    el2n_sum, forget_sum, margin_sum, entropy_sum, epochs = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n), 0
    for m in sorted(parts):
        part = parts[m]
        el2n_sum += part.el2n
        forget_sum += part.forgetting
        margin_sum += part.margin_sum
        entropy_sum += part.entropy
        epochs += part.epochs
    models = len(parts)
    cols = {"el2n": el2n_sum / models, "forgetting": forget_sum / models, "aum": margin_sum / epochs,
            "entropy": entropy_sum / models}
    return pa.table({"id": pa.array(np.asarray(ids, dtype=np.int64), pa.int64()),
                     "label": pa.array(np.asarray(labels, dtype=np.int64), pa.int64()),
                     **{k: pa.array(v, pa.float64()) for k, v in cols.items()}})


def scores_from_history(
    ids: np.ndarray, labels: np.ndarray, logits: Sequence[np.ndarray] | np.ndarray, el2n_epoch: int = 2
) -> pa.Table:
    """Reference: scores of one proxy's full (epochs, n, C) logits history, computed in one go."""
    z = np.asarray(logits, dtype=np.float64)
    probs = softmax(z)
    correct = z.argmax(axis=2) == np.asarray(labels)[None, :]
    e = min(el2n_epoch, z.shape[0]) - 1
    return pa.table(
        {
            "id": pa.array(np.asarray(ids, dtype=np.int64)),
            "label": pa.array(np.asarray(labels, dtype=np.int64)),
            "el2n": el2n(probs[e], labels),
            "forgetting": forgetting(correct),
            "aum": aum(z, labels),
            "entropy": entropy(probs[-1]),
        }
    )
