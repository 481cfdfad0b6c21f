"""Self-Repellent Random Walks driving token SGD (SA-SRRW): the single-process reference.

Sources: Doshi, Hu & Eun, "Self-Repellent Random Walks on General Graphs" (ICML 2023) for the kernel,
Hu, Doshi & Eun, "Accelerating Distributed Stochastic Optimization via SRRW" (ICLR 2024) for SA-SRRW:

    K_ij[x] = P_ij (x_j/μ_j)^(−α) / Σ_{k∈N(i)∪{i}} P_ik (x_k/μ_k)^(−α)
    X_{n+1} ~ K_{X_n,·}[x_n]
    x_{n+1} = x_n + γ_{n+1}(δ_{X_{n+1}} − x_n),          γ_n = (n+1)^(−a)
    θ_{n+1} = θ_n − β_{n+1} w_{X_{n+1}} ∇f_{X_{n+1}}(θ_n),  β_n = lr·(n+1)^(−b)

with w_i = 1/(N μ_i) (importance weight; 1 for the uniform-target MHRW). x is kept as x = c·y with
c = Π(1−γ) a scalar, so a step changes one entry of y; we store log y and log c, hence the kernel's
log-weights are log P_ij + α log μ_j − α log y_j (c cancels) and nothing ever under/overflows.

Distribution: a step is split at the point where the token changes agent. `walk()` runs steps while
the token's next agent is owned by the caller and returns when it must move; a walker actor and this
reference run the *same* `walk()` on the same token state, so trajectories agree bit for bit.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from math import exp
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from core.agents import check_graph
from core.errors import ConfigError, CorruptArtifactError, DivergenceError

BASES = ("mhrw", "srw", "nbrw", "iid")
DONE, LEAVE, CHECKPOINT = "done", "leave", "checkpoint"


# ----------------------------------------------------------------------------- the kernel


class SRRW:
    """The SRRW kernel over a connected agent graph, for a base chain and repellence α >= 0.

    Bases: `mhrw` (Metropolis–Hastings to uniform, P_ij = min(1/d_i, 1/d_j)), `srw` (simple random
    walk, target μ ∝ degree; gradients reweighted), `nbrw` (non-backtracking walk, a baseline, α = 0),
    `iid` (uniform agent sampling, a baseline, α = 0). Agents get internal indices 0..N-1 in sorted order.
    """

    def __init__(self, graph: nx.Graph, alpha: float = 0.0, base: str = "mhrw", *, where: str = "srrw") -> None:
        if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha < 0:
            raise ConfigError(f"{where}: alpha must be a finite number >= 0, got {alpha!r}")
        if base not in BASES:
            raise ConfigError(f"{where}: unknown base chain '{base}'; choose from {list(BASES)}")
        if alpha > 0 and base in ("nbrw", "iid"):
            raise ConfigError(f"{where}: base '{base}' is a baseline without a self-repellent version; use alpha=0")
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
        self.nbr: list[np.ndarray | None] = []  # N(i) ∪ {i} where P_ii > 0
        self.log_base: list[np.ndarray | None] = []  # log P_ik + α log μ_k over nbr[i]
        self.cdf: list[np.ndarray | None] = []  # cumulative P_i· over nbr[i] (the α = 0 fast path)
        for i in range(n):
            cols, probs = self._base_row(i, adj, deg)
            self.nbr.append(cols)
            self.log_base.append(np.log(probs) + self.alpha * self.log_mu[cols])
            self.cdf.append(np.cumsum(probs))
        # the walk's hot path reads plain Python lists: scalar indexing of small rows beats numpy calls
        self.py_nbr = [r.tolist() for r in self.nbr]
        self.py_log_base = [r.tolist() for r in self.log_base]
        self.py_cdf = [r.tolist() for r in self.cdf]
        self.py_adj = [r.tolist() for r in adj]

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

    def restrict(self, nodes: np.ndarray | list[int]) -> SRRW:
        """A copy keeping only `nodes`' rows (internal indices): what one walker actor needs."""
        keep = set(int(i) for i in nodes)
        clone = object.__new__(SRRW)
        clone.__dict__.update(self.__dict__)
        for name in ("nbr", "log_base", "cdf", "adj", "py_nbr", "py_log_base", "py_cdf", "py_adj"):
            rows = getattr(self, name)
            setattr(clone, name, [rows[i] if i in keep else None for i in range(self.num_nodes)])
        return clone

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


# ----------------------------------------------------------------------------- settings and token


