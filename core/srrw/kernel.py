"""The SA-SRRW walk, vectorised over the tokens resident in one process (docs/design.md, SRRW).

Hu, Doshi & Eun (ICLR 2024): on arrival at X_{n+1},
    x_{n+1} = x_n + γ_{n+1}(δ_{X_{n+1}} − x_n),  θ_{n+1} = θ_n − β_{n+1} w_{X_{n+1}} ∇f_{X_{n+1}}(θ_n),
then X_{n+2} ~ K_{X_{n+1},·}[x_{n+1}]. x = c·y is kept as log y and log c, so a step changes one entry.

Every token resident in a process (the reference: all of them; a walker actor: those on its agents)
advances in lock step, one numpy call per operation for all of them — or, for a logistic objective whose
path is not recorded, one token at a time in the numba kernel (shardwalk.core.srrw.compiled), same recursion. A token's trajectory does not
depend on which tokens share the batch: each draws from its own stream (pre-drawn in chunks; the
stream is rewound to the draws actually used when the token leaves), and every operation is either
elementwise or a reduction within the token's own row, so its floating-point result is the same in any
batch. The reference and every walker layout run this same code, hence the same bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from shardwalk.core.errors import ConfigError, DivergenceError
from shardwalk.core.srrw.chain import SRRW
from shardwalk.core.srrw.spec import Schedule
from shardwalk.core.srrw.token import Token

DONE, LEAVE, CHECKPOINT, FAILED = "done", "leave", "checkpoint", "failed"
UNIFORMS = 4096  # uniforms pre-drawn per token and refill: one Generator call (and kernel return) per 4,096 hops
FIRST_UNIFORMS = 256  # drawn when a token joins (into the buffer's tail): a visitor often leaves within a few hundred
TABLE_CHUNK = 1 << 14


class StepTables:
    """γ_n, log c_n and β_n as functions of the step count, computed once with Python floats.

    log c depends on n only (c_n = Π(1 − γ)), so every token at step n shares it. The arrays grow in place
    (capacity doubling, only the new entries written): rebuilding them whole from lists at every extension
    cost 3 s of a 1,000,000-step walk, in every walker actor.
    """

    def __init__(self, a: float, b: float, lr: float) -> None:
        self.a, self.b, self.lr = a, b, lr
        self._add = np.zeros(0)  # log γ − log c' of the arrival that makes step n+1
        self._beta = np.zeros(0)  # lr·(n+2)^(−b) of that arrival
        self._log_scale = np.zeros(1)  # log c after n steps
        self.arrays = (self._add, self._beta, self._log_scale)

    def ensure(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(add, beta, log_scale) arrays covering the arrival at step count `n`."""
        start = len(self.arrays[0])  # arrivals covered
        if n >= start:
            stop = n + TABLE_CHUNK
            add, beta, scale = [], [], []
            last = float(self._log_scale[start])
            for k in range(start, stop):
                gamma = (k + 2.0) ** -self.a
                last = last + math.log1p(-gamma)
                scale.append(last)
                add.append(math.log(gamma) - last)
                beta.append(self.lr * (k + 2.0) ** -self.b)
            if stop > len(self._add):
                cap = max(stop, 2 * len(self._add))
                self._add, self._beta = _grown(self._add, cap), _grown(self._beta, cap)
                self._log_scale = _grown(self._log_scale, cap + 1)
            self._add[start:stop], self._beta[start:stop], self._log_scale[start + 1 : stop + 1] = add, beta, scale
            self.arrays = (self._add[:stop], self._beta[:stop], self._log_scale[: stop + 1])
        return self.arrays


def _grown(values: np.ndarray, capacity: int) -> np.ndarray:
    out = np.zeros(capacity, values.dtype)
    out[: len(values)] = values
    return out


@lru_cache(maxsize=16)
def step_tables(a: float, b: float, lr: float) -> StepTables:
    """One growing table per schedule per process (walk() is called once per token visit in tests)."""
    return StepTables(a, b, lr)


