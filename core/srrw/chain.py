"""The SRRW kernel K[x] over a connected agent graph (Doshi, Hu & Eun, ICML 2023; docs/design.md, SRRW).

    K_ij[x] = P_ij (x_j/μ_j)^(−α) / Σ_{k∈N(i)∪{i}} P_ik (x_k/μ_k)^(−α)

The rows are kept twice: as per-agent arrays (dense matrices for tests, partitioning) and padded to one
width (`Rows`), which is what the vectorised walk (shardwalk.core.srrw.kernel) gathers from for many tokens at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx
import numpy as np

from shardwalk.core.errors import ConfigError
from shardwalk.core.srrw.agents import check_graph

BASES = ("mhrw", "srw", "nbrw", "iid")


@dataclass(frozen=True)
class Rows:
    """The chain's rows padded to one width: padding has log-weight −inf, cdf +inf and neighbour i itself."""

    nbr: np.ndarray  # (N, W) int64: N(i) ∪ {i} where P_ii > 0
    log_base: np.ndarray  # (N, W): log P_ik + α log μ_k
    cdf: np.ndarray  # (N, W): cumulative P_i· (the α = 0 path)
    total: np.ndarray  # (N,): cdf's last real entry
    deg: np.ndarray  # (N,) int64: real entries of nbr
    adj: np.ndarray  # (N, Wa) int64: the graph neighbours (the non-backtracking walk)
    adj_deg: np.ndarray  # (N,) int64


class SRRW:
    """The SRRW kernel over a connected agent graph, for a base chain and repellence α >= 0.

    Bases: `mhrw` (Metropolis–Hastings to uniform, P_ij = min(1/d_i, 1/d_j)), `srw` (simple random
    walk, target μ ∝ degree; gradients reweighted), `nbrw` (non-backtracking walk, a baseline, α = 0),
    `iid` (uniform agent sampling, a baseline, α = 0). Agents get internal indices 0..N-1 in sorted order.
    """

    def __init__(self, graph: nx.Graph, alpha: float = 0.0, base: str = "mhrw", *, where: str = "srrw") -> None:
        check_chain_settings(alpha, base, where)
        check_graph(graph, where=where)
        self.alpha, self.base = float(alpha), base
        self.nodes = np.asarray(sorted(graph.nodes()), dtype=np.int64)
        self.index = {int(v): i for i, v in enumerate(self.nodes)}
        n = len(self.nodes)
        self.num_nodes = n
        adj = [np.asarray(sorted(self.index[u] for u in graph.neighbors(int(v))), dtype=np.int64) for v in self.nodes]
        deg = np.asarray([len(a) for a in adj], dtype=np.float64)
        self.mu = np.full(n, 1.0 / n) if base in ("mhrw", "iid") else deg / deg.sum()
        self.log_mu = np.log(self.mu)
        self.grad_weight = 1.0 / (n * self.mu)  # importance weights turning μ-sampling into the agents' average
        self.adj = adj
        self.nbr: list[np.ndarray] = []
        self.log_base: list[np.ndarray] = []
        self.cdf: list[np.ndarray] = []
        for i in range(n):
            cols, probs = self._base_row(i, adj, deg)
            self.nbr.append(cols)
            self.log_base.append(np.log(probs) + self.alpha * self.log_mu[cols])
            self.cdf.append(np.cumsum(probs))
        self.rows = self._padded()

    def _base_row(self, i: int, adj: list[np.ndarray], deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nb = adj[i]
        if self.base == "mhrw":
            probs = np.minimum(1.0 / deg[i], 1.0 / deg[nb])
            stay = 1.0 - probs.sum()
            if stay > 1e-12:  # keep the self-loop only when it carries mass
                pos = int(np.searchsorted(nb, i))
                return np.insert(nb, pos, i), np.insert(probs, pos, stay)
            return nb.copy(), probs / probs.sum()
        if self.base in ("srw", "nbrw"):
            return nb.copy(), np.full(len(nb), 1.0 / len(nb))
        return np.arange(self.num_nodes), np.full(self.num_nodes, 1.0 / self.num_nodes)  # iid

    def _padded(self) -> Rows:
        """The rows as (N, W) arrays; the iid base needs none (its draw is one multiplication)."""
        n = self.num_nodes
        rows = [np.zeros(1, dtype=np.int64)] * n if self.base == "iid" else self.nbr
        width = max(len(r) for r in rows)
        nbr = np.repeat(np.arange(n, dtype=np.int64)[:, None], width, axis=1)
        log_base = np.full((n, width), -np.inf)
        cdf = np.full((n, width), np.inf)
        deg = np.asarray([len(r) for r in rows], dtype=np.int64)
        if self.base != "iid":
            for i, cols in enumerate(self.nbr):
                nbr[i, : len(cols)], log_base[i, : len(cols)], cdf[i, : len(cols)] = cols, self.log_base[i], self.cdf[i]
        total = np.asarray([c[-1] for c in self.cdf]) if self.base != "iid" else np.ones(n)
        adj_deg = np.asarray([len(a) for a in self.adj], dtype=np.int64)
        adj = np.full((n, int(adj_deg.max())), -1, dtype=np.int64)
        for i, a in enumerate(self.adj):
            adj[i, : len(a)] = a
        return Rows(nbr, log_base, cdf, total, deg, adj, adj_deg)

    def base_matrix(self) -> np.ndarray:
        """The dense base chain P (tests and small graphs)."""
        p = np.zeros((self.num_nodes, self.num_nodes))
        for i in range(self.num_nodes):
            p[i, self.nbr[i]] = np.diff(self.cdf[i], prepend=0.0)
        return p

    def kernel_row(self, i: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(next agents, probabilities) of K_i·[x] for a (possibly unnormalised) visit measure x > 0."""
        cols = self.nbr[i]
        if self.base == "nbrw":
            raise ConfigError("the non-backtracking walk is not a Markov chain on agents; it has no kernel row")
        logw = self.log_base[i] - self.alpha * np.log(np.asarray(x, dtype=np.float64)[cols])
        w = np.exp(logw - logw.max())
        return cols, w / w.sum()

    def kernel_matrix(self, x: np.ndarray) -> np.ndarray:
        """Dense K[x] (tests and small graphs)."""
        k = np.zeros((self.num_nodes, self.num_nodes))
        for i in range(self.num_nodes):
            cols, probs = self.kernel_row(i, x)
            k[i, cols] = probs
        return k


def check_chain_settings(alpha: object, base: object, where: str = "srrw") -> None:
    """The one validator of α and the base chain (config, Python API and kernel alike)."""
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha < 0:
        raise ConfigError(f"{where}: alpha must be a finite number >= 0, got {alpha!r}")
    if base not in BASES:
        raise ConfigError(f"{where}: unknown base chain '{base}'; choose from {list(BASES)}")
    if alpha > 0 and base in ("nbrw", "iid"):
        raise ConfigError(f"{where}: base '{base}' is a baseline without a self-repellent version; use alpha=0")
