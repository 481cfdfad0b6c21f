"""The all-points kNN graph without an index, on actors (core/index/knn_partition.py does the arithmetic).

1. every actor reads its share of the ingest parts' row groups (its threads side by side) while its numba
   kernels load, and keeps its slice of a seeded sample (32 sampled rows per partition); actor 0 seeds k-means
   from every actor's slice, fetched actor to actor; then each Lloyd iteration and balancing round runs on
   every actor's slice, the driver adding up their partial sums / counts (kp.fit_router);
2. every actor assigns its rows to their `overlap` nearest partitions and splits them by the actor owning
   those partitions (partition p → actor p mod A); the actors fetch their pieces from the object store
   themselves (no driver funnel), an actor's own piece staying where it is;
3. each actor builds the exact local graph of every partition it owns (its threads each on one partition),
   folds them into one top-k per held point and sends it to the point's home actor (the owner of its
   nearest partition);
4. each home actor merges its points' candidates (exact top-k union), refines them (neighbours of
   neighbours among the points it holds) and writes its Parquet parts.

Memory per actor (docs/design.md, "kNN graph without an index"): with n rows of d floats, A actors, overlap o,
k neighbours, T threads each building one partition of ~R rows at a time with B = `block` rows per matmul,
  held ≈ (o·n/A)·(4d + 8 + 8o) + 2·(o·n/A)·k·12 + T·(B·R·4 + 3·R·4d) bytes.
A failed actor fails the stage (no per-unit retry as on the HNSW path); the stage can be run again.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import ray

from shardwalk.core.data.builtin import hash_unit
from shardwalk.core.data.schema import to_numpy
from shardwalk.core.index import hnsw
from shardwalk.core.index import knn_partition as kp
from shardwalk.core.index.hnsw_results import knn_graph_table
from shardwalk.core.plan.sizing import cpus_per_actor
from shardwalk.core.storage import sink, store
from shardwalk.core.storage.files import make_dirs
from shardwalk.core.storage.sources import plan_row_groups, read_shard, release_arrow_memory
from shardwalk.workers import raykit
from shardwalk.workers.cluster import cluster_nodes
from shardwalk.workers.index_actors import default_cpus
from shardwalk.workers.progress_channel import new_sender, sending, target, wait_counted

READ_ROWS = 65_536  # rows per row range an actor reads (whole row groups of 128-d vectors)
WRITE_ROWS = 262_144  # rows per written part


@ray.remote(max_restarts=0)
class GraphActor:
    """Holds the points of its partitions; builds their local graphs; merges, refines and writes its home points."""

    def __init__(self, index: int, threads: int, method: str) -> None:
        import numba
        from threadpoolctl import threadpool_limits

        self.index = index
        self.threads = max(1, threads)
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        self._limits = threadpool_limits(limits=max(1, threads))  # BLAS threads = this actor's CPUs
        self.ids = np.empty(0, np.int64)
        # the kernels' cached machine code loads while the rows are read (joined before they are first used)
        self._warm = threading.Thread(target=kp.warm_kernels, args=(self.threads, method), daemon=True)
        self._warm.start()

    def read(self, specs: list[Any], fraction: float, seed: int, fit: float = 1.0, space: str = "l2"
             ) -> tuple[np.ndarray, np.ndarray]:
        """Read my row groups of the ingest parts (my threads side by side, each copied once into my arrays);
        keep and return the seeded sample of them k-means trains on (`fit` of it: the balancing offsets')."""
        total = sum(s.num_rows for s in specs)
        ids, x, at = np.empty(total, np.int64), None, 0
        with ThreadPoolExecutor(self.threads) as pool:
            for got_ids, got_x in pool.map(lambda spec: to_numpy(read_shard(spec, ["id", "vector"])), specs):
                x = np.empty((total, got_x.shape[1]), np.float32) if x is None else x
                ids[at:at + len(got_ids)], x[at:at + len(got_ids)] = got_ids, got_x
                at += len(got_ids)
        self.raw = (ids, x) if total else None
        release_arrow_memory()
        if self.raw is None or fraction <= 0:
            self.training = kp.TrainingSlice(np.empty((0, 1), np.float32), np.empty(0, bool))
            return np.empty(0, np.int64), np.empty((0, 0), np.float32)
        keep = hash_unit(ids, seed) < fraction
        self.training = kp.TrainingSlice(hnsw.prepare(x[keep], space), hash_unit(ids[keep], seed + 1) < fit, self.threads)
        return ids[keep], x[keep]

    def seed(self, sample_refs: list[Any], parts: int, space: str, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
        """k-means++ centres (and spare rows) from every actor's seeded sample, fetched actor to actor (None:
        a single partition)."""
        self._warm.join()
        return kp.seed_from_samples(ray.get(sample_refs), parts, space, seed)

    def kmeans(self, step: str, *args: Any) -> Any:
        """One k-means step (a kp.TrainingSlice method) on my slice of the sample: the driver combines them."""
        if step not in kp.TRAINING_STEPS:
            raise ValueError(f"knn graph actor: unknown k-means step {step!r}")
        return getattr(self.training, step)(*args)

    def scatter(self, router: hnsw.Router | None, overlap: int, owners: np.ndarray, actors: int) -> Any:
        """My rows split by actor: per actor (ids, vectors, partitions it owns else -1, home actor). My own
        piece stays here (an empty one is returned in its place): no round trip through the object store."""
        self._warm.join()
        self.training = None
        pieces = []
        empty = (np.empty(0, np.int64), np.empty((0, 1), np.float32), np.empty((0, overlap), np.int64), np.empty(0, np.int64))
        self.own = empty
        if self.raw is None:
            return tuple([empty] * actors) if actors > 1 else empty
        ids, x = self.raw
        self.raw = None
        member = np.zeros((len(ids), 1), np.int64) if router is None else kp.assign(router, x, overlap, self.threads)
        owner = owners[member]
        home = owner[:, 0]
        for a in range(actors):
            mine = (owner == a).any(axis=1)
            every = bool((owner == a).all())  # one actor: every row and membership is its own, no copy
            piece = (ids, x, member, home) if every else (ids[mine], x[mine], np.where(owner == a, member, -1)[mine], home[mine])
            if a == self.index:
                self.own, piece = piece, empty
            pieces.append(piece)
        return tuple(pieces) if actors > 1 else pieces[0]

    def load(self, refs: list[Any]) -> int:
        """Fetch my pieces from every other actor's scatter (straight from the object store); rows held."""
        got = ray.get(refs)
        got[self.index] = self.own  # in actor order
        pieces = [p for p in got if len(p[0])]
        self.own = None
        if not pieces:
            return 0
        self.ids, self.x, self.member, self.home = kp.in_id_order(pieces)
        return len(self.ids)

    def candidates(self, owned: list[int], k: int, space: str, block: int, actors: int,
                   report: tuple[Any, str, int] | None = None) -> Any:
        """Local graphs of my partitions; per home actor, (ids, candidate ids, candidate distances).

        `report`: (progress channel, stage, partitions of all actors) to count my partitions done towards."""
        began = time.perf_counter()
        if len(self.ids) == 0:
            empty = (self.ids, np.empty((0, k), np.int64), np.empty((0, k), np.float32))
            return tuple([empty] * actors) if actors > 1 else empty
        channel, stage, partitions = report if report is not None else (None, "", None)
        with sending(channel, stage, new_sender()):
            ci, cd = kp.local_candidates(self.ids, self.x, self.member, owned, k, space, block, partitions, self.threads)
        self.local_seconds = time.perf_counter() - began
        masks = [self.home == b for b in range(actors)]
        out = [(self.ids[m], ci[m], cd[m]) for m in masks]
        self.own, out[self.index] = out[self.index], (self.ids[:0], ci[:0], cd[:0])  # mine stays here
        return tuple(out) if actors > 1 else out[0]

    def finish(self, refs: list[Any], k: int, rounds: int, min_rate: float, seed: int, space: str, out: str
               ) -> dict[str, Any]:
        """Merge my home points' candidates, refine, write `part-AAAAA-CCCCC.parquet` parts."""
        began = time.perf_counter()
        home_ids = self.ids[self.home == self.index] if len(self.ids) else self.ids
        nb, d = kp.merge_pieces(home_ids, [getattr(self, "own", None) or (home_ids[:0],) * 3, *ray.get(refs)], k)
        self.own = None
        nb, d, rates = (kp.refine_home(home_ids, nb, d, self.ids, self.x, rounds, space, min_rate, seed)
                        if len(self.ids) else (nb, d, []))
        entries = []
        for c, start in enumerate(range(0, len(home_ids), WRITE_ROWS)):
            stop = start + WRITE_ROWS
            table = knn_graph_table(home_ids[start:stop], nb[start:stop], d[start:stop])
            entries.append(sink.put_parquet(table, out, f"part-{self.index:05d}-{c:05d}.parquet"))
        return {"rows": len(home_ids), "entries": entries, "refine_rates": rates,
                "local_seconds": getattr(self, "local_seconds", 0.0), "finish_seconds": time.perf_counter() - began}


def _train(handles: list[Any], samples: list[Any], parts: int, space: str, settings: kp.GraphSettings
           ) -> hnsw.Router | None:
    """Balanced k-means on the actors' slices of the sample: actor 0 seeds; each Lloyd iteration and offsets
    round, every actor answers for its slice and the driver combines (kp.fit_router)."""
    seeded = ray.get(handles[0].seed.remote(samples, parts, space, settings.seed))
    if seeded is None:
        return None

    def ask(step: str, *args: Any) -> list[Any]:
        shared = [ray.put(a) for a in args]  # once, not once per actor
        return ray.get([h.kmeans.remote(step, *shared) for h in handles])

    return kp.fit_router(*seeded, space, settings.overlap, ask)


def _settled(refs: list[Any]) -> list[Any]:
    """The refs once finished, nothing fetched to the driver (a failed read raises where its sample is used)."""
    ray.wait(refs, num_returns=len(refs), fetch_local=False)
    return refs


def spread_specs(specs: list[Any], count: int) -> list[list[Any]]:
    """Row groups dealt to `count` actors, largest first to the one holding fewest rows (each list in source order)."""
    shares: list[list[Any]] = [[] for _ in range(count)]
    rows = [0] * count
    for spec in sorted(specs, key=lambda s: -s.num_rows):
        a = rows.index(min(rows))
        shares[a].append(spec)
        rows[a] += spec.num_rows
    return [sorted(share, key=lambda s: s.start) for share in shares]


def actor_layout(actors: int | None) -> tuple[int, int, float]:
    """(actors, threads each, CPUs reserved each): one actor per node with CPUs unless told."""
    nodes = cluster_nodes()
    count = actors or max(1, sum(1 for n in nodes if n.cpus >= 1))
    threads = max(1, math.floor(cpus_per_actor(nodes, count) + 1e-9))
    return count, threads, default_cpus(count)


def build_graph(source: str, out: str, *, k: int, settings: kp.GraphSettings, space: str = "l2",
                actors: int | None = None, threads: int | None = None) -> dict[str, Any]:
    """Write the graph of every row of `source` (Parquet vectors) as `out/part-*.parquet`; a summary."""
    began = time.perf_counter()
    out = sink.destination(out)
    if not store.is_uri(out):
        make_dirs(out)
    count, auto_threads, cpus = actor_layout(actors)
    threads = threads or auto_threads
    handles = [GraphActor.options(num_cpus=cpus).remote(a, threads, settings.method) for a in range(count)]  # start while planning
    try:
        specs = plan_row_groups(source, READ_ROWS)  # one row group each: none decoded twice
        total = sum(s.num_rows for s in specs)
        kp.check_k(k, total)
        parts = kp.partitions_for(total, settings)
        owners = np.arange(parts, dtype=np.int64) % count
        # each actor reads its row ranges itself (no driver funnel) and returns a seeded sample for k-means
        fraction = 0.0 if parts == 1 else min(1.0, 1.2 * kp.sample_rows(total, parts) / total)
        fit = min(1.0, kp.offset_rows(parts) / max(1.0, fraction * total))
        shares = spread_specs(specs, count)
        samples = wait_counted([h.read.remote(shares[a], fraction, settings.seed, fit, space)
                                for a, h in enumerate(handles)],
                               "knn graph: read", "read input", "actors", get=_settled,
                               rows=[sum(s.num_rows for s in share) for share in shares])
        read = time.perf_counter()
        try:
            router = _train(handles, samples, parts, space, settings)
        except Exception:
            ray.get(samples)  # a failed read: its own error, not the training's wrapping of it
            raise
        routed = time.perf_counter()
        r_ref = ray.put(router)
        pieces = [h.scatter.options(num_returns=count).remote(r_ref, settings.overlap, owners, count) for h in handles]
        pieces = [p if count > 1 else [p] for p in pieces]
        wait_counted([h.load.remote([p[a] for p in pieces]) for a, h in enumerate(handles)], "knn graph: partition",
                     "partition rows", "actors", get=ray.get)
        del pieces
        trained = time.perf_counter()
        report = (*target(), parts) if target() is not None else None  # the actors count partitions done
        cands = [h.candidates.options(num_returns=count).remote(np.flatnonzero(owners == a).tolist(), k, space,
                                                               settings.block, count, report) for a, h in enumerate(handles)]
        cands = [c if count > 1 else [c] for c in cands]
        rounds = settings.refine_rounds if parts > 1 else 0
        finishing = [h.finish.remote([c[b] for c in cands], k, rounds, settings.refine_min_rate, settings.seed, space, out)
                     for b, h in enumerate(handles)]
        ray.wait([c[0] for c in cands], num_returns=count, fetch_local=False)  # local graphs: the actors report
        done = wait_counted(finishing, "knn graph: merge and refine", "merge and refine", "actors", get=ray.get)
    finally:
        raykit.release(handles, [], None)
    for d in done:
        sink.record(d["entries"])
    return {"method": "exact" if parts == 1 else "partition", "rows": sum(d["rows"] for d in done),
            "partitions": parts, "overlap": settings.overlap, "actors": count, "threads_per_actor": threads,
            "refine_rates": [d["refine_rates"] for d in done],
            "read_seconds": round(read - began, 3), "train_seconds": round(routed - read, 3),
            "scatter_seconds": round(trained - routed, 3),
            "local_seconds": round(max(d["local_seconds"] for d in done), 3),
            "finish_seconds": round(max(d["finish_seconds"] for d in done), 3),
            "graph_seconds": round(time.perf_counter() - began, 3)}
