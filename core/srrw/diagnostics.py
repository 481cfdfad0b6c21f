"""Checks that turn a run's numbers into an honest verdict: noise-averaged errors and divergence warnings."""

from __future__ import annotations

import numpy as np

# The final loss must come within this of loss* (relative to |loss*|, plus an absolute floor) to pass quietly.
LOSS_GAP_RELATIVE = 1.0
LOSS_GAP_ABSOLUTE = 0.1


def last_fraction_mean(steps: np.ndarray, values: np.ndarray, fraction: float = 0.25) -> float:
    """Mean of `values` over the snapshots in the last `fraction` of the steps (one snapshot is noise)."""
    steps, values = np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if steps.size == 0:
        return float("nan")
    last = steps >= steps.max() * (1.0 - fraction)
    return float(values[last].mean())


def divergence_warning(loss: float, loss_star: float, *, hint: str = "") -> str | None:
    """A one-line warning when the final loss is far above the optimum loss*, else None."""
    if not np.isfinite(loss):
        return f"the final loss is {loss}: the walk diverged{hint}"
    if loss - loss_star <= LOSS_GAP_RELATIVE * abs(loss_star) + LOSS_GAP_ABSOLUTE:
        return None
    return f"the final loss {loss:.4g} is far above the optimum loss* {loss_star:.4g}{hint}"
