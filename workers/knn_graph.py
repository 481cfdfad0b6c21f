"""The all-points kNN graph of a ShardedIndex: batches of each shard's points, answered by every shard.

One *unit* = one batch of one shard's live points: its owner exports the batch (a call result, so the
driver owns it and it outlives the actor), every (probed) shard answers the whole batch with all its
hnswlib threads, and a replica of the owner merges (vectorised, core.hnsw) and writes one Parquet part.
At most `in_flight` units run at once, so memory stays flat as N grows.

A unit that fails because an actor died (or data it held was lost) is submitted again: the actor restarts
(`max_restarts`) and reloads its shard from the working directory, and every step of a unit is
deterministic, so the graph equals a fault-free run's. Parts are written under a fixed temporary name and
renamed, so a writer killed mid-write leaves nothing a reader could take for a part. On an object-store runs
dir each owner puts its parts straight into the stage's attempt from its own node (core/sink.py) and the
stage's manifest lists them, so no part depends on the disk of the node that runs the stage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ObjectLostError, RayActorError, RayTaskError

from core import hnsw, sink, store
from core.errors import ShardUnavailableError, ShardwalkError
from workers.raykit import collect_quietly

log = logging.getLogger("shardwalk")

UNIT_ATTEMPTS = 4  # tries of one unit: the first plus retries after actor deaths
# Points per unit: hnswlib starts its threads per call and idles on the call's tail; at 4,096 that cost 6 %
# of the graph's time against one call over all points (200k × 128, 2 threads). Four times fewer calls
# (not yet measured end to end); two units in flight per shard still hold only a few MB.
BATCH = 16_384
IN_FLIGHT_PER_SHARD = 2  # units in flight per shard: one answering while the next is exported and written


@dataclass(frozen=True)
class GraphRequest:
    """What the graph asks of every shard: k (+1 for self), ef, and the router when probing few shards."""

    k: int
    ef: int
    nprobe: int
    router: dict[str, Any] | None
    batch_size: int
    out: Path | str  # a local directory or the stage's attempt prefix (core.sink.destination)


@dataclass
class _Unit:
    shard: int
    batch: int
    attempt: int = 0
    refs: list[Any] = field(default_factory=list)


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
    batch = owner[turn % len(owner)].export_batch.remote(unit.batch, req.batch_size)
    answers = [row[(turn + t) % len(row)].search_routed.remote(batch, req.k + 1, req.ef, req.router, req.nprobe)
               for t, row in enumerate(actors)]
    name = f"part-{unit.shard:05d}-{unit.batch:05d}.parquet"
    unit.refs = [batch, *answers]
    return owner[turn % len(owner)].write_graph.remote(batch, answers, req.k, str(req.out), name)


def run(actors: list[list[Any]], shard_sizes: list[int], req: GraphRequest, in_flight: int | None = None) -> int:
    """Write every unit's part; returns the rows written. Raises ShardUnavailableError after UNIT_ATTEMPTS."""
    req = replace(req, out=sink.destination(req.out))
    if not store.is_uri(req.out):
        Path(req.out).mkdir(parents=True, exist_ok=True)
    todo = [_Unit(j, b) for j, size in enumerate(shard_sizes) for b in range(hnsw.ceil_div(size, req.batch_size))]
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