@dataclass(frozen=True)
class Schedule:
    """Step sizes and safeguards of SA-SRRW: γ_n = (n+1)^(−a), β_n = lr·(n+1)^(−b)."""

    a: float = 0.8
    b: float = 0.9
    lr: float = 1.0
    project: float | None = None  # radius of the θ ball to project onto (None: no projection)
    polyak: bool = False  # also keep θ̄_n, the running average of θ_1..θ_n
    max_norm: float = 1e8  # ‖θ‖ beyond this (or non-finite) is divergence
    record_every: int = 0  # snapshot θ every this many steps into the token's curve (0: never)
    record_path: bool = False  # keep the visited agent sequence (tests; costs memory)

    def __post_init__(self) -> None:
        for name in ("a", "b"):
            v = getattr(self, name)
            if not _is_real(v) or not 0.5 < v <= 1.0:
                raise ConfigError(f"step-size exponent {name} must be in (0.5, 1], got {v!r}")
        if not _is_real(self.lr) or self.lr <= 0:
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.project is not None and (not _is_real(self.project) or self.project <= 0):
            raise ConfigError(f"project radius must be > 0 or None, got {self.project!r}")
        if not _is_real(self.max_norm) or self.max_norm <= 0:
            raise ConfigError(f"max_norm must be a finite number > 0, got {self.max_norm!r}")
        if not isinstance(self.record_every, int) or self.record_every < 0:
            raise ConfigError(f"record_every must be an integer >= 0, got {self.record_every!r}")

    @property
    def regime(self) -> str:
        """Which time-scale regime of Hu et al. (2024): 'a<b' (recommended), 'a=b' or 'a>b'."""
        return "a<b" if self.a < self.b else ("a=b" if self.a == self.b else "a>b")


