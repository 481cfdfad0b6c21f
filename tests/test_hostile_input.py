"""Property-based hostile input: arbitrary tables and `--set` strings give a typed error, never a crash."""

from __future__ import annotations

import string
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardwalk.core.data.schema import to_numpy, validate_vectors
from shardwalk.core.errors import ConfigError, DataError
from shardwalk.pipelines.config import load_config

FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.none())
ROWS = st.lists(st.lists(FLOATS, min_size=0, max_size=4), min_size=0, max_size=8)
IDS = st.lists(st.one_of(st.integers(-(2**63), 2**63 - 1), st.none()), min_size=0, max_size=8)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(vectors=ROWS, ids=IDS)
def test_arbitrary_vectors_tables_are_validated_or_refused(vectors, ids) -> None:
    n = min(len(vectors), len(ids))
    table = pa.table({"id": pa.array(ids[:n], pa.int64()), "vector": pa.array(vectors[:n], pa.list_(pa.float32()))})
    try:
        out = validate_vectors(table, where="prop")
    except DataError as exc:
        assert str(exc).startswith("prop: ") and "\n" not in str(exc)
        return
    got_ids, x = to_numpy(out)  # anything accepted honours the contract
    assert len(set(got_ids.tolist())) == len(got_ids) == n > 0
    assert np.isfinite(x).all() and x.shape[1] > 0


@settings(max_examples=100, deadline=None, derandomize=True)
@given(column=st.sampled_from(["id", "vector"]), junk=st.lists(st.text(max_size=3), min_size=1, max_size=4))
def test_wrong_column_types_are_refused(column, junk) -> None:
    good = {"id": pa.array(range(len(junk)), pa.int64()), "vector": pa.array([[1.0]] * len(junk))}
    good[column] = pa.array(junk)
    try:
        validate_vectors(pa.table(good))
    except DataError as exc:
        assert column in str(exc)
    else:
        raise AssertionError("a string column was accepted")


MODULE = SimpleNamespace(
    DEFAULTS={"shards": 2, "rate": 0.5, "source": "builtin:digits", "flag": False, "keep": [0.1], "hnsw": {"M": 16}},
    validate=lambda config: None,
)


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(st.text(alphabet=string.printable + "é€[]{}=.\"'", max_size=40))
def test_arbitrary_set_strings_parse_or_raise_config_error(item: str) -> None:
    try:
        config = load_config(MODULE, None, [item])
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert set(config) == set(MODULE.DEFAULTS)
    assert isinstance(config["shards"], int) and isinstance(config["rate"], float)
    assert isinstance(config["source"], str) and isinstance(config["flag"], bool)


def test_control_characters_in_keys_stay_on_one_line() -> None:
    """Found by the property above: a key with a newline must not break the one-line message."""
    try:
        load_config(MODULE, None, ["0\n0=1"])
    except ConfigError as exc:
        assert "\n" not in str(exc) and "'0\\n0'" in str(exc)
    else:
        raise AssertionError("a key with a newline was accepted")
