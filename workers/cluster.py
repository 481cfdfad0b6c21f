"""What the connected Ray cluster offers, as shardwalk.core.plan.sizing sees it (the one place sizing touches Ray)."""

from __future__ import annotations

import ray

from shardwalk.core.plan.sizing import Node


def cluster_nodes() -> list[Node]:
    """The alive nodes' CPUs and memory (Ray's `memory` resource: what Ray lets tasks and actors use)."""
    nodes = []
    for info in ray.nodes():
        if info.get("Alive"):
            res = info.get("Resources", {})
            nodes.append(Node(float(res.get("CPU", 0.0)), int(res.get("memory", 0))))
    return nodes
