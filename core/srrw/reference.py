"""The single-process SA-SRRW reference: every token walks in this process, vectorised (shardwalk.core.srrw.kernel).

Walker actors (shardwalk.workers.walker) run the same kernel on the tokens resident on their agents, so the
reference and any distributed layout give the same node sequence and θ bit for bit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np

from shardwalk.core.errors import DataError, GraphError
from shardwalk.core.srrw.chain import SRRW
from shardwalk.core.srrw.kernel import WalkContext, walk_all
from shardwalk.core.srrw.spec import WalkSpec
from shardwalk.core.srrw.token import Token, spec_tokens


def bind(objective: Any, chain: SRRW) -> Any:
    """The objective keyed by walk index: every agent must hold data and every data holder be an agent."""
    held = set(objective.blocks)
    missing = sorted(set(chain.index) - held)
    if missing:
        raise DataError(f"{len(missing)} agent(s) have no data, e.g. {missing[:5]}")
    extra = sorted(held - set(chain.index))
    if extra:
        raise GraphError(f"agent(s) {extra[:5]} hold data but have no edge in the graph (isolated)")
    return objective.relabel(chain.index)


@dataclass
class SAResult:
    """Outcome of an SA-SRRW run with K tokens: θ is their average; per-token state is kept too."""

    theta: np.ndarray
    tokens: list[Token]
    stats: dict[str, float] = field(default_factory=dict)  # timings, hand-offs (informational)

    @property
    def thetas(self) -> np.ndarray:
        return np.stack([t.theta for t in self.tokens])

    @property
    def theta_bar(self) -> np.ndarray | None:
        bars = [t.theta_bar for t in self.tokens]
        return None if bars[0] is None else np.mean(bars, axis=0)



def run_sa_srrw(objective: Any, graph: nx.Graph, spec: WalkSpec | None = None, /, **settings: Any) -> SAResult:
    """SA-SRRW in one process; `objective` holds one data block per graph agent (keyed by agent id).

    Pass a `WalkSpec`, or its fields (and the `Schedule`'s) as keywords: `steps=`, `alpha=`, `lr=`, ...
    """
    spec = WalkSpec.build(**settings) if spec is None else spec
    chain = SRRW(graph, spec.alpha, spec.base)
    objective = bind(objective, chain)
    toks = spec_tokens(chain, objective.dim, spec)
    began = time.perf_counter()
    walk_all(toks, WalkContext(chain, objective, spec.schedule, spec.steps))
    seconds = time.perf_counter() - began
    return SAResult(np.mean([t.theta for t in toks], axis=0), toks, {"walk_seconds": seconds})