@dataclass
class WalkContext:
    """What a process needs to advance tokens: the kernel rows, the data, the schedule and its bounds."""

    chain: SRRW
    objective: Any  # keyed by walk index; descend_batch(nodes, theta, scale)
    schedule: Schedule
    stop: int  # step count at which a token is done
    owned: np.ndarray | None = None  # bool over agent indices: where tokens may step here (None: all)
    checkpoint_every: int = 0
    compiled: bool | None = None  # the numba kernel (None: whenever it supports the objective and schedule)

    def __post_init__(self) -> None:
        from shardwalk.core.srrw import compiled  # numba: imported (and compiled) only by a walk that uses it

        s = self.schedule
        self.tables = step_tables(float(s.a), float(s.b), float(s.lr))
        supported = compiled.supports(self.objective, s)
        if self.compiled and not supported:
            raise ConfigError("the compiled walk needs a LogisticRegression objective and no per-step recording")
        self.compiled = supported if self.compiled is None else self.compiled
        if self.compiled:
            self.data = compiled.data_arrays(self.objective, self.chain.num_nodes)
            self.owned_all = np.ones(self.chain.num_nodes, dtype=bool) if self.owned is None else self.owned


class Resident:
    """The tokens resident in one process as arrays; row k is `tokens[k]`.

    The arrays are views of buffers with spare capacity: a joining token is written after the last row and a
    leaving one is replaced by the last row, so a hand-off costs one row's copy, not the whole batch's (row
    order never matters: every operation is elementwise or inside one row). With a `shard` (a walker actor
    of a partitioned walk) a token's visit measure outside the shared entries stays here between visits.
    """

    def __init__(self, dim: int, num_nodes: int, polyak: bool, shard: Any = None) -> None:
        self.tokens: list[Token] = []
        self.dim, self.num_nodes, self.polyak, self.shard = dim, num_nodes, polyak, shard
        self.size = 0
        self._buf = {"theta": np.zeros((0, dim)), "bar": np.zeros((0, dim)) if polyak else None,
                     "logy": np.zeros((0, num_nodes)), "node": np.zeros(0, dtype=np.int64),
                     "prev": np.zeros(0, dtype=np.int64), "n": np.zeros(0, dtype=np.int64),
                     "arrived": np.zeros(0, dtype=bool), "uniforms": np.zeros((0, UNIFORMS)),
                     "pos": np.zeros(0, dtype=np.int64), "base": np.zeros(0, dtype=np.int64)}
        self.rng_start: list[dict[str, Any]] = []  # each stream's state where its uniforms begin
        self._row_numbers = np.zeros(0, dtype=np.int64)
        self._views()

    def __len__(self) -> int:
        return len(self.tokens)

    def _views(self) -> None:
        for name, buf in self._buf.items():
            setattr(self, name, None if buf is None else buf[: self.size])

    def _reserve(self, rows: int) -> None:
        cap = len(self._buf["node"])
        if rows <= cap:
            return
        cap = max(rows, 2 * cap, 8)
        for name, buf in self._buf.items():
            if buf is not None:
                grown = np.zeros((cap, *buf.shape[1:]), dtype=buf.dtype)
                grown[: self.size] = buf[: self.size]
                self._buf[name] = grown

    @property
    def row_numbers(self) -> np.ndarray:
        """0..B−1 (cached: gathers by row need it every step)."""
        if len(self._row_numbers) != len(self.tokens):
            self._row_numbers = np.arange(len(self.tokens))
        return self._row_numbers

    def add(self, tokens: list[Token], tables: StepTables) -> None:
        """Make `tokens` resident (their arrays copied in; the Token objects are kept and updated on exit)."""
        if not tokens:
            return
        for tok in tokens:
            _check_fits(tok, self, tables)
        self._reserve(self.size + len(tokens))
        b, rows = self._buf, slice(self.size, self.size + len(tokens))
        b["theta"][rows] = [tok.theta for tok in tokens]
        if b["bar"] is not None:
            b["bar"][rows] = [tok.theta_bar for tok in tokens]
        b["node"][rows] = [tok.node for tok in tokens]
        b["prev"][rows] = [tok.prev for tok in tokens]
        b["n"][rows] = [tok.n for tok in tokens]
        b["arrived"][rows] = [tok.arrived for tok in tokens]
        b["pos"][rows] = b["base"][rows] = UNIFORMS - FIRST_UNIFORMS
        for k, tok in enumerate(tokens, start=self.size):
            if self.shard is not None and tok.partial:
                self.shard.restore(tok, b["logy"][k])
            else:
                b["logy"][k] = tok.logy
            self.rng_start.append(tok.rng.bit_generator.state)
            b["uniforms"][k, UNIFORMS - FIRST_UNIFORMS :] = tok.rng.random(FIRST_UNIFORMS)
        self.size += len(tokens)
        self.tokens.extend(tokens)
        self._views()

    def refill(self, k: int) -> None:
        """Row k's next uniforms, from where its stream stands."""
        rng = self._rewind(k)
        self.rng_start[k] = rng.bit_generator.state
        self.uniforms[k] = rng.random(UNIFORMS)
        self.pos[k] = self.base[k] = 0

    def draw(self, rows: np.ndarray) -> np.ndarray:
        """The next uniform of each row's own stream."""
        for k in rows[self.pos[rows] >= UNIFORMS].tolist():
            self.refill(k)
        u = self.uniforms[rows, self.pos[rows]]
        self.pos[rows] += 1
        return u

    def _rewind(self, k: int) -> np.random.Generator:
        """Row k's stream positioned just after the uniforms it has used (what a scalar walk would hold)."""
        rng = self.tokens[k].rng
        rng.bit_generator.state = self.rng_start[k]
        rng.bit_generator.advance(int(self.pos[k] - self.base[k]))
        return rng

    def take(self, rows: list[int], tables: StepTables) -> list[Token]:
        """Write rows' state back into their Token objects and remove them from the batch."""
        _, _, log_scale = tables.ensure(int(self.n[rows].max()) if rows else 0)
        out = []
        for k in rows:
            tok = self.tokens[k]
            tok.theta = self.theta[k].copy()
            if self.shard is not None:
                self.shard.park(tok, self.logy[k])
            else:
                tok.logy = self.logy[k].tolist()
            tok.node, tok.prev, tok.n = int(self.node[k]), int(self.prev[k]), int(self.n[k])
            tok.arrived, tok.log_scale = bool(self.arrived[k]), float(log_scale[tok.n])
            if self.bar is not None:
                tok.theta_bar = self.bar[k].copy()
            self._rewind(k)
            out.append(tok)
        for k in sorted(set(rows), reverse=True):  # the last row fills each gap
            last = self.size - 1
            if k != last:
                for buf in self._buf.values():
                    if buf is not None:
                        buf[k] = buf[last]
                self.tokens[k], self.rng_start[k] = self.tokens[last], self.rng_start[last]
            self.tokens.pop()
            self.rng_start.pop()
            self.size -= 1
        self._views()
        return out


