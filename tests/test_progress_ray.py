"""A stage running as a Ray task reports its parts done to the driver's progress listener (workers/progress_channel)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardwalk.core.dag.runner import Pipeline, Runner
from shardwalk.core.progress import Update
from shardwalk.pipelines.common import ingest_stage
from shardwalk.pipelines.runtime import ray_submit
from shardwalk.workers.progress_channel import listening

pytestmark = pytest.mark.ray


def test_a_stage_reports_its_parts_done_to_the_driver(ray_local: None, tmp_path: Path) -> None:
    source = tmp_path / "vectors.parquet"
    rows = 300
    vectors = np.random.default_rng(0).normal(size=(rows, 4)).astype(np.float32)
    pq.write_table(pa.table({"id": np.arange(rows), "vector": list(vectors)}), source)
    pipeline = Pipeline("ingest")
    ingest_stage(pipeline, {"source": str(source), "shards": 3, "id_column": "id", "vector_column": "vector",
                            "label_column": "label"}, require_label=False)
    got: list[tuple[str, str, Update]] = []
    finished = threading.Event()

    def on_update(stage: str, sender: str, update: Update) -> None:
        got.append((stage, sender, update))
        if update.phase == "validate" and update.done == update.total:
            finished.set()

    with listening("127.0.0.1", on_update) as channel:
        record = Runner(pipeline, tmp_path / "runs", lambda fn, args, opts: ray_submit(fn, args, opts, channel)).run()
        assert record.stages["ingest"].status == "done"
        assert finished.wait(30)  # the last datagram may land just after the stage's result
    validate = [u for stage, sender, u in got if stage == "ingest" and sender == "task" and u.phase == "validate"]
    assert validate[0].done == 0 and validate[-1].done == validate[-1].total == 3
    assert validate[-1].rows == rows and validate[-1].unit == "parts" and validate[-1].rows_unit == "rows"
