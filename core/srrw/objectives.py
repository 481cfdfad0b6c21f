"""Local losses for token-based distributed optimisation: one block of data per agent.

The global objective is the agents' average, f(θ) = (1/N) Σ_i f_i(θ), with
f_i(θ) = mean over agent i's examples of the loss + (λ/2)‖θ‖² (Hu, Doshi & Eun, ICLR 2024, eq. 1).
Built in with closed-form gradients (float64): L2-regularised logistic regression (labels 0/1) and
softmax regression (labels 0..C-1). Any torch `nn.Module` + loss works through `TorchObjective`.
Agents are addressed by their internal index 0..N-1 (the order of `shardwalk.core.srrw.SRRW.nodes`); an object
may hold only some agents' blocks (`restrict`), which is what a walker actor keeps.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from shardwalk.core.errors import ConfigError, DataError, DivergenceError

Blocks = Mapping[int, tuple[np.ndarray, np.ndarray]]


def _check_blocks(blocks: Blocks, where: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Canonical float64 features / int64 labels per agent; NaN, empty or ragged blocks are DataError."""
    if not blocks:
        raise DataError(f"{where}: no agent holds data")
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    dim = None
    for node, (x, y) in blocks.items():
        x = np.ascontiguousarray(x, dtype=np.float64)
        y = np.ascontiguousarray(y).astype(np.int64, copy=False)
        if x.ndim != 2 or x.shape[0] == 0:
            raise DataError(f"{where}: agent {node} has no data (features shape {x.shape})")
        if y.shape != (x.shape[0],):
            raise DataError(f"{where}: agent {node} has {x.shape[0]} rows but labels of shape {y.shape}")
        if not np.isfinite(x).all():
            row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
            raise DataError(f"{where}: agent {node} has NaN or inf features at its row {row}")
        dim = x.shape[1] if dim is None else dim
        if x.shape[1] != dim:
            raise DataError(f"{where}: agent {node} has feature dimension {x.shape[1]}, expected {dim}")
        out[int(node)] = (x, y)
    return out


def add_intercept(x: np.ndarray) -> np.ndarray:
    """Append a constant-1 column so θ's last entry is the bias."""
    return np.hstack([np.asarray(x, dtype=np.float64), np.ones((len(x), 1))])


