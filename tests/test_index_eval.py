"""The exact evaluation reads a part in bounded pieces and answers exactly as one whole pass would."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

import shardwalk.workers.index_eval as index_eval
from shardwalk.core.data.schema import from_numpy
from shardwalk.core.index import hnsw
from shardwalk.core.storage.sources import plan_shards


def test_exact_part_in_pieces_equals_one_pass_over_the_part(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(300, 8)).astype(np.float32)
    ids = np.arange(1000, 1300, dtype=np.int64)
    pq.write_table(from_numpy(vecs, ids), tmp_path / "part-00000.parquet", row_group_size=50)
    spec = plan_shards(str(tmp_path), 1)[0]
    queries = rng.normal(size=(20, 8)).astype(np.float32)
    monkeypatch.setattr(index_eval, "EXACT_ROWS", 37)  # pieces that straddle row groups
    got_ids, got_d = index_eval.exact_part._function(spec, queries, 5, "l2")
    want_ids, want_d = hnsw.exact_search(queries, vecs, ids, 5, "l2")
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_d, want_d, rtol=1e-5)
