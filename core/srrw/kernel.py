"""The SA-SRRW walk, vectorised over the tokens resident in one process (docs/design.md, SRRW).

Hu, Doshi & Eun (ICLR 2024): on arrival at X_{n+1},
    x_{n+1} = x_n + γ_{n+1}(δ_{X_{n+1}} − x_n),  θ_{n+1} = θ_n − β_{n+1} w_{X_{n+1}} ∇f_{X_{n+1}}(θ_n),
then X_{n+2} ~ K_{X_{n+1},·}[x_{n+1}]. x = c·y is kept as log y and log c, so a step changes one entry.

Every token resident in a process (the reference: all of them; a walker actor: those on its agents)
advances in lock step, one numpy call per operation for all of them — or, for a logistic objective whose
path is not recorded, one token at a time in the numba kernel (shardwalk.core.srrw.compiled), same recursion. A token's trajectory does not
depend on which tokens share the batch: each draws from its own PCG64 stream (kept as words in its row and
stepped by shardwalk.core.srrw.compiled.next_uniform, numpy's own recurrence), and every operation is either
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
from shardwalk.core.srrw.token import RNG_WORDS, Token, TokenBatch

DONE, LEAVE, CHECKPOINT, FAILED = "done", "leave", "checkpoint", "failed"
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
    """The tokens resident in one process as arrays, one row per token (its stream as PCG64 words included).

    The arrays are views of buffers with spare capacity: joining tokens are written after the last row and
    leaving ones are replaced by the last rows, so a hand-off costs its own rows' copies, not the whole
    batch's (row order never matters: every operation is elementwise or inside one row). Tokens join and
    leave as a `TokenBatch` (arrays, what travels between actors) or as Token objects (`add`/`take`: the
    same objects come back, updated). With a `shard` (a walker actor of a partitioned walk) a token's visit
    measure outside the shared entries stays here between visits.
    """

    def __init__(self, dim: int, num_nodes: int, polyak: bool, shard: Any = None) -> None:
        self.dim, self.num_nodes, self.polyak, self.shard = dim, num_nodes, polyak, shard
        self.size = 0
        self.turn = 0  # the row whose turn comes first in the next compiled call (tokens take turns)
        ints = {name: np.zeros(0, dtype=np.int64) for name in ("key", "node", "prev", "n", "handoffs")}
        self._buf = {**ints, "theta": np.zeros((0, dim)), "bar": np.zeros((0, dim)) if polyak else None,
                     "logy": np.zeros((0, num_nodes)), "arrived": np.zeros(0, dtype=bool),
                     "rng": np.zeros((0, RNG_WORDS), dtype=np.uint64)}
        self.objects: list[Token | None] = []  # the Token object a row joined as (updated when it leaves)
        self.records: list[Any] = []  # per row: (path, curve steps, curve θs) when recorded, else None
        self._row_numbers = np.zeros(0, dtype=np.int64)
        self._views()

    def __len__(self) -> int:
        return self.size

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
        if len(self._row_numbers) != self.size:
            self._row_numbers = np.arange(self.size)
        return self._row_numbers

    def add(self, tokens: list[Token], tables: StepTables) -> None:
        """Make `tokens` resident; `take` (and `advance`) later update these same objects."""
        if tokens:
            self.add_batch(TokenBatch.from_tokens(tokens), tables, objects=tokens)

    def add_batch(self, batch: TokenBatch, tables: StepTables, objects: list[Token] | None = None) -> None:
        """Make a batch's tokens resident (checked first: a batch this walk cannot take changes nothing)."""
        count = len(batch)
        if not count:
            return
        _check_fits(batch, self, tables)
        self._reserve(self.size + count)
        rows = slice(self.size, self.size + count)
        b = self._buf
        for name in ("key", "node", "prev", "n", "handoffs", "arrived", "theta", "rng"):
            b[name][rows] = getattr(batch, name)
        if b["bar"] is not None:
            b["bar"][rows] = batch.bar
        if batch.partial:
            self.shard.restore(batch.key, b["logy"], np.arange(rows.start, rows.stop), batch.logy)
        else:
            b["logy"][rows] = batch.logy
        self.objects += objects if objects is not None else [None] * count
        self.records += batch.records if batch.records is not None else [None] * count
        self.size += count
        self._views()

    def draw(self, rows: np.ndarray) -> np.ndarray:
        """The next uniform of each row's own stream."""
        from shardwalk.core.srrw import compiled

        out = np.empty(len(rows))
        compiled.draw_uniforms(self.rng, np.asarray(rows, dtype=np.int64), out)
        return out

    def record_of(self, k: int) -> Any:
        """Row k's (path, curve steps, curve θs), made on first use."""
        if self.records[k] is None:
            self.records[k] = (None, [], [])
        return self.records[k]

    def take_batch(self, rows: list[int] | np.ndarray, tables: StepTables) -> TokenBatch:
        """The rows as a batch (a sharded measure keeps its own entries here), removed from the residents."""
        rows = np.asarray(rows, dtype=np.int64)
        _, _, log_scale = tables.ensure(int(self.n[rows].max()) if len(rows) else 0)
        logy = self.logy[rows] if self.shard is None else self.shard.park(self.key[rows], self.logy, rows)
        recorded = [self.records[k] for k in rows.tolist()]
        batch = TokenBatch(
            key=self.key[rows], n=self.n[rows], node=self.node[rows], prev=self.prev[rows], arrived=self.arrived[rows],
            handoffs=self.handoffs[rows], log_scale=log_scale[self.n[rows]], theta=self.theta[rows],
            bar=None if self.bar is None else self.bar[rows], logy=logy, rng=self.rng[rows],
            partial=self.shard is not None,
            records=None if all(r is None for r in recorded) else [r or (None, [], []) for r in recorded])
        self._remove(rows)
        return batch

    def take(self, rows: list[int], tables: StepTables) -> list[Token]:
        """The rows as Token objects (the ones they joined as, updated), removed from the residents."""
        objects = [self.objects[k] for k in rows]
        batch = self.take_batch(rows, tables)
        return [batch.write_into(i, tok) if tok is not None else batch.token(i) for i, tok in enumerate(objects)]

    def _remove(self, rows: np.ndarray) -> None:
        """Drop rows: the last rows not dropped move into the gaps."""
        rows = np.unique(rows)
        size = self.size - len(rows)
        holes = rows[rows < size]
        movers = np.setdiff1d(np.arange(size, self.size), rows)
        if len(holes):
            from shardwalk.core.srrw.compiled import move_rows

            for name, buf in self._buf.items():
                if name == "logy":  # the wide one: every token's visit measure
                    move_rows(buf, holes, movers)
                elif buf is not None:
                    buf[holes] = buf[movers]
            for h, m in zip(holes.tolist(), movers.tolist()):
                self.objects[h], self.records[h] = self.objects[m], self.records[m]
        del self.objects[size:], self.records[size:]
        self.size = size
        self._views()