class _Objective(abc.ABC):
    """Shared plumbing: agent blocks and the global (average) loss and gradient built from per-block hooks."""

    dim: int

    def __init__(self, blocks: Blocks, lam: float, where: str) -> None:
        if not (isinstance(lam, int | float) and math.isfinite(lam) and lam >= 0):
            raise ConfigError(f"{where}: regularisation lam must be a finite number >= 0, got {lam!r}")
        self.lam = float(lam)
        self.blocks = _check_blocks(blocks, where)
        self.where = where

    @property
    def nodes(self) -> list[int]:
        return sorted(self.blocks)

    @property
    def data_bytes(self) -> int:
        """Bytes of every agent's rows: what a walker actor holding all agents keeps (`replicate`)."""
        return int(sum(x.nbytes + y.nbytes for x, y in self.blocks.values()))

    _PER_NODE = ("blocks",)  # dict attributes keyed by agent

    def _clone(self, keys: dict[int, int]) -> _Objective:
        """A shallow copy whose per-agent dicts keep `keys` (old agent key -> new key)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        for name in self._PER_NODE:
            table = getattr(self, name)
            setattr(clone, name, {new: table[old] for old, new in keys.items()})
        for cached in ("_padded", "_stack"):  # batch arrays follow the keys: rebuilt on first use
            clone.__dict__.pop(cached, None)
        return clone

    def restrict(self, nodes: Iterable[int]) -> _Objective:
        """The same objective holding only `nodes`' blocks (an actor's share)."""
        return self._clone({int(n): int(n) for n in nodes})

    def relabel(self, mapping: Mapping[int, int]) -> _Objective:
        """The same objective with agents renamed by `mapping` (agent id -> walk index)."""
        return self._clone({int(old): int(mapping[old]) for old in self.blocks})

    @abc.abstractmethod
    def _loss_block(self, x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> float:
        """Mean loss over one agent's rows (without the λ term)."""

    @abc.abstractmethod
    def _grad_block(self, x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """Gradient of `_loss_block` in θ."""

    @abc.abstractmethod
    def predict(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """Predicted labels of the rows `x`."""

    @abc.abstractmethod
    def solve(self) -> np.ndarray:
        """θ*, the minimiser of f (a local one when f is not convex)."""

    def grad(self, node: int, theta: np.ndarray) -> np.ndarray:
        """∇f_node(θ): agent `node`'s mean-loss gradient plus λθ (the hot path of a walk)."""
        x, y = self.blocks[node]
        return self._grad_block(x, y, theta) + self.lam * theta

    def descend(self, node: int, theta: np.ndarray, scale: float) -> None:
        """θ ← θ − scale·∇f_node(θ), in place (subclasses fuse it for speed)."""
        theta -= scale * self.grad(node, theta)

    def descend_batch(self, nodes: np.ndarray, theta: np.ndarray, scale: np.ndarray) -> None:
        """Row k: θ_k ← θ_k − scale_k·∇f_{nodes_k}(θ_k), in place (the walk's hot path, many tokens at once).

        Each row's result must not depend on the other rows: the walk's trajectories are compared bit for
        bit across batches of different tokens. This default runs `descend` row by row.
        """
        for k, node in enumerate(np.asarray(nodes).tolist()):
            self.descend(int(node), theta[k], float(scale[k]))

    def loss(self, theta: np.ndarray) -> float:
        """f(θ) = average over agents of the agent's mean loss + (λ/2)‖θ‖²."""
        theta = np.asarray(theta, dtype=np.float64)
        data = sum(self._loss_block(x, y, theta) for x, y in self.blocks.values()) / len(self.blocks)
        return float(data + 0.5 * self.lam * theta @ theta)

    def full_grad(self, theta: np.ndarray) -> np.ndarray:
        """∇f(θ), the agents' average gradient."""
        theta = np.asarray(theta, dtype=np.float64)
        g = sum(self._grad_block(x, y, theta) for x, y in self.blocks.values()) / len(self.blocks)
        return g + self.lam * theta

    def _stacked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(every agent's rows, their labels, each row's weight 1/(m_agent · agents)): f's data term is then one
        weighted sum over all rows, not a Python loop over agents (evaluation over 10⁴ agents and 10³ snapshots)."""
        if getattr(self, "_stack", None) is None:
            blocks = [self.blocks[n] for n in self.nodes]
            w = np.concatenate([np.full(len(y), 1.0 / (len(y) * len(blocks))) for _, y in blocks])
            self._stack = (np.concatenate([x for x, _ in blocks]), np.concatenate([y for _, y in blocks]), w)
        return self._stack

    def accuracy(self, theta: np.ndarray) -> float:
        """Fraction of all held examples predicted correctly."""
        x, y, _ = self._stacked()
        return float(np.mean(self.predict(x, theta) == y))


class _NewtonObjective(_Objective):
    """A strongly convex objective with a closed-form Hessian, so θ* comes from damped Newton.

    Subclasses give the loss, gradient and Hessian as weighted sums over rows; an agent's mean is the
    weights 1/m, and f itself is one sum over every agent's rows (`_stacked`).
    """

    @abc.abstractmethod
    def _row_losses(self, x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """Each row's loss (without the λ term)."""

    @abc.abstractmethod
    def _weighted_grad(self, x: np.ndarray, y: np.ndarray, w: np.ndarray | None, theta: np.ndarray) -> np.ndarray:
        """Σ_i w_i ∇ loss_i(θ) (w = None: all weights 1)."""

    @abc.abstractmethod
    def _weighted_hess(self, x: np.ndarray, y: np.ndarray, w: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """Σ_i w_i ∇² loss_i(θ)."""

    def _loss_block(self, x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> float:
        return float(np.mean(self._row_losses(x, y, theta)))

    def _grad_block(self, x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> np.ndarray:
        return self._weighted_grad(x, y, None, theta) / len(y)  # the walk's hot path: no weight vector

    def loss(self, theta: np.ndarray) -> float:
        theta = np.asarray(theta, dtype=np.float64)
        x, y, w = self._stacked()
        return float(self._row_losses(x, y, theta) @ w + 0.5 * self.lam * theta @ theta)

    def full_grad(self, theta: np.ndarray) -> np.ndarray:
        theta = np.asarray(theta, dtype=np.float64)
        x, y, w = self._stacked()
        return self._weighted_grad(x, y, w, theta) + self.lam * theta

    def hessian(self, theta: np.ndarray) -> np.ndarray:
        """∇²f(θ) (dense; the models here are small)."""
        x, y, w = self._stacked()
        return self._weighted_hess(x, y, w, np.asarray(theta, dtype=np.float64)) + self.lam * np.eye(self.dim)

    def solve(self, tol: float = 1e-12, max_iter: int = 100) -> np.ndarray:
        """θ* by damped Newton (the objective is strongly convex when lam > 0) to ‖∇f‖ <= tol."""
        theta = np.zeros(self.dim)
        f = self.loss(theta)
        for _ in range(max_iter):
            g = self.full_grad(theta)
            if np.linalg.norm(g) <= tol:
                return theta
            step = np.linalg.solve(self.hessian(theta), g)
            t = 1.0
            while t > 1e-10:  # backtracking (Armijo) keeps Newton safe far from θ*
                cand = theta - t * step
                fc = self.loss(cand)
                if fc <= f - 1e-4 * t * (g @ step) or np.linalg.norm(self.full_grad(cand)) < np.linalg.norm(g):
                    break
                t *= 0.5
            theta, f = cand, fc
        if not np.isfinite(theta).all():
            raise DivergenceError(f"{self.where}: Newton solve diverged")
        return theta


class LogisticRegression(_NewtonObjective):
    """Binary logistic loss log(1+e^z) − y z, z = xᵀθ, labels in {0, 1}; add_intercept for a bias."""

    def __init__(self, blocks: Blocks, lam: float = 1e-3, *, where: str = "logistic regression") -> None:
        super().__init__(blocks, lam, where)
        for node, (_, y) in self.blocks.items():
            if ((y != 0) & (y != 1)).any():
                raise DataError(f"{where}: agent {node} has labels outside {{0, 1}}: {np.unique(y).tolist()}")
        self.dim = next(iter(self.blocks.values()))[0].shape[1]
        self._fused = self._fuse(self.blocks)

    _PER_NODE = ("blocks", "_fused")

    @staticmethod
    def _fuse(blocks: Blocks) -> dict[int, tuple[np.ndarray, np.ndarray, float]]:
        """Per agent (x/2, 1 − 2y, 1/m): σ(z) − y = (tanh(z/2) + 1 − 2y)/2 turns a step into 7 numpy ops."""
        return {n: (0.5 * x, 1.0 - 2.0 * y, 1.0 / len(y)) for n, (x, y) in blocks.items()}

    def fused_blocks(self) -> dict[int, tuple[np.ndarray, np.ndarray, float]]:
        """Per agent (x/2, 1 − 2y, 1/m): the form `descend` computes with (vectorised trial runs use it)."""
        return self._fused

    def descend(self, node: int, theta: np.ndarray, scale: float) -> None:
        self.descend_batch(np.asarray([node]), theta[None, :], np.asarray([scale], dtype=np.float64))

    def _padded_blocks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(sorted agent keys, x/2, 1 − 2y, 1/m), blocks zero-padded to one row count (zero rows add 0)."""
        if getattr(self, "_padded", None) is None:
            keys = np.asarray(sorted(self._fused), dtype=np.int64)
            rows = max(len(self._fused[k][1]) for k in keys.tolist())
            xh = np.zeros((len(keys), rows, self.dim))
            ky = np.zeros((len(keys), rows))
            inv_m = np.zeros(len(keys))
            for i, k in enumerate(keys.tolist()):
                x_k, k_k, inv_m[i] = self._fused[k]
                xh[i, : len(k_k)], ky[i, : len(k_k)] = x_k, k_k
            self._padded = (keys, xh, ky, inv_m)
        return self._padded

    def descend_batch(self, nodes: np.ndarray, theta: np.ndarray, scale: np.ndarray) -> None:
        """σ(z) − y = (tanh(z/2) + 1 − 2y)/2 for every row at once; sums run within a row in a fixed order
        (over features, then over the agent's examples), so padding and batch-mates change no bit."""
        keys, xh, ky, inv_m = self._padded_blocks()
        slot = np.searchsorted(keys, nodes)
        x = xh[slot]
        r = np.tanh((x * theta[:, None, :]).sum(axis=2))
        r += ky[slot]
        v = (r[:, :, None] * x).sum(axis=1)  # = Σ_k (σ(z_k) − y_k) x_k
        if self.lam:
            theta *= (1.0 - scale * self.lam)[:, None]
        theta -= (scale * inv_m[slot])[:, None] * v

    def _row_losses(self, x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> np.ndarray:
        z = x @ theta
        return np.logaddexp(0.0, z) - y * z

    def _weighted_grad(self, x: np.ndarray, y: np.ndarray, w: np.ndarray | None, theta: np.ndarray) -> np.ndarray:
        # σ(z) written with tanh: overflow-free for any z and exact to rounding.
        r = 0.5 + 0.5 * np.tanh(0.5 * (x @ theta)) - y
        return (r if w is None else w * r) @ x

    def _weighted_hess(self, x: np.ndarray, y: np.ndarray, w: np.ndarray, theta: np.ndarray) -> np.ndarray:
        p = 0.5 + 0.5 * np.tanh(0.5 * (x @ theta))
        return (x.T * (w * p * (1 - p))) @ x

    def predict(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) @ theta > 0).astype(np.int64)


class SoftmaxRegression(_NewtonObjective):
    """Multinomial logistic loss; θ is the flattened (classes, d) weight matrix."""

    def __init__(
        self, blocks: Blocks, lam: float = 1e-3, *, classes: int | None = None, where: str = "softmax regression"
    ) -> None:
        super().__init__(blocks, lam, where)
        top = max(int(y.max()) for _, y in self.blocks.values())
        low = min(int(y.min()) for _, y in self.blocks.values())
        self.classes = int(classes) if classes is not None else top + 1
        if low < 0 or top >= self.classes:
            raise DataError(f"{where}: labels must lie in 0..{self.classes - 1}, found {low}..{top}")
        self.features = next(iter(self.blocks.values()))[0].shape[1]
        self.dim = self.classes * self.features

    def _probs(self, x: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = x @ theta.reshape(self.classes, self.features).T
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return z, e / e.sum(axis=1, keepdims=True)

    def _row_losses(self, x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> np.ndarray:
        z, _ = self._probs(x, theta)
        lse = np.log(np.exp(z).sum(axis=1))
        return lse - z[np.arange(len(y)), y]

    def _weighted_grad(self, x: np.ndarray, y: np.ndarray, w: np.ndarray | None, theta: np.ndarray) -> np.ndarray:
        _, p = self._probs(x, theta)
        p[np.arange(len(y)), y] -= 1.0
        return ((p if w is None else p * w[:, None]).T @ x).ravel()

    def _weighted_hess(self, x: np.ndarray, y: np.ndarray, w: np.ndarray, theta: np.ndarray) -> np.ndarray:
        _, p = self._probs(x, theta)
        a = np.einsum("kc,cd->kcd", p, np.eye(self.classes)) - np.einsum("kc,kd->kcd", p, p)
        h = np.einsum("kab,ki,kj->aibj", a * w[:, None, None], x, x, optimize=True)
        return h.reshape(self.dim, self.dim)

    def predict(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        z = np.asarray(x, dtype=np.float64) @ theta.reshape(self.classes, self.features).T
        return z.argmax(axis=1)


class TorchObjective(_Objective):
    """Any torch model: flat float64 θ ↔ the module's parameters; gradients by autograd.

    `loss_fn(module(x), y)` must return the mean loss over the rows given. Not convex in general,
    so `solve` is only a local full-batch L-BFGS run (scipy) from the module's initial parameters.
    """

    def __init__(
        self,
        module: object,
        loss_fn: Callable,
        blocks: Blocks,
        lam: float = 0.0,
        *,
        where: str = "torch objective",
    ) -> None:
        import torch

        super().__init__(blocks, lam, where)
        self.module = module.double()
        self.loss_fn = loss_fn
        self._torch = torch
        self.dim = int(sum(p.numel() for p in self.module.parameters()))

    def initial_theta(self) -> np.ndarray:
        """The module's current parameters as a flat float64 vector."""
        vec = self._torch.nn.utils.parameters_to_vector(self.module.parameters())
        return vec.detach().numpy().astype(np.float64)

    def _set(self, theta: np.ndarray) -> None:
        torch = self._torch
        torch.nn.utils.vector_to_parameters(torch.from_numpy(np.asarray(theta, dtype=np.float64)), self.module.parameters())

    def _loss_block(self, x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> float:
        self._set(theta)
        with self._torch.no_grad():
            return float(self.loss_fn(self.module(self._torch.from_numpy(x)), self._torch.from_numpy(y)))

    def _grad_block(self, x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> np.ndarray:
        self._set(theta)
        self.module.zero_grad(set_to_none=False)
        self.loss_fn(self.module(self._torch.from_numpy(x)), self._torch.from_numpy(y)).backward()
        return np.concatenate([p.grad.detach().numpy().ravel() for p in self.module.parameters()]).astype(np.float64)

    def solve(self, tol: float = 1e-10, max_iter: int = 2000) -> np.ndarray:
        from scipy.optimize import minimize

        res = minimize(
            lambda t: (self.loss(t), self.full_grad(t)),
            self.initial_theta(),
            jac=True,
            method="L-BFGS-B",
            options={"gtol": tol, "maxiter": max_iter},
        )
        return np.asarray(res.x, dtype=np.float64)

    def predict(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        self._set(theta)
        with self._torch.no_grad():
            out = self.module(self._torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()
        return out.argmax(axis=1) if out.ndim == 2 and out.shape[1] > 1 else (out.ravel() > 0).astype(np.int64)


def build_objective(
    model: str, blocks: Blocks, *, lam: float = 1e-3, intercept: bool = True, classes: int | None = None
) -> _Objective:
    """A built-in objective by name ('logistic' or 'softmax'), optionally with an intercept column."""
    if intercept:
        blocks = {n: (add_intercept(x), y) for n, (x, y) in blocks.items()}
    if model == "logistic":
        return LogisticRegression(blocks, lam)
    if model == "softmax":
        return SoftmaxRegression(blocks, lam, classes=classes)
    raise ConfigError(f"unknown model '{model}'; choose 'logistic' or 'softmax'")
