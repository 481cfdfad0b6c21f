"""Fan-out of a search over the shard actors: the per-shard tasks, and calls that fail over between replicas."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from shardwalk.core.data.schema import to_numpy, validate_vectors
from shardwalk.core.errors import ShardUnavailableError
from shardwalk.core.index import hnsw
from shardwalk.core.storage.sources import plan_shards, read_shard

RESTART_RETRIES = 6  # extra attempts per call after an actor death (search is read-only, so retrying is safe)
RESTART_WAIT_S = 0.25  # before a retry of a restarting replica, doubled each time: ~16 s in all to reload its shard


class SearchTask(NamedTuple):
    """One shard's share of one query batch: rows [start, stop) of the queries, of which `rows` go to `shard`."""

    start: int
    stop: int
    rows: np.ndarray  # positions within the batch
    shard: int
    payload: Any  # ObjectRef of the (sub)batch of query vectors
    turn: int  # the batch's number: spreads batches round-robin over replicas


class ReplicaCall(NamedTuple):
    """A method call for shard `shard` with `args`; `turn` picks the replica it goes to first."""

    shard: int
    args: tuple[Any, ...]
    turn: int


def as_query_array(queries: Any, dim: int) -> np.ndarray:
    """Queries as a validated float32 (q, dim) array (from numpy, a list, a Parquet path or an Arrow table)."""
    if isinstance(queries, np.ndarray | list):
        return hnsw.validate_queries(queries, dim)
    where = "queries" if isinstance(queries, pa.Table) else str(queries)
    return to_numpy(validate_vectors(read_shard(plan_shards(queries, 1)[0]), where=where, dim=dim))[1]


def shard_members(router: hnsw.Router | None, q: np.ndarray, nprobe: int, shards: int) -> list[np.ndarray]:
    """For each shard, which queries it is asked (all of them unless a router probes fewer shards)."""
    if router is not None and nprobe < shards:
        probes = router.probe(q, nprobe)
        return [(probes == j).any(axis=1) for j in range(shards)]
    return [np.ones(len(q), bool)] * shards


def plan_tasks(q: np.ndarray, member: list[np.ndarray], batch_size: int) -> list[SearchTask]:
    """The tasks of a search: per batch, per shard with a member query; a full batch is put in the store once."""
    tasks = []
    for turn, (start, stop) in enumerate(hnsw.batches(len(q), batch_size)):
        full_ref = None
        for j, members in enumerate(member):
            rows = np.flatnonzero(members[start:stop])
            if not rows.size:
                continue
            if rows.size == stop - start:
                full_ref = full_ref or ray.put(q[start:stop])
                payload = full_ref
            else:
                payload = ray.put(q[start:stop][rows])
            tasks.append(SearchTask(start, stop, rows, j, payload, turn))
    return tasks


def call_replicas(
    actors: list[list[Any]], method: str, calls: Sequence[ReplicaCall], allow_partial: bool, timeout: float | None, offset: int
) -> list[Any]:
    """Run calls on shard replicas (spread round-robin from `offset`); fail over to other replicas on actor death.

    With a `timeout`, a call that has not answered within it goes to the next replica (a replica whose node
    died may sit in Ray's restart queue indefinitely). A call no replica answers is None with
    `allow_partial`, else ShardUnavailableError.
    """
    replicas = len(actors[0])
    refs = [getattr(actors[c.shard][(c.turn + offset) % replicas], method).remote(*c.args) for c in calls]
    out: list[Any] = []
    back: set[tuple[int, int]] = set()  # (shard, replica) that answered a retry: restarted, so no wait for it again
    for c, ref in zip(calls, refs):
        first = (c.turn + offset) % replicas
        result, error = None, None
        # every replica once, plus retries of the first: a killed actor restarts and reloads its shard
        restarting = 0
        for attempt in range(replicas + RESTART_RETRIES):
            replica = (first + attempt) % replicas
            if restarting and attempt >= replicas and (c.shard, replica) not in back:
                time.sleep(RESTART_WAIT_S * 2 ** (restarting - 1))  # every replica tried: time to come back
            try:
                call = ref if attempt == 0 else getattr(actors[c.shard][replica], method).remote(*c.args)
                result, error = ray.get(call, timeout=timeout), None
                if attempt:
                    back.add((c.shard, replica))
                break
            except ActorUnavailableError as exc:  # restarting (Ray does not retry it: the call may have run)
                error, restarting = exc, restarting + 1
            except (RayActorError, GetTimeoutError) as exc:  # dead for good, or too slow: the next replica
                error = exc
        if error is not None and not allow_partial:
            raise ShardUnavailableError(
                f"shard {c.shard}: no replica could answer ({type(error).__name__}); pass allow_partial=True to accept partial results"
            ) from None
        out.append(result)
    return out
