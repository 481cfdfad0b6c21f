"""The vectors contract: every bad input is a DataError naming the column and the first bad row."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from shardwalk.core.data.schema import (
    from_numpy,
    to_numpy,
    validate_assignment,
    validate_edges,
    validate_knn_graph,
    validate_scores,
    validate_vectors,
)
from shardwalk.core.errors import DataError


def _table(vectors, ids=None):
    ids = list(range(len(vectors))) if ids is None else ids
    return pa.table({"id": pa.array(ids, pa.int64()), "vector": pa.array(vectors, pa.list_(pa.float64()))})


def test_valid_list_column_is_normalised_to_fixed_size_float32() -> None:
    out = validate_vectors(_table([[1, 2], [3, 4]]))
    assert out.schema.field("vector").type == pa.list_(pa.float32(), 2)
    ids, x = to_numpy(out)
    assert ids.tolist() == [0, 1]
    np.testing.assert_array_equal(x, [[1, 2], [3, 4]])


def test_round_trip_numpy_keeps_labels_and_slices() -> None:
    x = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    table = from_numpy(x, ids=np.arange(10, 20), labels=np.arange(10) % 3)
    ids, back = to_numpy(table.slice(4, 3))
    assert ids.tolist() == [14, 15, 16]
    np.testing.assert_array_equal(back, x[4:7])
    assert table.column("label").type == pa.int64()


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        (_table([[1.0, 2.0], [float("nan"), 0.0]]), "NaN or inf at row 1"),
        (_table([[1.0, 2.0], [0.0, 0.0], [float("inf"), 0.0]]), "NaN or inf at row 2"),
        (_table([[1.0, 2.0], [1.0, 2.0, 3.0]]), "mixed dimensions: row 1 has 3"),
        (_table([[1.0], [2.0], [3.0]], ids=[5, 6, 5]), "duplicate value 5 at row 2"),
        (pa.table({"vector": pa.array([[1.0]])}), "missing column(s) ['id']"),
        (_table([]), "empty"),
        (pa.table({"id": pa.array([0.5]), "vector": pa.array([[1.0]])}), "'id' must be an integer"),
        (pa.table({"id": pa.array([1, None]), "vector": pa.array([[1.0], [2.0]])}), "null at row 1"),
        (pa.table({"id": pa.array([1, 2]), "vector": pa.array([[1.0], None])}), "'vector' has a null at row 1"),
        (pa.table({"id": pa.array([1]), "vector": pa.array(["x"])}), "must be a list of floats"),
    ],
)
def test_bad_vectors_raise_data_error_naming_the_problem(table: pa.Table, needle: str) -> None:
    with pytest.raises(DataError, match="^shard-7: ") as info:
        validate_vectors(table, where="shard-7")
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_row_offset_makes_rows_global() -> None:
    with pytest.raises(DataError, match="row 101"):
        validate_vectors(_table([[1.0], [float("nan")]]), row_offset=100)


def test_expected_dimension_is_enforced() -> None:
    with pytest.raises(DataError, match="dimension 2, expected 3"):
        validate_vectors(_table([[1.0, 2.0]]), dim=3)


def test_from_numpy_rejects_wrong_shapes() -> None:
    with pytest.raises(DataError, match="2-D"):
        from_numpy(np.zeros(3))
    with pytest.raises(DataError, match="ids have shape"):
        from_numpy(np.zeros((3, 2)), ids=[1, 2])


def test_other_contracts() -> None:
    knn = pa.table({"id": [1, 2], "neighbors": [[2], [1]], "distances": [[0.5], [0.5]]})
    assert validate_knn_graph(knn).schema.field("distances").type == pa.list_(pa.float32())
    with pytest.raises(DataError, match="differ in length at row 1"):
        validate_knn_graph(pa.table({"id": [1, 2], "neighbors": [[2], [1, 3]], "distances": [[0.5], [0.5]]}))
    with pytest.raises(DataError, match="'el2n' has NaN or inf at row 1"):
        validate_scores(pa.table({"id": [1, 2], "el2n": [0.1, float("nan")]}), columns=["el2n"])
    assert validate_edges(pa.table({"src": pa.array([0], pa.int32()), "dst": [1]})).schema.field("src").type == pa.int64()
    with pytest.raises(DataError, match="duplicate value 3"):
        validate_assignment(pa.table({"node": [0, 1], "id": [3, 3]}))