def _check_fits(batch: TokenBatch, res: Resident, tables: StepTables) -> None:
    """A token from another walk (other agents, model or schedule) is refused, not walked."""
    key = int(batch.key[0])
    agents = res.shard.num_nodes if batch.partial and res.shard is not None else batch.logy.shape[1]
    dim = batch.theta.shape[1]
    if (batch.partial and res.shard is None) or agents != res.num_nodes or dim != res.dim:
        raise ConfigError(f"token {key} has {agents} agents and θ of shape ({dim},); "
                          f"this walk has {res.num_nodes} agents and dimension {res.dim}")
    if batch.partial:
        res.shard.check(batch.key, batch.logy.shape[1])
    if (batch.bar is not None) != res.polyak:
        raise ConfigError(f"token {key}: polyak averaging {'off' if res.polyak else 'on'} in the token, not in the walk")
    bad = (batch.n < 0) | (batch.node < 0) | (batch.node >= res.num_nodes) | (batch.prev < -1) | (batch.prev >= res.num_nodes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ConfigError(f"token {int(batch.key[i])} stands at agent index {int(batch.node[i])} (previous "
                          f"{int(batch.prev[i])}) at step {int(batch.n[i])}; this walk has {res.num_nodes} agents")
    _, _, log_scale = tables.ensure(int(batch.n.max()))
    off = np.flatnonzero(batch.log_scale != log_scale[batch.n])
    if len(off):
        i = int(off[0])
        raise ConfigError(f"token {int(batch.key[i])} was walked with another step-size schedule "
                          f"(log c at step {int(batch.n[i])} differs)")


Exits = tuple[list[int], dict[int, str], dict[int, Exception]]


def advance(res: Resident, ctx: WalkContext, max_iters: int, call_hops: int = 0) -> list[tuple[Token, str, Exception | None]]:
    """Up to `max_iters` lock-step iterations (compiled: hops per token, and with `call_hops` > 0 at most
    about that many hops in all, the tokens taking turns); the tokens that stopped (DONE, LEAVE, CHECKPOINT,
    FAILED)."""
    out: list[tuple[Token, str, Exception | None]] = []
    for rows, status, errors in _stops(res, ctx, max_iters, call_hops):
        out += [(tok, status[k], errors.get(k)) for k, tok in zip(rows, res.take(rows, ctx.tables))]
    return out


def advance_batch(res: Resident, ctx: WalkContext, max_iters: int,
                  call_hops: int = 0) -> tuple[TokenBatch | None, list[str], list[Exception | None]]:
    """`advance` for tokens in transit: the stopped tokens as one batch, their statuses and errors by row."""
    batches, statuses, failures = [], [], []
    for rows, status, errors in _stops(res, ctx, max_iters, call_hops):
        batches.append(res.take_batch(rows, ctx.tables))
        statuses += [status[k] for k in rows]
        failures += [errors.get(k) for k in rows]
    return (TokenBatch.concat(batches) if batches else None), statuses, failures


def _stops(res: Resident, ctx: WalkContext, max_iters: int, call_hops: int = 0) -> Any:
    """Yield (rows, status by row, error by row) of tokens that stopped; the caller takes those rows out
    before the walk goes on."""
    if ctx.compiled:
        stopped = _advance_compiled(res, ctx, max_iters, call_hops)
        if stopped[0]:
            yield stopped
        return
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
            yield rows, {k: status[k][0] for k in rows}, {k: e for k in rows if (e := status[k][1]) is not None}


def _advance_compiled(res: Resident, ctx: WalkContext, budget: int, call_hops: int = 0) -> Exits:
    """One call of the numba kernel over the resident tokens (shardwalk.core.srrw.compiled), each in turn from where
    the last call's turns ended; the rows that stopped."""
    from shardwalk.core.srrw import compiled as cc  # numba: imported only by a walk that uses it

    s, chain, r = ctx.schedule, ctx.chain, ctx.chain.rows
    add, beta, _ = ctx.tables.ensure(min(int(res.n.max(initial=0)) + budget + 1, ctx.stop))
    status = np.zeros(len(res), dtype=np.int64)
    bar = res.bar if res.bar is not None else np.zeros((0, 0))
    first = res.turn % len(res) if len(res) else 0
    turns = cc.walk_tokens(res.theta, bar, res.logy, res.node, res.prev, res.n, res.arrived, res.rng, status,
                   int(budget), int(call_hops), first, r.nbr, r.log_base, r.cdf, r.total, r.deg, r.adj, r.adj_deg, *ctx.data, chain.grad_weight,
                   add, beta, float(chain.alpha), cc.BASE_CODES[chain.base], float(ctx.objective.lam),
                   float(s.max_norm) ** 2, float(s.project or 0.0), bool(s.polyak), int(ctx.stop), ctx.owned_all,
                   int(ctx.checkpoint_every), int(s.record_every))
    res.turn = first + turns
    if s.record_every:  # θ snapshots at the arrivals the kernel stopped at
        snap = np.flatnonzero(((status == cc.RECORD) | (status == cc.CHECKPOINT)) & (res.n % s.record_every == 0))
        _record(res, ctx, snap, res.n[snap], res.theta[snap])
    names = {cc.DONE: DONE, cc.LEAVE: LEAVE, cc.CHECKPOINT: CHECKPOINT, cc.FAILED: FAILED}
    rows = np.flatnonzero((status == cc.DONE) | (status == cc.LEAVE) | (status == cc.CHECKPOINT) | (status == cc.FAILED))
    rows_list = rows.tolist()
    codes = status[rows].tolist()
    return (rows_list, {k: names[c] for k, c in zip(rows_list, codes)},
            {k: _divergence(res, ctx, k) for k, c in zip(rows_list, codes) if c == cc.FAILED})


def warm_up(ctx: WalkContext, dim: int, shard: Any = None) -> None:
    """Compile (or load from numba's cache) the kernel for this walk's types, outside any timing; with a
    `shard`, also the compiled copies a hand-off runs (a partial token unpickled, restored, parked)."""
    if ctx.compiled:
        _advance_compiled(Resident(dim, ctx.chain.num_nodes, ctx.schedule.polyak), ctx, 1)
    from shardwalk.core.srrw.compiled import move_rows

    move_rows(np.zeros((2, ctx.chain.num_nodes)), np.zeros(1, dtype=np.int64), np.ones(1, dtype=np.int64))
    if shard is None:
        return
    spare = shard.blank()
    spare.seed_all(np.zeros((1, spare.num_nodes)))
    res = Resident(dim, spare.num_nodes, ctx.schedule.polyak, spare)
    one = np.zeros(1, dtype=np.int64)
    batch = TokenBatch(key=one, n=one, node=spare.view[:1].astype(np.int64), prev=one - 1, arrived=np.ones(1, dtype=bool),
                       handoffs=one, log_scale=ctx.tables.ensure(0)[2][:1].copy(), theta=np.zeros((1, dim)),
                       bar=np.zeros((1, dim)) if ctx.schedule.polyak else None, logy=np.zeros((1, len(spare.shared))),
                       rng=np.zeros((1, RNG_WORDS), dtype=np.uint64), partial=True)
    rebuild, state = batch.__reduce__()  # the batch as a hand-off delivers it
    res.add_batch(rebuild(*state), ctx.tables)
    left = res.take_batch(np.arange(1), ctx.tables)
    if spare.arrived is not None:
        spare.changed_only(left.key, left.logy)


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
            res.record_of(k)[0].append(node)
    if rec:
        for i in np.flatnonzero(n % rec == 0).tolist():
            _, curve_n, curve_theta = res.record_of(int(rows[i]))
            curve_n.append(int(n[i]))
            curve_theta.append(theta[i].copy())


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
