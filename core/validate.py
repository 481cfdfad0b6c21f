"""One validator per parameter, so an error reads the same wherever it arises (docs/design.md "Validation").

Pipelines call these from their `validate` with the user's dotted key (`index.M`, `select.keep`);
lower layers either take settings objects built here or call the same function with the bare name.
Every failure is a one-line ConfigError naming the key and the value.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from shardwalk.core.errors import ConfigError

# The one static cap on a group of actors (or parallel parts) a setting names: index shards × replicas, scorer
# actors, ingest parts, walker shards, and the shard count the automatic sizing may propose. It holds before
# the cluster is known; at start the cluster's own bound (core/plan/limits.py: 4 per CPU, 256 MiB each in half
# its memory) applies too, and is the lower one on any cluster under 256 CPUs. docs/design.md "Actor caps".
MAX_ACTORS = 1024


def integer(key: str, value: Any, minimum: int = 1) -> int:
    """An integer (not a bool) >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def positive(**values: Any) -> None:
    """ConfigError naming the first value that is not a number > 0 (rows, dim, agents, memory, ...)."""
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not value > 0:
            raise ConfigError(f"{key} must be > 0, got {value!r}")


def number(key: str, value: Any, minimum: float = 0.0) -> float:
    """A finite number (not a bool) >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not math.isfinite(value) \
            or value < minimum:
        raise ConfigError(f"{key} must be a finite number >= {minimum:g}, got {value!r}")
    return float(value)


def fraction(key: str, value: Any, *, closed_low: bool = False, closed_high: bool = False) -> float:
    """A number in (0, 1), with either end included on request (e.g. test_fraction in [0, 1))."""
    low, high = ("[" if closed_low else "("), ("]" if closed_high else ")")
    ok = isinstance(value, int | float | np.number) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value >= 0.0 if closed_low else value > 0.0) and (value <= 1.0 if closed_high else value < 1.0)
    if not ok:
        raise ConfigError(f"{key} must be a fraction in {low}0, 1{high}, got {value!r}")
    return float(value)


def keep(value: Any, key: str = "keep") -> float:
    """A coreset keep fraction: in (0, 1)."""
    return fraction(key, value)


def listed(key: str, values: Any, what: str, each: Callable[[Any, str], Any]) -> list[Any]:
    """A non-empty list whose every item passes `each(value, key[i])`."""
    if not isinstance(values, list | tuple) or not values:
        raise ConfigError(f"{key} must be a non-empty list of {what}, got {values!r}")
    return [each(v, f"{key}[{i}]") for i, v in enumerate(values)]


def keeps(key: str, values: Any) -> list[float]:
    """A non-empty list of keep fractions (a selection's `keep`)."""
    return listed(key, values, "keep fractions in (0, 1)", keep)


def choice(key: str, value: Any, options: Iterable[str]) -> str:
    """One of a fixed set of names."""
    options = list(options)
    if value not in options:
        raise ConfigError(f"{key} must be one of {options}, got {value!r}")
    return str(value)


def shards(value: Any, key: str = "shards", maximum: int = MAX_ACTORS, *, auto: bool = False) -> int:
    """A shard count in [1, maximum] (or 0 = sized to the cluster when `auto`)."""
    if auto and not isinstance(value, bool) and isinstance(value, int) and value == 0:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 1 <= value <= maximum:
        zero = " (or 0 to size it to the cluster)" if auto else ""
        raise ConfigError(f"{key} must be in [1, {maximum}]{zero}, got {value!r}")
    return int(value)


def actor_group(key: str, actors: int) -> None:
    """ConfigError when one group of actors (e.g. shards × replicas) exceeds MAX_ACTORS."""
    if actors > MAX_ACTORS:
        raise ConfigError(f"{key} asks for {actors} actors in one group; at most {MAX_ACTORS}")


def positive_ints(key: str, values: Any) -> list[int]:
    """A non-empty list of integers >= 1 (e.g. a sweep's shard counts)."""
    return listed(key, values, "integers >= 1", lambda v, k: integer(k, v))


def steps(value: Any, key: str = "steps") -> int:
    """A number of walk or training steps."""
    return integer(key, value)


def alpha(value: Any, key: str = "alpha") -> float:
    """The self-repellence strength of SA-SRRW (0 = the base chain)."""
    return number(key, value)


def alphas(key: str, values: Any) -> list[float]:
    """A non-empty list of alphas."""
    return listed(key, values, "numbers >= 0", alpha)


def env_seconds(name: str, default: float) -> float:
    """A positive number of seconds from the environment variable `name` (unset or empty: `default`)."""
    text = os.environ.get(name, "")
    try:
        value = float(text) if text else default
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {text!r}")
    return value
