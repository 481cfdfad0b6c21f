"""The Arrow data contracts of docs/design.md, validated once where data enters.

Every validator returns a normalised table (canonical dtypes) or raises `DataError` naming the
column, the first bad row and `where` the data came from. Nothing downstream re-checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shardwalk.core.errors import DataError

ID = "id"
VECTOR = "vector"
LABEL = "label"

KNN_GRAPH_SCHEMA = pa.schema(
    [("id", pa.int64()), ("neighbors", pa.list_(pa.int64())), ("distances", pa.list_(pa.float32()))]
)
EDGES_SCHEMA = pa.schema([("src", pa.int64()), ("dst", pa.int64())])
ASSIGNMENT_SCHEMA = pa.schema([("node", pa.int64()), ("id", pa.int64())])
SELECTION_SCHEMA = pa.schema([("id", pa.int64()), ("weight", pa.float64())])


@dataclass(frozen=True)
class Columns:
    """Which of the user's columns hold the id, the vector and the label (renamed to the contract's names)."""

    id: str = ID
    vector: str = VECTOR
    label: str = LABEL

    @classmethod
    def from_config(cls, config: dict) -> Columns:
        """The `id_column`/`vector_column`/`label_column` keys of a pipeline config."""
        return cls(config.get("id_column", ID), config.get("vector_column", VECTOR), config.get("label_column", LABEL))

    def is_default(self) -> bool:
        return self == Columns()


def apply_columns(table: pa.Table, columns: Columns, where: str) -> pa.Table:
    """Rename the user's id/vector/label columns to `id`/`vector`/`label`, naming the option on a miss."""
    if columns.is_default():
        return table
    names = list(table.column_names)
    renames = {columns.id: ID, columns.vector: VECTOR, columns.label: LABEL}
    for option, (user, canonical) in zip(("id_column", "vector_column", "label_column"), renames.items()):
        if user == canonical:
            continue
        if user not in names:
            raise DataError(f"{where}: {option} '{user}' is not a column; found {names}")
        if canonical in names:
            raise DataError(f"{where}: {option} '{user}' would replace the existing column '{canonical}'; rename or drop it")
    return table.rename_columns([renames.get(n, n) for n in names])


def check_vector_columns(schema: pa.Schema, columns: Columns, where: str, *, dim: int | None = None) -> None:
    """A source's schema holds the (mapped) id and vector columns, of dimension `dim` when known: checked from
    a footer, before any cluster starts, naming the option to set on a miss."""
    names = list(schema.names)
    mapped = apply_columns(schema.empty_table(), Columns(columns.id, columns.vector), where)
    missing = [(option, user) for option, user, canonical in (("id_column", columns.id, ID), ("vector_column", columns.vector, VECTOR))
               if canonical not in mapped.column_names]
    if missing:
        hint = " and ".join(f"--{opt.replace('_', '-')} NAME ({opt})" for opt, _ in missing)
        raise DataError(f"{where}: missing column(s) {[u for _, u in missing]}; found {names}; name yours with {hint}")
    typ = mapped.schema.field(VECTOR).type
    if dim is not None and pa.types.is_fixed_size_list(typ) and typ.list_size != dim:
        raise DataError(f"{where}: column '{columns.vector}' has dimension {typ.list_size}, expected {dim}")


def check_label_column(table: pa.Table, where: str, *, user_name: str = LABEL, offset: int = 0) -> None:
    """Class labels must be integers without nulls; floats are refused rather than silently truncated."""
    if LABEL not in table.column_names:
        return
    col = table.column(LABEL)
    if not pa.types.is_integer(col.type):
        raise DataError(f"{where}: label column '{user_name}' must hold integer class labels, got {col.type}")
    if col.null_count:
        row = _first_true(np.asarray(col.is_null().to_numpy(zero_copy_only=False)))
        raise DataError(f"{where}: label column '{user_name}' has a null at row {row + offset}")


def encode_labels(table: pa.Table, classes: np.ndarray) -> pa.Table:
    """Replace `label` by its index in the sorted `classes` (0..K-1), so every per-class array has K rows."""
    values = table.column(LABEL).to_numpy()
    index = np.searchsorted(classes, values)
    if index.size and (index.max() >= len(classes) or not np.array_equal(classes[index], values)):
        raise ValueError("label outside the class list it is encoded with")
    return table.set_column(table.schema.get_field_index(LABEL), LABEL, pa.array(index.astype(np.int64)))


def vectors_schema(dim: int, *, label: bool = False) -> pa.Schema:
    """The canonical schema of a vectors table of dimension `dim`."""
    fields = [pa.field(ID, pa.int64(), nullable=False), pa.field(VECTOR, pa.list_(pa.float32(), dim))]
    if label:
        fields.append(pa.field(LABEL, pa.int64()))
    return pa.schema(fields)


def _require_columns(table: pa.Table, names: Iterable[str], where: str) -> None:
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; found {table.column_names}")


