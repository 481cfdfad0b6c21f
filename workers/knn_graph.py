"""The all-points kNN graph of a ShardedIndex: batches of each shard's points, answered by every shard.

One *unit* = one batch of one shard's live points: its owner exports the batch (a call result, so the
driver owns it and it outlives the actor), every (probed) shard answers the whole batch with all its
hnswlib threads, and a replica of the owner merges (vectorised, shardwalk.core.index.hnsw) and writes one Parquet part.
Given the vectors the index was built from (the pipeline's ingest parts), a unit is a row range of them
instead, read by its owner from Parquet (hnswlib's get_items copies one point at a time, under the GIL).
At most `in_flight` units run at once, so memory stays flat as N grows.

A unit that fails because an actor died (or data it held was lost) is submitted again: the actor restarts
(`max_restarts`) and reloads its shard from the working directory, and every step of a unit is
deterministic, so the graph equals a fault-free run's. Parts are written under a fixed temporary name and
renamed, so a writer killed mid-write leaves nothing a reader could take for a part. On an object-store runs
dir each owner puts its parts straight into the stage's attempt from its own node (core/storage/sink.py) and the
stage's manifest lists them, so no part depends on the disk of the node that runs the stage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ObjectLostError, RayActorError, RayTaskError

from shardwalk.core import progress
from shardwalk.core.errors import ShardUnavailableError, ShardwalkError
from shardwalk.core.index import hnsw
from shardwalk.core.storage import sink, store
from shardwalk.core.storage.files import make_dirs
from shardwalk.core.storage.sources import ShardSpec
from shardwalk.workers.raykit import collect_quietly

log = logging.getLogger("shardwalk")

UNIT_ATTEMPTS = 4  # tries of one unit: the first plus retries after actor deaths
# Points per unit, as shardwalk.core.storage.files' row groups of 128-d vectors (a unit reads whole row groups). Measured at
# 200k × 128 on 2 threads, 3 runs each (the raw actor search: 11.1-11.6 s): read from the ingest parts at
# 65,536 12.2-13.1 s; exported from hnswlib at 65,536 13.0-13.7 s, at 16,384 12.8-15.0 s; read at 16,384
# 13.3-17.1 s. Two units in flight per shard hold ~70 MB.
BATCH = 65_536
IN_FLIGHT_PER_SHARD = 2  # units in flight per shard: one answering while the next is exported and written


@dataclass(frozen=True)
class GraphRequest:
    """What the graph asks of every shard: k (+1 for self), ef, and the router when probing few shards."""

    k: int
    ef: int
    nprobe: int
    router: dict[str, Any] | None
    batch_size: int
    out: Path | str  # a local directory or the stage's attempt prefix (shardwalk.core.storage.sink.destination)


@dataclass
class _Unit:
    shard: int  # the owner: exports the batch (or reads it from `rows`), merges and writes its part
    batch: int
    attempt: int = 0
    refs: list[Any] = field(default_factory=list)
    rows: ShardSpec | None = None  # a row range of the vectors the index was built from


def _lost_actor(exc: BaseException) -> bool:
    """Whether `exc` means an actor died or its data was lost (worth retrying), not a bug or bad input."""
    if isinstance(exc, RayActorError | ObjectLostError):
        return True
    cause = getattr(exc, "cause", None) if isinstance(exc, RayTaskError) else None
    return isinstance(cause, RayActorError | ObjectLostError)


def _submit(actors: list[list[Any]], unit: _Unit, req: GraphRequest) -> Any:
    """Export → search on every shard → merge and write; returns the write's ref (rows written)."""
    owner = actors[unit.shard]
    turn = unit.batch + unit.attempt
    writer = owner[turn % len(owner)]
    batch = (writer.export_batch.remote(unit.batch, req.batch_size) if unit.rows is None
             else writer.read_batch.remote(unit.rows))
    answers = [row[(turn + t) % len(row)].search_routed.remote(batch, req.k + 1, req.ef, req.router, req.nprobe)
               for t, row in enumerate(actors)]
    name = f"part-{unit.shard:05d}-{unit.batch:05d}.parquet"
    unit.refs = [batch, *answers]
    return writer.write_graph.remote(batch, answers, req.k, str(req.out), name)


def units_of(shard_sizes: list[int], batch_size: int, rows: list[ShardSpec] | None = None) -> list[_Unit]:
    """Every shard's batches of its live points, or the row ranges `rows` of the built-from vectors, owned by
    the shards in turn."""
    if rows is not None:
        return [_Unit(b % len(shard_sizes), b, rows=spec) for b, spec in enumerate(rows)]
    return [_Unit(j, b) for j, size in enumerate(shard_sizes) for b in range(hnsw.ceil_div(size, batch_size))]


def run(actors: list[list[Any]], units: list[_Unit], req: GraphRequest, in_flight: int | None = None) -> int:
    """Write every unit's part; returns the rows written. Raises ShardUnavailableError after UNIT_ATTEMPTS."""
    req = replace(req, out=sink.destination(req.out))
    if not store.is_uri(req.out):
        make_dirs(req.out)  # never recreates a stage's vanished temporary directory
    todo = list(units)
    todo.reverse()  # pop() from the end: shard 0's batches first
    window = max(1, in_flight or IN_FLIGHT_PER_SHARD * len(actors))
    running: dict[Any, _Unit] = {}
    try:
        return _drain(actors, todo, running, req, window)
    except BaseException:
        collect_quietly(list(running))  # abandoned units: keep Ray from logging their errors as unhandled
        raise


def _drain(actors: list[list[Any]], todo: list[_Unit], running: dict[Any, _Unit], req: GraphRequest, window: int) -> int:
    """Keep `window` units in flight until every unit's part is written; retry units that lost an actor."""
    rows = 0
    tracker = progress.Tracker("knn graph", len(todo) + len(running), "batches", "rows")
    while todo or running:
        while todo and len(running) < window:
            unit = todo.pop()
            running[_submit(actors, unit, req)] = unit
        done, _ = ray.wait(list(running), num_returns=1)
        unit = running.pop(done[0])
        try:
            written, entry = ray.get(done[0])
            sink.record([entry])  # on a store: the part is in the stage's attempt; its manifest lists it
            rows += written
            tracker.advance(1, written)
        except Exception as exc:
            if not _lost_actor(exc):
                cause = getattr(exc, "cause", None)
                if isinstance(cause, ShardwalkError):  # our typed error, raised inside an actor
                    raise cause from None
                raise
            unit.attempt += 1
            if unit.attempt >= UNIT_ATTEMPTS:
                raise ShardUnavailableError(
                    f"knn graph: shard {unit.shard} batch {unit.batch} failed {UNIT_ATTEMPTS} times (an actor kept dying)"
                ) from None
            log.warning("knn graph: shard %d batch %d lost an actor (%s); retrying", unit.shard, unit.batch, type(exc).__name__)
            todo.append(unit)
        unit.refs = []  # the batch and its answers are freed as soon as the part is written
    return rows