def _check_fits(tok: Token, res: Resident, tables: StepTables) -> None:
    """A token from another walk (other agents, model or schedule) is refused, not walked."""
    agents = res.shard.num_nodes if tok.partial and res.shard is not None else len(tok.logy)
    if (tok.partial and res.shard is None) or agents != res.num_nodes or np.shape(tok.theta) != (res.dim,):
        raise ConfigError(f"token {tok.key} has {agents} agents and θ of shape {np.shape(tok.theta)}; "
                          f"this walk has {res.num_nodes} agents and dimension {res.dim}")
    if (tok.theta_bar is not None) != res.polyak:
        raise ConfigError(f"token {tok.key}: polyak averaging {'off' if res.polyak else 'on'} in the token, not in the walk")
    _, _, log_scale = tables.ensure(tok.n)
    if tok.log_scale != log_scale[tok.n]:
        raise ConfigError(f"token {tok.key} was walked with another step-size schedule (log c at step {tok.n} differs)")


def advance(res: Resident, ctx: WalkContext, max_iters: int) -> list[tuple[Token, str, Exception | None]]:
    """Up to `max_iters` lock-step iterations (compiled: hops per token); the tokens that stopped (DONE,
    LEAVE, CHECKPOINT, FAILED)."""
    if ctx.compiled:
        return _advance_compiled(res, ctx, max_iters)
    out: list[tuple[Token, str, Exception | None]] = []
    for _ in range(max_iters):
        if not len(res):
            break
        status: dict[int, tuple[str, Exception | None]] = {}
        everyone = slice(None)
        if not res.arrived.any():
            _arrive(res, ctx, everyone, status)
        elif not res.arrived.all():
            _arrive(res, ctx, np.flatnonzero(~res.arrived), status)
        if res.n.max() >= ctx.stop:
            for k in np.flatnonzero(res.n >= ctx.stop).tolist():
                status.setdefault(k, (DONE, None))
        if not status:
            _depart(res, ctx, everyone, status)
        else:
            go = np.asarray([k for k in range(len(res)) if k not in status], dtype=np.int64)
            if len(go):
                _depart(res, ctx, go, status)
        if status:
            rows = sorted(status)
            out += [(tok, *status[k]) for k, tok in zip(rows, res.take(rows, ctx.tables))]
    return out


