"""The one upper bound on how many actors a pipeline may start, derived from the cluster it runs on.

Rule: at most `min(ACTORS_PER_CPU × CPUs, MEMORY_FRACTION × memory / ACTOR_BYTES)` actors in any one
stage (at least 1), where CPUs and memory are the cluster's totals as Ray reports them. Before the cluster
is known, a config is held to the static cap `core/validate.py`'s MAX_ACTORS (1024) on any one group: the
same cap bounds what the automatic sizing proposes, so every count meets both. An actor is a whole
Python process (Ray worker, libraries, its shard): `shards=1000` on 1,797 digits started 121 actors and
took 11 GB before it was killed. `SHARDWALK_MAX_ACTORS=N` replaces the derived bound (explicit override).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shardwalk.core.errors import ConfigError

ACTORS_PER_CPU = 4
ACTOR_BYTES = 256 * 2**20  # a conservative footprint of one idle actor process with its libraries
MEMORY_FRACTION = 0.5  # leave the other half to the data, the object store and the driver
OVERRIDE = "SHARDWALK_MAX_ACTORS"


@dataclass(frozen=True)
class ActorBound:
    """The bound and how it was reached, so the refusal can explain itself."""

    limit: int
    reason: str


def actor_bound(cpus: float, memory_bytes: float, env: Mapping[str, str] = os.environ) -> ActorBound:
    """The largest number of actors one stage may start on a cluster of `cpus` CPUs and `memory_bytes`."""
    if env.get(OVERRIDE):
        text = env[OVERRIDE]
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"{OVERRIDE} must be a positive integer, got {text!r}")
        return ActorBound(int(text), f"{OVERRIDE}={text}")
    by_cpu = int(ACTORS_PER_CPU * cpus)
    by_memory = int(MEMORY_FRACTION * memory_bytes // ACTOR_BYTES)
    limit = max(1, min(by_cpu, by_memory))
    reason = (f"{ACTORS_PER_CPU} per CPU × {cpus:g} CPUs = {by_cpu}; {ACTOR_BYTES >> 20} MiB each in half of "
              f"{memory_bytes / 2**30:.1f} GiB = {by_memory}")
    return ActorBound(limit, reason)


def actors_requested(config: Mapping[str, Any]) -> int:
    """The largest actor group a config asks one stage for: `shards × replicas`, `actors`, `sweep_shards`, `partitions`,
    looked up in the config and its sections (the demo nests one section per pipeline)."""
    found = 0
    if isinstance(config.get("shards"), int):
        found = config["shards"] * (config["replicas"] if isinstance(config.get("replicas"), int) else 1)
    if isinstance(config.get("actors"), int):
        found = max(found, config["actors"])
    sweep = config.get("sweep_shards")
    if isinstance(sweep, list) and all(isinstance(s, int) for s in sweep) and sweep:
        found = max(found, *sweep)
    if isinstance(config.get("partitions"), int):
        found = max(found, config["partitions"])
    for value in config.values():
        if isinstance(value, Mapping):
            found = max(found, actors_requested(value))
    return found


def check_actors(requested: int, bound: ActorBound, pipeline: str) -> None:
    """ConfigError (exit 2) when `requested` actors exceed the bound, saying which setting to lower."""
    if requested > bound.limit:
        raise ConfigError(
            f"pipeline '{pipeline}' would start {requested} actors in one stage (shards × replicas or partitions); "
            f"this cluster allows at most {bound.limit} ({bound.reason}); lower shards/partitions, or set "
            f"{OVERRIDE}=N to allow more"
        )
