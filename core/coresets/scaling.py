"""Feature scaling for the proxy and evaluation models: fit on the training rows only, applied to every split.

`standardize = "auto"` (the coreset default) scales every feature to mean 0 / variance 1 when the training
rows are not already on a unit scale (some feature's |mean| + std above `AUTO_LIMIT`: raw measurements
such as breast_cancer's, whose areas reach thousands); `true` always scales, `false` never. The statistics
are sums over the training rows (never the test or validation rows), so shards can add theirs up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shardwalk.core.errors import ConfigError

SETTINGS = ("auto", True, False)
AUTO_LIMIT = 10.0  # |mean| + std of a feature above this = not on a unit scale


def check_standardize(value: object, key: str = "standardize") -> str | bool:
    """The validated `standardize` setting: "auto", true or false."""
    if value is True or value is False or value == "auto":
        return value  # type: ignore[return-value]
    raise ConfigError(f"{key} must be \"auto\", true or false, got {value!r}")


@dataclass(frozen=True)
class FeatureSums:
    """Per-feature sums of some training rows (float64): what shards add up before the scaling is fitted."""

    rows: int
    total: np.ndarray
    squares: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> FeatureSums:
        """The sums of the rows of `x` (n, d)."""
        x64 = np.asarray(x, dtype=np.float64)
        return cls(len(x64), x64.sum(axis=0), (x64 * x64).sum(axis=0))

    def __add__(self, other: FeatureSums) -> FeatureSums:
        return FeatureSums(self.rows + other.rows, self.total + other.total, self.squares + other.squares)


@dataclass(frozen=True)
class Scaling:
    """x ↦ (x − mean) / scale; `applied` is False when the setting (or "auto") left the features as they are."""

    mean: np.ndarray
    scale: np.ndarray
    applied: bool

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The scaled float32 features (the same array when not applied)."""
        if not self.applied or len(x) == 0:
            return x
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.scale).astype(np.float32)


def fit_scaling(sums: FeatureSums, setting: str | bool) -> Scaling:
    """The scaling that `setting` asks for given the training rows' sums (constant features keep scale 1)."""
    setting = check_standardize(setting)
    n = max(sums.rows, 1)
    mean = sums.total / n
    std = np.sqrt(np.maximum(sums.squares / n - mean**2, 0.0))
    scale = np.where(std > 0, std, 1.0)
    applied = setting is True or (setting == "auto" and bool(np.max(np.abs(mean) + std, initial=0.0) > AUTO_LIMIT))
    return Scaling(mean, scale, applied)
