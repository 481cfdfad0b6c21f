"""D2Shard actors: D2-Pruning (core/coresets/d2.py) over the kNN graph stage's parts, each actor holding its own rows.

Each actor reads its share of the graph parts and the scores (id → hardness lookup, labels), keeps its
training rows, and answers the greedy's rounds with its top rows; the driver only sees those and their
neighbour lists, never the graph. Each actor then writes its part of the selection table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import ray

from shardwalk.core import progress
from shardwalk.core.coresets import d2
from shardwalk.core.coresets.scores import HARD_HIGH
from shardwalk.core.coresets.selection import budget, check_keep
from shardwalk.core.coresets.selection_names import selection_name
from shardwalk.core.coresets.single_process import selection_table
from shardwalk.core.errors import InvariantError
from shardwalk.core.storage import sink
from shardwalk.core.storage.sources import ShardSpec, plan_shards, read_shard, read_table
from shardwalk.core.storage.store import is_uri
from shardwalk.workers.autoconnect import ensure_ray


def _padded(table: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, neighbours padded with -1, distances padded with 0) of a knn-graph table."""
    ids = table.column("id").to_numpy()
    lengths = pc.list_value_length(table.column("neighbors")).to_numpy(zero_copy_only=False)
    k = int(lengths.max()) if len(lengths) else 0
    nbr, dist = np.full((len(ids), k), -1, dtype=np.int64), np.zeros((len(ids), k))
    flat_n = pc.list_flatten(table.column("neighbors").combine_chunks()).to_numpy(zero_copy_only=False)
    flat_d = pc.list_flatten(table.column("distances").combine_chunks()).to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(len(ids)), lengths)
    cols = np.arange(len(flat_n)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    nbr[rows, cols], dist[rows, cols] = flat_n, flat_d
    return ids, nbr, dist


@ray.remote
class D2Actor:
    """One share of the graph's rows for D2 selection."""

    def __init__(self, graph: ShardSpec, scores: str):
        self.graph_spec, self.scores = graph, scores
        self.rows: d2.GraphRows | None = None
        self.shard: d2.D2Shard | None = None

    def load(self, score: str) -> tuple[Any, int]:
        """Read my graph rows (training rows only) and the scores; the exact sum of my edge distances."""
        table = read_table(self.scores, ["id", "label", score])  # a path or a store URI
        self.train_ids = table.column("id").to_numpy()
        self.values = table.column(score).to_numpy(zero_copy_only=False)
        self.labels_all = table.column("label").to_numpy()
        ids, nbr, dist = _padded(read_shard(self.graph_spec))
        self.rows = d2.training_rows(ids, nbr, dist, self.train_ids)
        return d2.distance_sum(self.rows)

    def prepare(self, score: str, hard_high: bool, class_balanced: bool, mean_distance: float, seed: int) -> None:
        """Forward message passing over my rows (core/coresets/d2.py)."""
        if self.rows is None:
            raise InvariantError("D2Actor.prepare before load()")
        lookup = d2.hardness_table(self.train_ids, self.values, hard_high)
        order = np.argsort(self.train_ids)
        labels = self.labels_all[order][np.searchsorted(self.train_ids[order], self.rows.ids)] if class_balanced else None
        self.shard = d2.D2Shard(self.rows, lookup, labels, mean_distance=mean_distance, seed=seed)

    def ask(self, name: str, kwargs: dict[str, Any]) -> Any:
        """One answer of the greedy's protocol."""
        if self.shard is None:
            raise InvariantError("D2Actor used before prepare()")
        return getattr(self.shard, name)(**kwargs)

    def write(self, out_dir: str, index: int) -> tuple[int, dict[str, Any]]:
        """Put my part of the selection table; its row count and manifest entry."""
        ids = self.shard.selected() if self.shard is not None else np.zeros(0, dtype=np.int64)
        return len(ids), sink.put_parquet(selection_table(ids), out_dir, sink.PART.format(index))


def select_d2(graph_dir: str | Path, scores_dir: str | Path, shards: int, selections: list[dict[str, Any]],
              out_dir: str | Path, *, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Each D2 selection ({keep, score, class_balanced}) on `shards` actors; `out_dir/<name>/part-*.parquet`."""
    ensure_ray()
    specs = plan_shards(sink.readable(graph_dir), shards)
    scores = str(sink.readable(scores_dir))
    actors = [D2Actor.options(num_cpus=0).remote(s, scores) for s in specs]
    out: dict[str, dict[str, Any]] = {}
    tracker = progress.Tracker("select (D2)", len(selections), "selections")
    try:
        for sel in selections:
            score, keep, cb = sel["score"], check_keep(sel["keep"]), bool(sel.get("class_balanced"))
            mean = d2.mean_distance(ray.get([a.load.remote(score) for a in actors]))
            ray.get([a.prepare.remote(score, HARD_HIGH[score], cb, mean, seed) for a in actors])

            def ask(name: str, **kwargs: Any) -> list:
                return ray.get([a.ask.remote(name, kwargs) for a in actors])

            n = int(sum(c.sum() for _, c in ask("class_counts")))
            m = budget(keep, n)
            d2.greedy_select(ask, d2.class_budget_map(ask, m, cb))
            name = sel.get("name") or selection_name("d2", keep, score, cb)
            dest = sink.destination(Path(out_dir) / name)
            if not is_uri(dest):
                Path(dest).mkdir(parents=True, exist_ok=True)
            written = ray.get([a.write.remote(str(dest), i) for i, a in enumerate(actors)])
            sink.record(entry for _, entry in written)
            rows = sum(k for k, _ in written)
            if rows != m:
                raise InvariantError(f"{name}: shards wrote {rows} rows, D2 selects {m}")
            out[name] = {"rows": rows, "budget": m}
            tracker.advance()
    finally:
        for a in actors:
            ray.kill(a)
    return out
