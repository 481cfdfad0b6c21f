"""The one reader of labelled vectors into (ids, x, y): scoring, evaluation, the walk's agents and the demo use it.

`labelled_arrays` turns a validated table into arrays; `read_labelled` reads a source (validating it
unless it is an ingest stage's output, which was validated where it entered).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from shardwalk.core.data.schema import ID, LABEL, VECTOR, to_numpy, validate_vectors
from shardwalk.core.errors import DataError
from shardwalk.core.storage.sources import read_table

Labelled = tuple[np.ndarray, np.ndarray, np.ndarray]  # ids int64 (n,), x float32 (n, d), y int64 (n,)


def labelled_arrays(table: pa.Table, *, binarize: int | None = None, where: str = "input") -> Labelled:
    """(ids, x, y) of a validated vectors table with `label`; `binarize`: y = label >= binarize (0/1)."""
    if LABEL not in table.column_names:
        raise DataError(f"{where}: missing column '{LABEL}' (labelled vectors need one)")
    ids, x = to_numpy(table)
    y = np.asarray(table.column(LABEL).to_numpy(), dtype=np.int64)
    if binarize is not None:
        y = (y >= binarize).astype(np.int64)
    return ids, x, y


def read_labelled(
    source: Any, *, where: str | None = None, ids: Any = None, binarize: int | None = None, validated: bool = False
) -> Labelled:
    """(ids, x, y) of a labelled vectors source, validated here unless `validated` (an ingest output).

    `ids` (an array of ids) reads only those rows of a Parquet dataset, with a pushed-down filter.
    """
    where = where or (os.fspath(source) if isinstance(source, str | os.PathLike) else "input")
    if ids is not None or validated:
        dataset = pads.dataset(os.fspath(source), format="parquet")
        wanted = None if ids is None else pc.field(ID).isin(pa.array(np.asarray(ids), pa.int64()))
        table = dataset.to_table(columns=[ID, VECTOR, LABEL], filter=wanted)
    else:
        table = validate_vectors(read_table(source), where=where, require_label=True)
    return labelled_arrays(table, binarize=binarize, where=where)