def _first_true(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _check_no_nulls(table: pa.Table, column: str, where: str, offset: int = 0) -> None:
    col = table.column(column)
    if col.null_count:
        row = _first_true(np.asarray(col.is_null().to_numpy(zero_copy_only=False)))
        raise DataError(f"{where}: column '{column}' has a null at row {row + offset}")


def _int64_column(table: pa.Table, column: str, where: str, offset: int = 0) -> pa.ChunkedArray:
    col = table.column(column)
    if not pa.types.is_integer(col.type):
        raise DataError(f"{where}: column '{column}' must be an integer type, got {col.type}")
    _check_no_nulls(table, column, where, offset)
    if col.type != pa.int64():
        if pa.types.is_uint64(col.type) and len(col) and pc.max(col).as_py() > np.iinfo(np.int64).max:
            raise DataError(f"{where}: column '{column}' has values beyond int64")
        col = col.cast(pa.int64())
    return col


def check_unique(ids: np.ndarray, column: str, where: str, offset: int = 0) -> None:
    """Raise DataError at the first row whose id already appeared earlier."""
    if ids.size < 2:
        return
    order = np.argsort(ids, kind="stable")
    dup = ids[order][1:] == ids[order][:-1]
    if dup.any():
        later_rows = order[1:][dup]
        row = int(later_rows.min())
        raise DataError(f"{where}: column '{column}' has duplicate value {int(ids[row])} at row {row + offset}")


def _vector_column(table: pa.Table, where: str, dim: int | None, offset: int) -> pa.FixedSizeListArray:
    col = table.column(VECTOR)
    typ = col.type
    if not (pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ)):
        raise DataError(f"{where}: column 'vector' must be a list of floats, got {typ}")
    if not pa.types.is_floating(typ.value_type) and not pa.types.is_integer(typ.value_type):
        raise DataError(f"{where}: column 'vector' must hold floats, got {typ.value_type}")
    _check_no_nulls(table, VECTOR, where, offset)
    arr = col.combine_chunks()
    if pa.types.is_fixed_size_list(typ):
        width = typ.list_size
    else:
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        width = int(lengths[0]) if len(lengths) else 0
        bad = lengths != width
        if bad.any():
            row = _first_true(bad)
            raise DataError(
                f"{where}: column 'vector' has mixed dimensions: row {row + offset} has "
                f"{int(lengths[row])}, row {offset} has {width}"
            )
    if dim is not None and width != dim:
        raise DataError(f"{where}: column 'vector' has dimension {width}, expected {dim}")
    if width == 0:
        raise DataError(f"{where}: column 'vector' has dimension 0")
    values = pc.list_flatten(arr)
    if values.null_count:
        row = _first_true(np.asarray(values.is_null().to_numpy(zero_copy_only=False))) // width
        raise DataError(f"{where}: column 'vector' has a null element at row {row + offset}")
    flat = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32)
    finite = np.isfinite(flat).reshape(-1, width).all(axis=1)
    if not finite.all():
        row = _first_true(~finite)
        raise DataError(f"{where}: column 'vector' has NaN or inf at row {row + offset}")
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), width)


def validate_vectors(
    table: pa.Table,
    *,
    where: str = "input",
    dim: int | None = None,
    require_label: bool = False,
    row_offset: int = 0,
    check_ids_unique: bool = True,
) -> pa.Table:
    """Validate a vectors table; return it with `id: int64`, `vector: fixed_size_list<float32>[d]`.

    `row_offset` makes row numbers in messages global when `table` is one shard of a dataset.
    Other columns pass through unchanged (a `label` column is cast to int64).
    """
    if not isinstance(table, pa.Table):
        raise DataError(f"{where}: expected a pyarrow.Table, got {type(table).__name__}")
    _require_columns(table, [ID, VECTOR] + ([LABEL] if require_label else []), where)
    if table.num_rows == 0:
        raise DataError(f"{where}: table is empty (0 rows)")
    ids = _int64_column(table, ID, where, row_offset)
    if check_ids_unique:
        check_unique(ids.to_numpy(), ID, where, row_offset)
    vectors = _vector_column(table, where, dim, row_offset)
    out = table.set_column(table.schema.get_field_index(ID), pa.field(ID, pa.int64(), nullable=False), ids)
    out = out.set_column(out.schema.get_field_index(VECTOR), VECTOR, vectors)
    if LABEL in out.column_names:
        out = out.set_column(out.schema.get_field_index(LABEL), LABEL, _int64_column(out, LABEL, where, row_offset))
    return out


def vector_dim(table_or_schema: pa.Table | pa.Schema) -> int:
    """The fixed dimension of a validated vectors table or schema."""
    schema = table_or_schema.schema if isinstance(table_or_schema, pa.Table) else table_or_schema
    typ = schema.field(VECTOR).type
    if not pa.types.is_fixed_size_list(typ):
        raise DataError(f"column 'vector' is {typ}, not a fixed-size list; validate the table first")
    return typ.list_size


