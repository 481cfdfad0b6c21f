"""Partitioning the agent graph for walker actors, and the hand-off rule as a pure function.

A token is handed to another actor only when its next agent lies outside its actor's own agents plus
the ghost agents within `halo` hops (`halo_mask`); `count_handoffs` replays that rule on a recorded path,
which is how the benchmark reports hand-offs per 1,000 hops for every partitioner.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from shardwalk.core.errors import ConfigError
from shardwalk.core.srrw.agents import (
    PARTITIONERS,
    louvain_partition,
    metis_partition,
    partition,
    range_partition,
)
from shardwalk.core.srrw.chain import SRRW
from shardwalk.core.srrw.kernel import WalkContext, walk_all
from shardwalk.core.srrw.objectives import LogisticRegression
from shardwalk.core.srrw.spec import Schedule
from shardwalk.core.srrw.token import make_tokens


def walk_partition(chain: SRRW, graph: nx.Graph, parts: int, *, seed: int = 0, method: str = "metis") -> dict[int, int]:
    """Balanced partition of the agents that the token crosses rarely.

    `method`: "metis" (METIS multilevel k-way through pymetis, the default), "kl" (recursive Kernighan–Lin bisection), "louvain" (Louvain communities packed into balanced
    parts, falling back to Kernighan–Lin when that is off balance) or "range" (contiguous id ranges, the
    baseline). The base chain crosses edge {i, j} at the stationary rate 2 μ_i P_ij (reversibility makes it
    symmetric), so "metis", "kl" and "louvain" run both on plain edge counts and on that flow, and keep whichever
    gives the lower crossing rate (both are local searches; neither wins always).
    """
    if method not in PARTITIONERS:
        raise ConfigError(f"partitioner must be one of {list(PARTITIONERS)}, got {method!r}")
    if method == "range":
        return range_partition(graph, parts)
    flow = graph.copy()
    for u, v in flow.edges():
        i, j = chain.index[int(u)], chain.index[int(v)]
        k = chain.nbr[i].tolist().index(j) if chain.base != "iid" else j
        flow[u][v]["flow"] = chain.mu[i] * float(np.diff(chain.cdf[i], prepend=0.0)[k])

    def crossing(p: dict[int, int]) -> float:
        return sum(d["flow"] for u, v, d in flow.edges(data=True) if p[u] != p[v])

    split = {"metis": metis_partition, "kl": partition, "louvain": louvain_partition}[method]
    candidates = [split(flow, parts, seed=seed), split(flow, parts, seed=seed, weight="flow")]
    return min(candidates, key=crossing)


def count_handoffs(chain: SRRW, path: list[int], owner: np.ndarray, halo: int = 1) -> int:
    """Hand-offs a walker layout would make along a recorded path (internal indices): the token moves to
    the owner of its next agent whenever that agent is outside its current actor's own agents + halo."""
    parts = int(owner.max()) + 1
    held = [halo_mask(chain, owner == p, halo) for p in range(parts)]
    cur, moves = int(owner[path[0]]), 0
    for node in path[1:]:
        if not held[cur][node]:
            cur, moves = int(owner[node]), moves + 1
    return moves


def halo_mask(chain: SRRW, own: np.ndarray, halo: int) -> np.ndarray:
    """Own agents plus every agent within `halo` hops (ghost copies of their rows and data).

    A token may step onto a ghost agent and leave it again without a hand-off; it moves to the
    owner only when its next agent lies outside this set. The arithmetic is the owner's (same rows,
    same data), so trajectories are unchanged while back-and-forth across a cut edge costs no hand-off.
    """
    held = own.copy()
    frontier = np.flatnonzero(own)
    for _ in range(halo):
        nxt = np.unique(np.concatenate([chain.adj[i] for i in frontier])) if len(frontier) else frontier
        nxt = nxt[~held[nxt]]
        held[nxt] = True
        frontier = nxt
    return held


HALOS = (0, 1, 2, 3)  # the depths `choose_halo` considers
HALO_WITHIN = 1.25  # the shallowest halo whose cross rate is within this factor of the lowest is chosen
HALO_MAX_SHARE = 1.5  # ... among those where no actor holds more than this many times its even share of agents


def choose_halo(chain: SRRW, owner: np.ndarray, *, seed: int = 0, tokens: int = 8, steps: int = 2000) -> tuple[int, dict[int, float]]:
    """(halo depth, hand-offs per 1,000 hops by depth) from the cross rate measured on a pilot walk.

    The path of an SRRW token depends on its visit measure only, never on θ, so a pilot of `tokens` short
    walks on a one-feature stand-in objective crosses the partition as the real walk does; the hand-off rule
    (`count_handoffs`) is replayed on its paths for each depth. Deeper halos hold more agents' data on each
    actor, so a depth is considered only while every actor holds at most HALO_MAX_SHARE of its even share.
    """

    parts = int(owner.max()) + 1
    if parts < 2:
        return 0, {0: 0.0}
    n = chain.num_nodes
    stand_in = LogisticRegression({i: (np.zeros((1, 1)), np.zeros(1, dtype=np.int64)) for i in range(n)}, lam=0.0)
    schedule = Schedule(record_path=True)
    toks = make_tokens(chain, 1, schedule, tokens=min(tokens, n), seed=seed)
    walk_all(toks, WalkContext(chain, stand_in, schedule, steps))
    hops = sum(len(t.path) - 1 for t in toks)
    rates: dict[int, float] = {}
    for h in HALOS:
        held = max(float(halo_mask(chain, owner == p, h).mean()) for p in range(parts))
        if h and held > HALO_MAX_SHARE / parts:
            break
        rates[h] = 1000.0 * sum(count_handoffs(chain, t.path, owner, h) for t in toks) / max(hops, 1)
    best = min(rates.values())
    return min(h for h, r in rates.items() if r <= HALO_WITHIN * best), rates