def _advance_compiled(res: Resident, ctx: WalkContext, budget: int) -> list[tuple[Token, str, Exception | None]]:
    """One call of the numba kernel over every resident token (shardwalk.core.srrw.compiled)."""
    from shardwalk.core.srrw import compiled as cc  # numba: imported only by a walk that uses it

    s, chain, r = ctx.schedule, ctx.chain, ctx.chain.rows
    add, beta, _ = ctx.tables.ensure(min(int(res.n.max(initial=0)) + budget + 1, ctx.stop))
    status = np.zeros(len(res), dtype=np.int64)
    bar = res.bar if res.bar is not None else np.zeros((0, 0))
    cc.walk_tokens(res.theta, bar, res.logy, res.node, res.prev, res.n, res.arrived, res.uniforms, res.pos, status,
                   int(budget), r.nbr, r.log_base, r.cdf, r.total, r.deg, r.adj, r.adj_deg, *ctx.data, chain.grad_weight,
                   add, beta, float(chain.alpha), cc.BASE_CODES[chain.base], float(ctx.objective.lam),
                   float(s.max_norm) ** 2, float(s.project or 0.0), bool(s.polyak), int(ctx.stop), ctx.owned_all,
                   int(ctx.checkpoint_every), int(s.record_every))
    for k in np.flatnonzero(status == cc.REFILL).tolist():
        res.refill(k)
    if s.record_every:  # θ snapshots at the arrivals the kernel stopped at
        snap = np.flatnonzero(((status == cc.RECORD) | (status == cc.CHECKPOINT)) & (res.n % s.record_every == 0))
        _record(res, ctx, snap, res.n[snap], res.theta[snap])
    names = {cc.DONE: DONE, cc.LEAVE: LEAVE, cc.CHECKPOINT: CHECKPOINT, cc.FAILED: FAILED}
    rows = [k for k, code in enumerate(status.tolist()) if code in names]
    if not rows:
        return []
    errors = {k: _divergence(res, ctx, k) for k in rows if status[k] == cc.FAILED}
    return [(tok, names[int(status[k])], errors.get(k)) for k, tok in zip(rows, res.take(rows, ctx.tables))]


def warm_up(ctx: WalkContext, dim: int) -> None:
    """Compile (or load from numba's cache) the kernel for this walk's types, outside any timing."""
    if ctx.compiled:
        _advance_compiled(Resident(dim, ctx.chain.num_nodes, ctx.schedule.polyak), ctx, 1)


def _divergence(res: Resident, ctx: WalkContext, k: int) -> DivergenceError:
    sq = float(res.theta[k] @ res.theta[k])
    norm = math.sqrt(sq) if sq == sq else sq
    return DivergenceError(f"SA-SRRW diverged at step {res.n[k]} (agent {int(ctx.chain.nodes[res.node[k]])}): "
                           f"‖θ‖ = {norm:.3g} > max_norm {ctx.schedule.max_norm:g}; lower lr or raise b")


def _rows(res: Resident, rows: np.ndarray | slice) -> np.ndarray:
    """Row numbers of a selection (a slice selects every row)."""
    return res.row_numbers if isinstance(rows, slice) else rows


def _arrive(res: Resident, ctx: WalkContext, rows: np.ndarray | slice, status: dict) -> None:
    """The x and θ updates of tokens that have just arrived at their agent (`rows`: a slice is every row)."""
    s, chain = ctx.schedule, ctx.chain
    n, node = res.n[rows], res.node[rows]
    add, beta, _ = ctx.tables.ensure(int(n.max()))
    at = _rows(res, rows)
    res.logy[at, node] = np.logaddexp(res.logy[at, node], add[n])  # y_j += γ/c'
    theta = res.theta[rows]  # a view when every row arrives: updated in place
    ctx.objective.descend_batch(node, theta, beta[n] * chain.grad_weight[node])
    n = n + 1
    sq = (theta * theta).sum(axis=1)
    for i in np.flatnonzero(~(sq <= s.max_norm**2)).tolist():  # also catches NaN
        norm = math.sqrt(sq[i]) if sq[i] == sq[i] else sq[i]
        status[int(at[i])] = (FAILED, DivergenceError(
            f"SA-SRRW diverged at step {n[i]} (agent {int(chain.nodes[node[i]])}): ‖θ‖ = {norm:.3g}"
            f" > max_norm {s.max_norm:g}; lower lr or raise b"))
    if s.project is not None:
        over = np.flatnonzero(sq > s.project**2)
        theta[over] *= (s.project / np.sqrt(sq[over]))[:, None]
    if not isinstance(rows, slice):
        res.theta[rows] = theta
    if res.bar is not None:
        bar = res.bar[rows]
        bar += (theta - bar) / n[:, None]
        res.bar[rows] = bar
    res.n[rows], res.arrived[rows] = n, True
    _record(res, ctx, at, n, theta)
    every = ctx.checkpoint_every
    if every:
        for i in np.flatnonzero((n % every == 0) & (n < ctx.stop)).tolist():
            status.setdefault(int(at[i]), (CHECKPOINT, None))