def to_numpy(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 (n,), vectors float32 (n, d)) of a validated vectors table, without a per-row loop."""
    d = vector_dim(table)
    ids = table.column(ID).to_numpy()
    chunked = table.column(VECTOR)
    # combine_chunks copies even a single chunk: take that chunk as is (a view of the Arrow buffer)
    col = chunked.chunk(0) if chunked.num_chunks == 1 else chunked.combine_chunks()
    flat = col.values.to_numpy(zero_copy_only=False)[col.offset * d : (col.offset + len(col)) * d]
    return ids.astype(np.int64, copy=False), np.asarray(flat, dtype=np.float32).reshape(len(col), d)


def from_numpy(
    vectors: np.ndarray,
    ids: np.ndarray | Sequence[int] | None = None,
    labels: np.ndarray | Sequence[int] | None = None,
    *,
    where: str = "numpy input",
) -> pa.Table:
    """Build a (validated) vectors table from a 2-D array; ids default to 0..n-1."""
    arr = np.asarray(vectors)
    if arr.ndim != 2:
        raise DataError(f"{where}: vectors must be a 2-D array (n, d), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"{where}: vectors must be numeric, got dtype {arr.dtype}")
    n, d = arr.shape
    id_arr = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids)
    if id_arr.shape != (n,):
        raise DataError(f"{where}: ids have shape {id_arr.shape}, expected ({n},)")
    flat = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)
    columns = {ID: pa.array(id_arr), VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(flat), d)}
    if labels is not None:
        lab = np.asarray(labels)
        if lab.shape != (n,):
            raise DataError(f"{where}: labels have shape {lab.shape}, expected ({n},)")
        columns[LABEL] = pa.array(lab)
    return validate_vectors(pa.table(columns), where=where)


def validate_knn_graph(table: pa.Table, *, where: str = "knn graph") -> pa.Table:
    """Validate docs/design.md's knn-graph table (ids unique, equal-length neighbour/distance lists)."""
    _require_columns(table, KNN_GRAPH_SCHEMA.names, where)
    if table.num_rows == 0:
        raise DataError(f"{where}: table is empty (0 rows)")
    ids = _int64_column(table, "id", where)
    check_unique(ids.to_numpy(), "id", where)
    for name in ("neighbors", "distances"):
        _check_no_nulls(table, name, where)
    n_len = pc.list_value_length(table.column("neighbors")).to_numpy(zero_copy_only=False)
    d_len = pc.list_value_length(table.column("distances")).to_numpy(zero_copy_only=False)
    if (n_len != d_len).any():
        row = _first_true(n_len != d_len)
        raise DataError(f"{where}: 'neighbors' and 'distances' differ in length at row {row}")
    return table.select(KNN_GRAPH_SCHEMA.names).cast(KNN_GRAPH_SCHEMA)


def validate_scores(
    table: pa.Table, *, where: str = "scores", columns: Sequence[str] = (), allow_nan: bool = False
) -> pa.Table:
    """Validate a scores table: unique int64 ids and float64 score columns (finite unless allowed)."""
    _require_columns(table, [ID, *columns], where)
    if table.num_rows == 0:
        raise DataError(f"{where}: table is empty (0 rows)")
    out = table.set_column(table.schema.get_field_index(ID), ID, _int64_column(table, ID, where))
    check_unique(out.column(ID).to_numpy(), ID, where)
    for name in columns:
        col = out.column(name)
        if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
            raise DataError(f"{where}: score column '{name}' must be numeric, got {col.type}")
        _check_no_nulls(out, name, where)
        values = col.to_numpy().astype(np.float64)
        if not allow_nan and not np.isfinite(values).all():
            raise DataError(f"{where}: score column '{name}' has NaN or inf at row {_first_true(~np.isfinite(values))}")
        out = out.set_column(out.schema.get_field_index(name), name, pa.array(values, pa.float64()))
    return out


def validate_edges(table: pa.Table, *, where: str = "edges") -> pa.Table:
    """Validate an agent edge list (`src`, `dst` int64, no nulls); graph-level checks live in core/agents."""
    _require_columns(table, EDGES_SCHEMA.names, where)
    if table.num_rows == 0:
        raise DataError(f"{where}: edge list is empty (0 rows)")
    cols = [_int64_column(table, name, where) for name in EDGES_SCHEMA.names]
    return pa.table(cols, schema=EDGES_SCHEMA)


def validate_assignment(table: pa.Table, *, where: str = "assignment") -> pa.Table:
    """Validate a node → data-id assignment table (`node`, `id` int64, each data id assigned once)."""
    _require_columns(table, ASSIGNMENT_SCHEMA.names, where)
    if table.num_rows == 0:
        raise DataError(f"{where}: assignment is empty (0 rows)")
    cols = [_int64_column(table, name, where) for name in ASSIGNMENT_SCHEMA.names]
    out = pa.table(cols, schema=ASSIGNMENT_SCHEMA)
    check_unique(out.column("id").to_numpy(), "id", where)
    return out
