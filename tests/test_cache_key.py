"""Stage keys are canonical: equal inputs give equal keys, any change gives a new key."""

from __future__ import annotations

import numpy as np
import pytest

from core.cache_key import canonical, stage_key
from core.errors import ConfigError


def test_key_ignores_param_order_and_numpy_scalar_types() -> None:
    a = stage_key("s", "1", {"b": 1, "a": [0.5, 2]}, {"up": "k"})
    b = stage_key("s", "1", {"a": (np.float64(0.5), np.int64(2)), "b": 1}, {"up": "k"})
    assert a == b


@pytest.mark.parametrize(
    "change",
    [
        {"name": "t"},
        {"version": "2"},
        {"params": {"a": 0.5000000001}},
        {"params": {"a": 1}},
        {"upstream": {"up": "other"}},
    ],
)
def test_any_change_changes_the_key(change: dict) -> None:
    base = {"name": "s", "version": "1", "params": {"a": 0.5}, "upstream": {"up": "k"}}
    assert stage_key(**base) != stage_key(**{**base, **change})


def test_bools_and_ints_are_distinct() -> None:
    assert stage_key("s", "1", {"a": True}, {}) != stage_key("s", "1", {"a": 1}, {})


def test_unhashable_params_are_refused() -> None:
    with pytest.raises(ConfigError, match="stage 's'.f"):
        stage_key("s", "1", {"f": object()}, {})
    with pytest.raises(ConfigError, match="finite"):
        canonical(float("nan"))