def _is_real(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class Token:
    """The walking state: small, picklable in transit, and saved as JSON + .npy (never pickle on disk)."""

    key: int
    theta: np.ndarray
    logy: list[float]  # log of the unnormalised visit measure y, x = c·y (a list: the hot path is scalar)
    log_scale: float  # log c
    n: int  # steps taken (θ_n, x_n)
    node: int  # internal index of X_n (or of X_{n+1} when `arrived` is False)
    prev: int  # X_{n−1} (the non-backtracking walk needs it); −1 at the start
    arrived: bool  # False: X_{n+1} was drawn but its x/θ update is still due (at its owner)
    rng: np.random.Generator
    handoffs: int = 0  # times the token moved between walker actors (bookkeeping only)
    theta_bar: np.ndarray | None = None
    path: list[int] | None = None  # X_0, X_1, ... as internal indices (SRRW.nodes[i] is the agent id)
    curve_n: list[int] = field(default_factory=list)
    curve_theta: list[np.ndarray] = field(default_factory=list)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickle (Ray's transit between actors) as plain bytes and ints: no numpy buffers, no class
        state objects; this halves the cost of a hand-off and round-trips every float exactly."""
        bitgen = self.rng.bit_generator
        packed = (
            self.key, self.n, self.node, self.prev, self.arrived, self.log_scale, self.handoffs,
            type(bitgen).__name__, bitgen.state,
            self.theta.tobytes(), np.asarray(self.logy, dtype=np.float64).tobytes(),
            None if self.theta_bar is None else self.theta_bar.tobytes(), self.path,
            self.curve_n, np.asarray(self.curve_theta, dtype=np.float64).tobytes(),
        )
        return _unpack_token, (packed,)

    def visit_measure(self) -> np.ndarray:
        """x_n, normalised (it sums to 1 by construction; renormalising only removes rounding)."""
        logy = np.asarray(self.logy, dtype=np.float64)
        z = logy - logy.max()
        x = np.exp(z)
        return x / x.sum()

    # ---- persistence: JSON metadata + one .npy per array
    _ARRAYS = ("theta", "logy", "theta_bar", "path", "curve_n", "curve_theta")

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-able metadata, arrays) fully describing the token."""
        meta = {
            "key": self.key, "n": self.n, "node": self.node, "prev": self.prev, "arrived": self.arrived,
            "log_scale": self.log_scale, "rng": self.rng.bit_generator.state,
            "has_theta_bar": self.theta_bar is not None, "has_path": self.path is not None,
            "handoffs": self.handoffs,
        }
        arrays = {"theta": self.theta, "logy": np.asarray(self.logy, dtype=np.float64), "curve_n": np.asarray(self.curve_n, dtype=np.int64),
                  "curve_theta": np.asarray(self.curve_theta, dtype=np.float64).reshape(len(self.curve_n), len(self.theta))}
        if self.theta_bar is not None:
            arrays["theta_bar"] = self.theta_bar
        if self.path is not None:
            arrays["path"] = np.asarray(self.path, dtype=np.int64)
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Token:
        bitgen = getattr(np.random, meta["rng"]["bit_generator"])()
        bitgen.state = meta["rng"]
        return cls(
            key=int(meta["key"]), theta=np.array(arrays["theta"], dtype=np.float64),
            logy=[float(v) for v in arrays["logy"]], log_scale=float(meta["log_scale"]),
            n=int(meta["n"]), node=int(meta["node"]), prev=int(meta["prev"]), arrived=bool(meta["arrived"]),
            rng=np.random.Generator(bitgen), handoffs=int(meta.get("handoffs", 0)),
            theta_bar=np.array(arrays["theta_bar"], dtype=np.float64) if meta["has_theta_bar"] else None,
            path=[int(v) for v in arrays["path"]] if meta["has_path"] else None,
            curve_n=[int(v) for v in arrays["curve_n"]], curve_theta=list(np.array(arrays["curve_theta"])),
        )


def _unpack_token(packed: tuple[Any, ...]) -> Token:
    (key, n, node, prev, arrived, log_scale, handoffs, bitgen_name, bitgen_state, theta, logy, theta_bar,
     path, curve_n, curve_theta) = packed
    bitgen = getattr(np.random, bitgen_name)(0)
    bitgen.state = bitgen_state
    theta_arr = np.frombuffer(theta, dtype=np.float64).copy()
    curves = np.frombuffer(curve_theta, dtype=np.float64).reshape(len(curve_n), len(theta_arr))
    return Token(
        key=key, theta=theta_arr, logy=np.frombuffer(logy, dtype=np.float64).tolist(), log_scale=log_scale,
        n=n, node=node, prev=prev, arrived=arrived, rng=np.random.Generator(bitgen), handoffs=handoffs,
        theta_bar=None if theta_bar is None else np.frombuffer(theta_bar, dtype=np.float64).copy(),
        path=path, curve_n=curve_n, curve_theta=list(curves.copy()),
    )


def token_streams(seed: int, tokens: int) -> list[np.random.Generator]:
    """Independent RNG streams for K tokens (SeedSequence.spawn), identical in every layout."""
    if not isinstance(tokens, int) or tokens < 1:
        raise ConfigError(f"tokens must be an integer >= 1, got {tokens!r}")
    return [np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(int(seed)).spawn(tokens)]


def new_token(key: int, chain: SRRW, theta0: np.ndarray, rng: np.random.Generator, schedule: Schedule,
              start: int | None = None) -> Token:
    """Token at step 0: x₀ uniform, X₀ = agent `start` or drawn uniformly from its stream."""
    n = chain.num_nodes
    if start is not None and int(start) not in chain.index:
        raise ConfigError(f"start agent {start} is not in the graph")
    node = min(int(rng.random() * n), n - 1) if start is None else chain.index[int(start)]
    theta = np.array(theta0, dtype=np.float64)
    return Token(
        key=key, theta=theta, logy=[-math.log(n)] * n, log_scale=0.0, n=0, node=node, prev=-1,
        arrived=True, rng=rng, theta_bar=theta.copy() if schedule.polyak else None,
        path=[node] if schedule.record_path else None,
    )


# ----------------------------------------------------------------------------- the walk


def walk(
    token: Token,
    chain: SRRW,
    objective: Any,
    schedule: Schedule,
    stop: int,
    owned: np.ndarray | None = None,
    checkpoint_every: int = 0,
) -> str:
    """Advance `token` until step `stop` (DONE), until its next agent is not `owned` (LEAVE: the token
    sits at that agent with its update due), or at a multiple of `checkpoint_every` (CHECKPOINT).

    Only the token state and the current agents' rows/data are read, so any owner of the agent
    continues the trajectory identically. `owned` is a bool mask over agent indices (None: all).
    """
    if not token.theta.flags.writeable:  # a token deserialised by Ray holds read-only views
        token.theta = token.theta.copy()
    if token.theta_bar is not None and not token.theta_bar.flags.writeable:
        token.theta_bar = token.theta_bar.copy()
    alpha, base = chain.alpha, chain.base
    fast = alpha == 0.0 and base in ("mhrw", "srw")
    nbr, log_base, cdf, adj = chain.py_nbr, chain.py_log_base, chain.py_cdf, chain.py_adj
    gw, num = chain.grad_weight, chain.num_nodes
    a, b, lr = schedule.a, schedule.b, schedule.lr
    max_sq = schedule.max_norm**2
    rec, path = schedule.record_every, token.path
    theta, logy, rng = token.theta, token.logy, token.rng
    descend = objective.descend
    node, n = token.node, token.n
    arrived = token.arrived
    try:
        while True:
            if not arrived:
                # arrival at X_{n+1} = node: x and θ updates with this agent's data
                gamma = (n + 2.0) ** -a
                log_scale = token.log_scale + math.log1p(-gamma)
                token.log_scale = log_scale
                add = math.log(gamma) - log_scale  # y_j += γ/c'
                old = logy[node]
                logy[node] = max(old, add) + math.log1p(math.exp(-abs(old - add)))
                descend(node, theta, lr * (n + 2.0) ** -b * gw[node])
                n += 1
                arrived = True
                sq = float(theta @ theta)
                if not sq <= max_sq:  # also catches NaN
                    raise DivergenceError(
                        f"SA-SRRW diverged at step {n} (agent {int(chain.nodes[node])}): ‖θ‖ = {math.sqrt(sq) if sq == sq else sq:.3g}"
                        f" > max_norm {schedule.max_norm:g}; lower lr or raise b"
                    )
                if schedule.project is not None and sq > schedule.project**2:
                    theta *= schedule.project / math.sqrt(sq)
                if token.theta_bar is not None:
                    token.theta_bar += (theta - token.theta_bar) / n
                if path is not None:
                    path.append(node)
                if rec and n % rec == 0:
                    token.curve_n.append(n)
                    token.curve_theta.append(theta.copy())
                if checkpoint_every and n % checkpoint_every == 0 and n < stop:
                    return CHECKPOINT
            if n >= stop:
                return DONE
            # departure from X_n = node: draw X_{n+1} ~ K_{X_n,·}[x_n]
            u = rng.random()
            if fast:
                c = cdf[node]
                nb = nbr[node]
                nxt = nb[min(bisect_right(c, u * c[-1]), len(nb) - 1)]
            elif base == "iid":
                nxt = min(int(u * num), num - 1)
            elif base == "nbrw":
                nb = adj[node]
                prev = token.prev
                if len(nb) > 1 and prev >= 0:
                    nb = [v for v in nb if v != prev]
                nxt = nb[min(int(u * len(nb)), len(nb) - 1)]
            else:
                # K_{node,·}[x]: log-weights, max-shifted, cumulated; pure Python over the (small) row
                nb = nbr[node]
                lw = [lb - alpha * logy[c] for lb, c in zip(log_base[node], nb)]
                top = max(lw)
                acc, cum = 0.0, []
                for w in lw:
                    acc += exp(w - top)
                    cum.append(acc)
                nxt = nb[min(bisect_right(cum, u * acc), len(nb) - 1)]
            token.prev = node
            node = nxt
            arrived = False
            if owned is not None and not owned[node]:
                return LEAVE
    finally:
        token.node, token.n, token.arrived = node, n, arrived


# ----------------------------------------------------------------------------- reference runner


def bind(objective: Any, chain: SRRW) -> Any:
    """The objective keyed by walk index: every agent must hold data and every data holder be an agent."""
    from core.errors import DataError, GraphError

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


def make_tokens(chain: SRRW, dim: int, schedule: Schedule, *, tokens: int = 1, seed: int = 0,
                theta0: np.ndarray | None = None, start: int | None = None) -> list[Token]:
    """The K fresh tokens of a run: the same in the reference and in every distributed layout."""
    theta0 = np.zeros(dim) if theta0 is None else np.asarray(theta0, dtype=np.float64)
    if theta0.shape != (dim,) or not np.isfinite(theta0).all():
        raise ConfigError(f"theta0 must be a finite vector of shape ({dim},), got shape {theta0.shape}")
    return [new_token(k, chain, theta0, rng, schedule, start) for k, rng in enumerate(token_streams(seed, tokens))]


def run_sa_srrw(
    objective: Any,
    graph: nx.Graph,
    *,
    steps: int,
    alpha: float = 0.0,
    a: float = 0.8,
    b: float = 0.9,
    base: str = "mhrw",
    tokens: int = 1,
    seed: int = 0,
    lr: float = 1.0,
    theta0: np.ndarray | None = None,
    start: int | None = None,
    project: float | None = None,
    polyak: bool = False,
    max_norm: float = 1e8,
    record_every: int = 0,
    record_path: bool = False,
) -> SAResult:
    """SA-SRRW in one process; `objective` holds one data block per graph agent (keyed by agent id)."""
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
    chain = SRRW(graph, alpha, base)
    schedule = Schedule(a, b, lr, project, polyak, max_norm, record_every, record_path)
    objective = bind(objective, chain)
    toks = make_tokens(chain, objective.dim, schedule, tokens=tokens, seed=seed, theta0=theta0, start=start)
    began = time.perf_counter()
    for tok in toks:
        walk(tok, chain, objective, schedule, steps)
    seconds = time.perf_counter() - began
    return SAResult(np.mean([t.theta for t in toks], axis=0), toks, {"walk_seconds": seconds})


# ----------------------------------------------------------------------------- checkpoints


def save_token(directory: str | Path, token: Token) -> Path:
    """Checkpoint a token: its .npy arrays (written then renamed), then `token-K.json` naming them with
    sha256 and sealed by the digest of its own content (renamed last, so a reader sees the old
    checkpoint or the new one, never a mix)."""
    from core.io import sha256_file, write_json_sealed

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta, arrays = token.state()
    files = {}
    for name, arr in arrays.items():
        final = directory / f"token-{token.key}-n{token.n:010d}-{name}.npy"
        tmp = final.with_name(f".{final.name}.tmp.npy")
        np.save(tmp, np.ascontiguousarray(arr), allow_pickle=False)
        tmp.replace(final)
        files[name] = {"file": final.name, "sha256": sha256_file(final)}
    meta["files"] = files
    manifest = directory / f"token-{token.key}.json"
    write_json_sealed(manifest, meta)
    for old in directory.glob(f"token-{token.key}-n*.npy"):  # older checkpoints of this token
        if old.name not in {f["file"] for f in files.values()}:
            old.unlink(missing_ok=True)
    return manifest


def checkpoint_hint(directory: str | Path) -> str:
    """How to recover from a damaged checkpoint: appended to every error about one."""
    return f"; delete {directory} (or rerun the stage with --force) to start the walk from scratch"


def load_token(directory: str | Path, key: int) -> Token | None:
    """The last checkpoint of token `key` (None if there is none); the JSON's seal and the arrays'
    checksums verified, so neither an edited field nor a damaged array is resumed from."""
    from core.io import confined, read_json_sealed, sha256_file

    manifest = Path(directory) / f"token-{key}.json"
    if not manifest.is_file():
        return None
    hint = checkpoint_hint(directory)
    meta = read_json_sealed(manifest, "token checkpoint", hint)
    try:
        arrays = {}
        for name, entry in meta["files"].items():
            path = confined(directory, entry["file"], f"token checkpoint {manifest.name}")
            if not path.is_file() or sha256_file(path) != entry["sha256"]:
                raise CorruptArtifactError(f"{path}: missing or checksum does not match {manifest.name}{hint}")
            arrays[name] = np.load(path, allow_pickle=False)
        return Token.from_state(meta, arrays)
    except CorruptArtifactError:
        raise
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CorruptArtifactError(f"{manifest}: unreadable token checkpoint ({exc}){hint}") from None


# ----------------------------------------------------------------------------- many trials at once


def run_sa_srrw_batch(
    objective: Any,
    graph: nx.Graph,
    *,
    steps: int,
    trials: int,
    alpha: float = 0.0,
    a: float = 0.8,
    b: float = 0.9,
    base: str = "mhrw",
    seed: int = 0,
    lr: float = 1.0,
    max_norm: float = 1e8,
    record_at: tuple[int, ...] = (),
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """`trials` independent SA-SRRW runs of a logistic regression, vectorised over trials (benchmarks).

    The same algorithm as `walk` (padded rows, one shared RNG drawing a vector per step); with
    trials=1 it follows `run_sa_srrw(..., tokens=1)` on the stream `token_streams(seed, 1)[0]`.
    Returns final θ (trials, d) and {step: θ (trials, d)} at the `record_at` steps.
    """
    fused = getattr(objective, "_fused", None)
    if fused is None:
        raise ConfigError("run_sa_srrw_batch supports LogisticRegression objectives only")
    if base not in ("mhrw", "srw", "iid"):
        raise ConfigError(f"run_sa_srrw_batch supports bases mhrw, srw and iid, not '{base}'")
    if not isinstance(trials, int) or trials < 1 or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"trials and steps must be integers >= 1, got {trials!r}, {steps!r}")
    chain = SRRW(graph, alpha, base)
    Schedule(a, b, lr, None, False, max_norm)  # validates a, b, lr, max_norm
    fused = bind(objective, chain)._fused
    n_nodes, dim = chain.num_nodes, objective.dim
    width = max(len(r) for r in chain.nbr) if base != "iid" else 1
    nb = np.zeros((n_nodes, width), dtype=np.int64)
    lb = np.full((n_nodes, width), -np.inf)
    deg = np.zeros(n_nodes, dtype=np.int64)
    if base != "iid":
        for i, cols in enumerate(chain.nbr):
            nb[i, : len(cols)], nb[i, len(cols) :] = cols, i
            lb[i, : len(cols)] = chain.log_base[i]
            deg[i] = len(cols)
    rows_m = max(len(fused[i][1]) for i in range(n_nodes))
    xh = np.zeros((n_nodes, rows_m, dim))
    ky = np.zeros((n_nodes, rows_m))  # padding rows: tanh(0) + 0 = 0, so they add nothing
    inv_m = np.zeros(n_nodes)
    for i in range(n_nodes):
        x_i, k_i, inv = fused[i]
        xh[i, : len(k_i)], ky[i, : len(k_i)], inv_m[i] = x_i, k_i, inv
    coef = inv_m * chain.grad_weight
    lam = objective.lam
    rng = token_streams(seed, 1)[0]
    rows = np.arange(trials)
    cur = np.minimum((rng.random(trials) * n_nodes).astype(np.int64), n_nodes - 1)
    logy = np.full((trials, n_nodes), -math.log(n_nodes))
    log_scale = 0.0
    theta = np.zeros((trials, dim))
    snaps: dict[int, np.ndarray] = {}
    want = set(record_at)
    for n in range(steps):
        u = rng.random(trials)
        if base == "iid":
            nxt = np.minimum((u * n_nodes).astype(np.int64), n_nodes - 1)
        else:
            cols = nb[cur]
            lw = lb[cur] - alpha * logy[rows[:, None], cols] if alpha else lb[cur]
            lw = np.exp(lw - lw.max(axis=1, keepdims=True))
            cum = np.cumsum(lw, axis=1)
            k = (cum <= (u * cum[:, -1])[:, None]).sum(axis=1)
            nxt = cols[rows, np.minimum(k, deg[cur] - 1)]
        gamma = (n + 2.0) ** -a
        log_scale += math.log1p(-gamma)
        logy[rows, nxt] = np.logaddexp(logy[rows, nxt], math.log(gamma) - log_scale)
        scale = lr * (n + 2.0) ** -b
        xs = xh[nxt]
        r = np.tanh(np.einsum("bmd,bd->bm", xs, theta)) + ky[nxt]
        v = np.einsum("bm,bmd->bd", r, xs)
        if lam:
            theta *= (1.0 - scale * chain.grad_weight[nxt] * lam)[:, None]
        theta -= (scale * coef[nxt])[:, None] * v
        norms = np.einsum("bd,bd->b", theta, theta)
        if not (norms <= max_norm**2).all():
            bad = int(np.flatnonzero(~(norms <= max_norm**2))[0])
            raise DivergenceError(f"SA-SRRW diverged at step {n + 1} in trial {bad}: ‖θ‖ > max_norm {max_norm:g}; lower lr or raise b")
        cur = nxt
        if n + 1 in want:
            snaps[n + 1] = theta.copy()
    return theta, snaps


# ----------------------------------------------------------------------------- partitioning for walks


def walk_partition(chain: SRRW, graph: nx.Graph, parts: int, *, seed: int = 0, method: str = "kl") -> dict[int, int]:
    """Balanced partition of the agents that the token crosses rarely.

    `method`: "kl" (recursive Kernighan–Lin bisection), "louvain" (Louvain communities packed into balanced
    parts, falling back to Kernighan–Lin when that is off balance) or "range" (contiguous id ranges, the
    baseline). The base chain crosses edge {i, j} at the stationary rate 2 μ_i P_ij (reversibility makes it
    symmetric), so "kl" and "louvain" run both on plain edge counts and on that flow, and keep whichever
    gives the lower crossing rate (both are local searches; neither wins always).
    """
    from core.agents import PARTITIONERS, louvain_partition, partition, range_partition

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

    split = partition if method == "kl" else louvain_partition
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
