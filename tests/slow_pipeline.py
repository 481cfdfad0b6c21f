"""A two-stage pipeline for driver-kill and concurrency tests: a quick stage, then one that can be made slow."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shardwalk.core.dag.runner import Pipeline
from shardwalk.core.storage.files import write_parquet

DEFAULTS: dict[str, Any] = {"rows": 1000, "marker_dir": "", "slow_s": 0}


def validate(config: dict[str, Any]) -> None:
    return None


def numbers(out: Path, *, rows: int) -> dict[str, Any]:
    """Deterministic data so that byte-identical outputs can be compared across runs."""
    values = np.arange(rows, dtype=np.int64)
    write_parquet(pa.table({"id": values, "square": values * values}), out / "numbers.parquet")
    return {"rows": rows}


def total(out: Path, numbers: Path, *, marker_dir: str, slow_s: float) -> dict[str, Any]:
    """Sums the squares after sleeping `slow_s` seconds, so a test can kill the driver meanwhile.

    A setting, not an environment variable: the stage runs in a Ray worker, which has the driver's environment
    only when the driver started that Ray (not when it joins the session's)."""
    if marker_dir:
        Path(marker_dir, f"total-started-{os.getpid()}").write_text("started")
    time.sleep(float(slow_s))
    squares = pq.read_table(numbers / "numbers.parquet").column("square").to_numpy()
    write_parquet(pa.table({"total": [int(squares.sum())]}), out / "total.parquet")
    return {"total": int(squares.sum())}


def build(config: dict[str, Any]) -> Pipeline:
    p = Pipeline("slow")
    p.stage("numbers", numbers, params={"rows": config["rows"]})
    p.stage("total", total, inputs=["numbers"], params={"marker_dir": config["marker_dir"], "slow_s": config["slow_s"]})
    return p