def _record(res: Resident, ctx: WalkContext, rows: np.ndarray, n: np.ndarray, theta: np.ndarray) -> None:
    """The optional path and θ curve (per token: only when asked for)."""
    rec = ctx.schedule.record_every
    if ctx.schedule.record_path:
        for k, node in zip(rows.tolist(), res.node[rows].tolist()):
            res.tokens[k].path.append(node)
    if rec:
        for i in np.flatnonzero(n % rec == 0).tolist():
            tok = res.tokens[int(rows[i])]
            tok.curve_n.append(int(n[i]))
            tok.curve_theta.append(theta[i].copy())


def _depart(res: Resident, ctx: WalkContext, rows: np.ndarray | slice, status: dict) -> None:
    """Draw X_{n+1} ~ K_{X_n,·}[x_n] for `rows`; those whose next agent is not held here leave."""
    chain, r = ctx.chain, ctx.chain.rows
    at = _rows(res, rows)
    u = res.draw(at)
    node = res.node[rows]
    if chain.base == "iid":
        nxt = np.minimum((u * chain.num_nodes).astype(np.int64), chain.num_nodes - 1)
    elif chain.base == "nbrw":
        nxt = _non_backtracking(r, node, res.prev[rows], u)
    else:
        if chain.alpha == 0.0:
            cum, total = r.cdf[node], r.total[node]
        else:  # log-weights of K_{node,·}[x], max-shifted, cumulated along the row
            cols = r.nbr[node]
            lw = r.log_base[node] - chain.alpha * res.logy[at[:, None], cols]
            cum = np.cumsum(np.exp(lw - lw.max(axis=1, keepdims=True)), axis=1)
            total = cum[:, -1]
        k = (cum <= (u * total)[:, None]).sum(axis=1)
        nxt = r.nbr[node, np.minimum(k, r.deg[node] - 1)]
    res.prev[rows], res.node[rows], res.arrived[rows] = node, nxt, False
    if ctx.owned is not None:
        for i in np.flatnonzero(~ctx.owned[nxt]).tolist():
            status[int(at[i])] = (LEAVE, None)


def _non_backtracking(r: Any, node: np.ndarray, prev: np.ndarray, u: np.ndarray) -> np.ndarray:
    """A uniform neighbour other than the previous agent (unless it is the only one)."""
    cols, deg = r.adj[node], r.adj_deg[node]
    valid = np.arange(cols.shape[1])[None, :] < deg[:, None]
    valid &= ~((cols == prev[:, None]) & ((deg > 1) & (prev >= 0))[:, None])
    count = valid.sum(axis=1)
    pick = np.minimum((u * count).astype(np.int64), count - 1)
    at = (np.cumsum(valid, axis=1) > pick[:, None]).argmax(axis=1)
    return cols[np.arange(len(node)), at]


def walk(token: Token, chain: SRRW, objective: Any, schedule: Schedule, stop: int,
         owned: np.ndarray | None = None, checkpoint_every: int = 0) -> str:
    """Advance one token until step `stop` (DONE), until its next agent is not `owned` (LEAVE: the token
    sits at that agent with its update due), or at a multiple of `checkpoint_every` (CHECKPOINT)."""
    ctx = WalkContext(chain, objective, schedule, stop, owned, checkpoint_every)
    res = Resident(len(token.theta), chain.num_nodes, token.theta_bar is not None)
    res.add([token], ctx.tables)
    while True:
        for _, status, error in advance(res, ctx, 1 << 16):
            if error is not None:
                raise error
            return status


def walk_all(tokens: list[Token], ctx: WalkContext) -> None:
    """Advance every token to `ctx.stop` together in this process (the reference); raises the first failure."""
    if not tokens:
        return
    res = Resident(len(tokens[0].theta), ctx.chain.num_nodes, ctx.schedule.polyak)
    res.add(tokens, ctx.tables)
    while len(res):
        for _, _, error in advance(res, ctx, 1 << 16):
            if error is not None:
                raise error
