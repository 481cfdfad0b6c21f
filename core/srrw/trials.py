"""Many independent SA-SRRW trials of a logistic regression at once, for error studies (bench_srrw MSE).

Not the walk of record: the trials share one RNG that draws a vector per step (so a study of 100 trials
is one stream), which keeps the benchmark's MSE tables reproducible from their seed. Token walks, the
reference and walker actors use shardwalk.core.srrw.kernel, with one stream per token.
"""

from __future__ import annotations

import math
from typing import Any

import networkx as nx
import numpy as np

from shardwalk.core.errors import ConfigError, DivergenceError
from shardwalk.core.srrw.chain import SRRW
from shardwalk.core.srrw.reference import bind
from shardwalk.core.srrw.spec import Schedule
from shardwalk.core.srrw.token import token_streams


def _padded_data(objective: Any, n_nodes: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per agent (x/2, 1 − 2y, 1/m) padded to one row count: padding rows give tanh(0) + 0 = 0."""
    fused = objective.fused_blocks()
    rows_m = max(len(fused[i][1]) for i in range(n_nodes))
    xh = np.zeros((n_nodes, rows_m, dim))
    ky = np.zeros((n_nodes, rows_m))
    inv_m = np.zeros(n_nodes)
    for i in range(n_nodes):
        x_i, k_i, inv = fused[i]
        xh[i, : len(k_i)], ky[i, : len(k_i)], inv_m[i] = x_i, k_i, inv
    return xh, ky, inv_m


def _check(objective: Any, base: str, trials: object, steps: object) -> None:
    if not hasattr(objective, "fused_blocks"):
        raise ConfigError("run_sa_srrw_batch supports LogisticRegression objectives only")
    if base not in ("mhrw", "srw", "iid"):
        raise ConfigError(f"run_sa_srrw_batch supports bases mhrw, srw and iid, not '{base}'")
    if not isinstance(trials, int) or trials < 1 or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"trials and steps must be integers >= 1, got {trials!r}, {steps!r}")


def run_sa_srrw_batch(
    objective: Any, graph: nx.Graph, *, steps: int, trials: int, alpha: float = 0.0, a: float = 0.8,
    b: float = 0.9, base: str = "mhrw", seed: int = 0, lr: float = 1.0, max_norm: float = 1e8,
    record_at: tuple[int, ...] = (),
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """`trials` independent SA-SRRW runs of a logistic regression, vectorised over trials.

    The same recursion as the walk (one shared RNG drawing a vector per step); with trials=1 it follows
    `run_sa_srrw(..., tokens=1)` to rounding. Returns final θ (trials, d) and {step: θ} at `record_at`.
    """
    _check(objective, base, trials, steps)
    chain = SRRW(graph, alpha, base)
    Schedule(a, b, lr, None, False, max_norm)  # validates a, b, lr, max_norm
    n_nodes, dim = chain.num_nodes, objective.dim
    xh, ky, inv_m = _padded_data(bind(objective, chain), n_nodes, dim)
    coef, lam, r = inv_m * chain.grad_weight, objective.lam, chain.rows
    rng = token_streams(seed, 1)[0]
    rows = np.arange(trials)
    cur = np.minimum((rng.random(trials) * n_nodes).astype(np.int64), n_nodes - 1)
    logy = np.full((trials, n_nodes), -math.log(n_nodes))
    log_scale = 0.0
    theta = np.zeros((trials, dim))
    snaps: dict[int, np.ndarray] = {}
    for n in range(steps):
        u = rng.random(trials)
        if base == "iid":
            nxt = np.minimum((u * n_nodes).astype(np.int64), n_nodes - 1)
        else:
            cols = r.nbr[cur]
            lw = r.log_base[cur] - alpha * logy[rows[:, None], cols] if alpha else r.log_base[cur]
            cum = np.cumsum(np.exp(lw - lw.max(axis=1, keepdims=True)), axis=1)
            nxt = cols[rows, np.minimum((cum <= (u * cum[:, -1])[:, None]).sum(axis=1), r.deg[cur] - 1)]
        gamma = (n + 2.0) ** -a
        log_scale += math.log1p(-gamma)
        logy[rows, nxt] = np.logaddexp(logy[rows, nxt], math.log(gamma) - log_scale)
        scale = lr * (n + 2.0) ** -b
        xs = xh[nxt]
        v = np.einsum("bm,bmd->bd", np.tanh(np.einsum("bmd,bd->bm", xs, theta)) + ky[nxt], xs)
        if lam:
            theta *= (1.0 - scale * chain.grad_weight[nxt] * lam)[:, None]
        theta -= (scale * coef[nxt])[:, None] * v
        norms = np.einsum("bd,bd->b", theta, theta)
        if not (norms <= max_norm**2).all():
            bad = int(np.flatnonzero(~(norms <= max_norm**2))[0])
            raise DivergenceError(f"SA-SRRW diverged at step {n + 1} in trial {bad}: ‖θ‖ > max_norm {max_norm:g}; lower lr or raise b")
        cur = nxt
        if n + 1 in record_at:
            snaps[n + 1] = theta.copy()
    return theta, snaps
