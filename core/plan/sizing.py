"""Cluster-sized defaults for a sharded index: how many shards, and how many hnswlib threads per shard actor.

The rule (pure: it takes a description of the nodes, so it is tested with simulated clusters):

1. Only nodes with at least one CPU hold shards (a CPU-less head node holds none).
2. One shard per such node, each shard actor using its node's CPUs as hnswlib threads.
3. More shards when a node's memory cannot hold its share: an index of `rows` vectors of dimension `dim`
   with hnswlib parameter `M` needs about `index_bytes(rows, dim, M)`; a node's shards may use at most
   `memory_fraction` of its memory (the rest is Ray, query batches and the build's routed pieces). The
   shard count is the smallest S >= nodes such that shards of size total/S can be packed into the nodes'
   budgets (node i holds floor(budget_i / size) of them): bigger nodes then hold more, smaller shards.
   The actors of one node share its CPUs (threads = its CPUs / shards it holds, at least one).
   An index larger than all budgets together fits no layout: ConfigError.
4. An explicit `shards` wins; it is refused (ConfigError) only when one of its shards fits on no node.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from shardwalk.core.errors import ConfigError
from shardwalk.core.index.spec import DEFAULT_BUILD
from shardwalk.core.validate import MAX_ACTORS

MEMORY_FRACTION = DEFAULT_BUILD.memory_fraction  # share of a node's memory one node's shards may take, by default
GIB = 1 << 30


@dataclass(frozen=True)
class Node:
    """What a cluster node offers: its CPUs and its memory in bytes (Ray's `CPU` and `memory` resources)."""

    cpus: float
    memory_bytes: int


@dataclass(frozen=True)
class ShardPlan:
    """The layout chosen: shard count, CPUs reserved by each shard actor and its hnswlib threads."""

    shards: int
    cpus_per_actor: float
    threads: int
    bytes_per_shard: int


def bytes_per_row(dim: int, M: int) -> int:
    """hnswlib's memory per element: vector, level-0 links (2M), label, upper levels and its label map.

    Upper levels hold M links at each level; an element reaches level l with probability M^-l, so the
    expected upper-level cost is (4M + 4) / (M - 1) bytes; the label map costs about 40 bytes a row.
    """
    level0 = 4 * dim + 4 * (2 * M) + 4 + 8
    upper = (4 * M + 4) / max(M - 1, 1)
    return math.ceil(level0 + upper + 40)


def index_bytes(rows: int, dim: int, M: int) -> int:
    """Estimated resident bytes of an hnswlib index over `rows` vectors."""
    return rows * bytes_per_row(dim, M)


def plan(
    nodes: Sequence[Node], rows: int, dim: int, M: int, *, shards: int | None = None, replicas: int = 1,
    memory_fraction: float = MEMORY_FRACTION,
) -> ShardPlan:
    """Shards and threads per shard actor for `rows` × `dim` vectors on `nodes` (see the module docstring)."""
    if not 0 < memory_fraction <= 1:
        raise ConfigError(f"memory_fraction must be in (0, 1], got {memory_fraction!r}")
    holders = [n for n in nodes if n.cpus >= 1]
    if not holders:
        raise ConfigError("the cluster has no node with a CPU to hold a shard")
    total = index_bytes(rows, dim, M)
    budgets = [int(n.memory_bytes * memory_fraction) for n in holders]
    if shards is None:
        shards = _fewest_shards(total, budgets, memory_fraction)
    elif shards < 1:
        raise ConfigError(f"shards must be an integer >= 1, got {shards!r}")
    per_shard = math.ceil(total / shards)
    if per_shard > max(budgets):
        raise ConfigError(
            f"shards={shards}: each shard needs ~{per_shard / GIB:.2f} GiB but the largest node offers "
            f"{max(budgets) / GIB:.2f} GiB (memory_fraction={memory_fraction}); use more shards or bigger nodes"
        )
    cpus = cpus_per_actor(holders, shards * replicas)
    return ShardPlan(shards, cpus, max(1, math.floor(cpus + 1e-9)), per_shard)


def cpus_per_actor(nodes: Sequence[Node], actors: int) -> float:
    """Each actor's share of a node's CPUs when `actors` spread evenly over the nodes with CPUs (every
    replica is one actor); its floor (at least 1) is the actor's hnswlib threads."""
    holders = [n for n in nodes if n.cpus >= 1]
    if not holders:
        return 0.0
    per_node = math.ceil(actors / len(holders))
    cpus = min(n.cpus for n in holders) / per_node
    return math.floor(cpus * 1000) / 1000  # Ray counts CPUs in 1e-4 units: never ask for more than exists


def _fewest_shards(total: int, budgets: Sequence[int], fraction: float) -> int:
    """The smallest S >= len(budgets) whose shards (total / S bytes each) pack into the node budgets."""
    shards = len(budgets)
    while shards <= MAX_ACTORS:  # the one actor cap (core/validate.py): never proposed past it
        if sum(b * shards // max(total, 1) for b in budgets) >= shards:
            return shards
        shards += 1
    raise ConfigError(
        f"the index needs ~{total / GIB:.2f} GiB but the cluster's nodes offer {sum(budgets) / GIB:.2f} GiB "
        f"in all (memory_fraction={fraction}): no number of shards fits; add nodes or memory"
    )


# ----------------------------------------------------------------------------- SA-SRRW walker layout

# Share of a node's memory that its walker actors' full copies of the agents' data may take before
# `replicate = "auto"` falls back to partitioning (the rest: Ray, tokens in flight, the kernel's arrays).
REPLICATE_MEMORY_FRACTION = 0.25


def walk_data_bytes(rows: int, dim: int) -> int:
    """Bytes of the agents' data as a walker holds it: float64 features (θ's dimension) and a label per row."""
    return int(rows) * (int(dim) + 1) * 8


def replicate_fits(data_bytes: int, partitions: int, nodes: Sequence[Node],
                   fraction: float = REPLICATE_MEMORY_FRACTION) -> bool:
    """Whether `partitions` actors can each hold all `data_bytes`: actors go one per CPU node in turn
    (Ray's SPREAD), and every such node's share of copies must fit `fraction` of its memory. One partition
    has nothing to gain; no CPU node means nothing is known, so both say no."""
    holders = [n for n in nodes if n.cpus >= 1]
    if partitions < 2 or not holders:
        return False
    per_node = math.ceil(partitions / len(holders))
    return all(per_node * data_bytes <= fraction * n.memory_bytes for n in holders)


def walk_token_bytes(measure_entries: int, dim: int, uniforms: int, baseline_entries: int = 0) -> int:
    """Bytes one token takes on a walker actor: its kept visit-measure entries, its stream words (`uniforms`)
    and θ (with θ̄ and a gradient's worth of room) while resident, plus `baseline_entries`: the shared entries
    as the token arrived, which each actor of a two-actor partitioned walk keeps to send only what changed."""
    return 8 * (measure_entries + baseline_entries + uniforms + 3 * dim)


def walk_tokens_fit(token_bytes: int, data_bytes: int, actors: int, nodes: Sequence[Node],
                    fraction: float = REPLICATE_MEMORY_FRACTION) -> int | None:
    """How many tokens the walker actors can hold: each actor's data plus every token (all may gather on one
    actor) within `fraction` of its node's memory, actors spread one per CPU node in turn. None: no CPU node
    is known (nothing to check against)."""
    holders = [n for n in nodes if n.cpus >= 1]
    if not holders:
        return None
    per_node = math.ceil(actors / len(holders))
    room = min(fraction * n.memory_bytes / per_node for n in holders) - data_bytes
    return max(0, int(room // max(token_bytes, 1)))
