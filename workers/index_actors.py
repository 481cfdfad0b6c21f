"""Shard actors' lifetime on the driver: the private working directory, CPUs, start, replicas, replacement."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from shardwalk.core.storage.files import owned_prefix, remove_orphaned_temporaries
from shardwalk.workers import raykit
from shardwalk.workers.hnsw_actor import HnswShard

READY_TIMEOUT_S = 300.0
WORKDIR_PREFIX = "shardwalk-index-"


def make_workdir(workdir: str | os.PathLike | None) -> tuple[Path, bool]:
    """A private work directory named after this host and process; those of killed drivers are swept first."""
    parent = Path(workdir) if workdir is not None else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    remove_orphaned_temporaries(parent, WORKDIR_PREFIX)
    return Path(tempfile.mkdtemp(prefix=owned_prefix(f"{WORKDIR_PREFIX}w"), dir=parent)), True


def default_cpus(actors: int) -> float:
    """An equal share of the CPUs free right now; 0 (one thread, nothing reserved) when none are free.

    Reserving only what is free lets several indexes (or an index and other stages) coexist instead of
    waiting forever for CPUs that a long-lived actor holds.
    """
    free = float(ray.available_resources().get("CPU", 0.0))
    share = math.floor(free / actors * 1000) / 1000  # floor: Ray counts in 1e-4 units, never over-ask
    return share if share >= 0.01 else 0.0


def _strategy(pgs: list[Any], shard: int, replica: int) -> Any:
    return PlacementGroupSchedulingStrategy(pgs[shard], placement_group_bundle_index=replica) if pgs else "SPREAD"


def start_primaries(shards: int, workdir: Path, cpus: float, pgs: list[Any], load: bool) -> list[list[Any]]:
    """One primary actor per shard (in bundle 0 of the shard's placement group, if any), answering."""
    actors = [[HnswShard.options(num_cpus=cpus, scheduling_strategy=_strategy(pgs, j, 0)).remote(j, 0, str(workdir), cpus, load)]
              for j in range(shards)]
    try:
        raykit.wait_all([row[0].ping.remote() for row in actors], "start shard actors", timeout=READY_TIMEOUT_S)
    except BaseException:
        raykit.release([row[0] for row in actors], [], None)
        raise
    return actors


def spawn(shards: int, replicas: int, workdir: Path, cpus_per_actor: float | None, load: bool = False) -> tuple[list[list[Any]], list[Any], float]:
    """Create the primaries (replica 0) of every shard; replicas are added later by `add_replicas`."""
    if cpus_per_actor is None:
        cpus_per_actor = default_cpus(shards * replicas)
    pgs: list[Any] = []
    if replicas > 1 and cpus_per_actor > 0:
        # SPREAD puts the bundles (one per replica) on different nodes where there are several
        pgs = [placement_group([{"CPU": cpus_per_actor}] * replicas, strategy="SPREAD") for _ in range(shards)]
    try:
        actors = start_primaries(shards, workdir, cpus_per_actor, pgs, load)
    except BaseException:
        raykit.release([], pgs, None)
        raise
    return actors, pgs, cpus_per_actor


def add_replicas(actors: list[list[Any]], replicas: int, workdir: Path, cpus: float, pgs: list[Any]) -> None:
    """Start replicas 1.. of every shard (they load the primary's persisted files) and wait until they answer."""
    for j, row in enumerate(actors):
        for r in range(1, replicas):
            row.append(HnswShard.options(num_cpus=cpus, scheduling_strategy=_strategy(pgs, j, r)).remote(j, r, str(workdir), cpus, True))
    raykit.wait_all([a.ping.remote() for row in actors for a in row[1:]], "start replicas", timeout=READY_TIMEOUT_S)


def replace_primaries(actors: list[list[Any]], workdir: Path, cpus: float, pgs: list[Any]) -> list[list[Any]]:
    """Kill every primary, empty the working directory (nothing may reload a failed attempt), start new ones."""
    for row in actors:
        with contextlib.suppress(Exception):
            ray.kill(row[0], no_restart=True)
    for path in workdir.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return start_primaries(len(actors), workdir, cpus, pgs, False)
