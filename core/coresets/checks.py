"""What a coreset result needs before a user trusts it: mean ± std over seeds, a significance test against
random, and the warnings for results that mean nothing (docs/design.md "Coreset evaluation").

Pure numpy (+ scipy's Welch test). The evaluate stage, the reports and the benchmark all use these, so
"significant" and "warning" mean the same everywhere.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ALPHA = 0.05  # Welch's t-test level for "differs from random"
TEST = "Welch's t-test, two-sided, p < 0.05"
EXPLODING_MARGIN = 1e3  # |AUM| (a logit margin) beyond this: the proxy's logits exploded
TIE = 1e-4  # accuracies closer than this count as equal
MAJORITY_SLACK = 0.005  # a full-data model within half a point of the majority-class rate learned nothing
KEEP_RE = re.compile(r"^(?P<method>.+)-keep(?P<keep>[0-9.]+)$")


def spread(values: Sequence[float]) -> dict[str, Any]:
    """mean, sample std (ddof 1; 0 for one value) and n of per-seed accuracies."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}


def versus(method: Sequence[float], reference: Sequence[float]) -> dict[str, Any]:
    """Mean difference of `method` − `reference` and whether it is significant by Welch's t-test.

    Fewer than 2 seeds on a side, or no spread on either side, cannot be tested: `significant` is False.
    """
    a, b = np.asarray(method, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    diff = float(a.mean() - b.mean())
    pooled = float(np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)) if min(len(a), len(b)) > 1 else 0.0
    if min(len(a), len(b)) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return {"difference": diff, "pooled_std": pooled, "p_value": None, "significant": False}
    from scipy.stats import ttest_ind  # only where a test is made

    with warnings.catch_warnings():  # one side without spread (seeds that agree) is exact, not a loss of precision
        warnings.filterwarnings("ignore", "Precision loss occurred in moment calculation", RuntimeWarning)
        p = float(ttest_ind(a, b, equal_var=False).pvalue)
    return {"difference": diff, "pooled_std": pooled, "p_value": p, "significant": bool(p < ALPHA)}


def reference_of(name: str, names: Sequence[str]) -> str | None:
    """The random selection a coreset is compared with: `random` at the same keep (`random-cb` if only that)."""
    match = KEEP_RE.match(name)
    if not match or match["method"].startswith("random"):
        return None
    for ref in (f"random-keep{match['keep']}", f"random-cb-keep{match['keep']}"):
        if ref in names:
            return ref
    return None


def majority_rate(train_labels: np.ndarray, test_labels: np.ndarray) -> float:
    """Test accuracy of always predicting the training split's most frequent class."""
    if len(test_labels) == 0 or len(train_labels) == 0:
        return 0.0
    values, counts = np.unique(np.asarray(train_labels), return_counts=True)
    return float(np.mean(np.asarray(test_labels) == values[np.argmax(counts)]))


def majority_warning(full: float, majority: float) -> str | None:
    """A full-data model no better than predicting the majority class learned nothing."""
    if full > majority + MAJORITY_SLACK:
        return None
    return (f"the full-data model scores {full:.4f}, no better than always predicting the majority class "
            f"({majority:.4f}): nothing was learned (unscaled features? set standardize = true; too few steps?)")


def tie_warning(accuracy: Mapping[str, float]) -> str | None:
    """All methods equal at every keep rate: the comparison carries no information."""
    by_keep: dict[str, list[float]] = {}
    for name, value in accuracy.items():
        match = KEEP_RE.match(name)
        if match:
            by_keep.setdefault(match["keep"], []).append(float(value))
    compared = [v for v in by_keep.values() if len(v) > 1]
    if not compared or any(max(v) - min(v) > TIE for v in compared):
        return None
    return "all selection methods score the same at every keep rate: the comparison says nothing"


def scores_warning(columns: Mapping[str, np.ndarray]) -> str | None:
    """Proxy training that diverged: non-finite scores, or AUM margins beyond ±EXPLODING_MARGIN."""
    for name, values in columns.items():
        v = np.asarray(values, dtype=np.float64)
        if not np.isfinite(v).all():
            return f"proxy training diverged: score '{name}' is not finite for {int((~np.isfinite(v)).sum())} rows"
    margin = np.asarray(columns.get("aum", []), dtype=np.float64)
    if margin.size and float(np.abs(margin).max()) > EXPLODING_MARGIN:
        return (f"proxy training diverged: AUM spans {margin.min():.4g} … {margin.max():.4g} (logits exploded; "
                "unscaled features? set standardize = true, or lower proxy.lr)")
    return None


def join_warnings(*warnings: str | None) -> str | None:
    """One warning line from several (None when there is none)."""
    present = [w for w in warnings if w]
    return "; ".join(present) if present else None


def summarise(per_seed: Mapping[str, Sequence[float]], majority: float) -> dict[str, Any]:
    """The evaluate stage's verdict from per-seed accuracies (keys: selection names and `full`).

    Returns {"accuracy": {name: spread + comparison with its random reference}, "majority", "test",
    "warning" (None when the result can be trusted as it is)}.
    """
    names = list(per_seed)
    accuracy: dict[str, Any] = {}
    for name in names:
        entry = {**spread(per_seed[name]), "values": [float(v) for v in per_seed[name]]}
        ref = reference_of(name, names)
        if ref is not None:
            entry["versus"] = ref
            entry.update(versus(per_seed[name], per_seed[ref]))
        accuracy[name] = entry
    means = {n: e["mean"] for n, e in accuracy.items() if n != "full"}
    full = accuracy["full"]["mean"] if "full" in accuracy else None
    warning = join_warnings(majority_warning(full, majority) if full is not None else None, tie_warning(means))
    return {"accuracy": accuracy, "majority": majority, "test": TEST, "warning": warning}
