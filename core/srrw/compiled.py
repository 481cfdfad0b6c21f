"""The SA-SRRW walk compiled with numba, for logistic-regression objectives (docs/design.md, SRRW).

The same recursion as shardwalk.core.srrw.kernel, one token at a time: a token walks up to `budget` hops here
until it must leave, checkpoint or finish. Each token draws its uniforms from its own PCG64 stream, kept as
uint64 words and stepped here exactly as numpy's `Generator(PCG64).random()` steps it (`next_uniform`), so
no uniforms are pre-drawn and a token that leaves has used exactly its draws. With no per-step Python or numpy call
a hop costs about a microsecond, so an actor's work is proportional to the tokens it holds. Every sum runs
in a fixed order inside one token's loop, so a token's bits do not depend on the other tokens; the
reference and walker actors call this same function, hence the same trajectories. Used when the
objective is a `LogisticRegression` and the path is not recorded (record_path needs the numpy kernel);
θ snapshots (record_every) stop the token's loop so that Python appends them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

from shardwalk.core.srrw.objectives import LogisticRegression

CONTINUE, DONE, LEAVE, CHECKPOINT, FAILED, RECORD = range(6)
BASE_CODES = {"mhrw": 0, "srw": 0, "iid": 1, "nbrw": 2}


def supports(objective: Any, schedule: Any) -> bool:
    """Whether this kernel can walk `objective` under `schedule`."""
    return isinstance(objective, LogisticRegression) and not schedule.record_path


def data_arrays(objective: Any, num_nodes: int) -> tuple[np.ndarray, ...]:
    """(slot per agent index, x/2, 1 − 2y, 1/m, real rows) of the agents the objective holds."""
    keys, xh, ky, inv_m = objective._padded_blocks()
    slot = np.full(num_nodes, -1, dtype=np.int64)
    slot[keys] = np.arange(len(keys))
    fused = objective.fused_blocks()
    rows = np.asarray([len(fused[k][1]) for k in keys.tolist()], dtype=np.int64)
    return slot, xh, ky, inv_m, rows


_MASK32, _SHIFT32 = np.uint64(0xFFFFFFFF), np.uint64(32)
_MULT_HIGH, _MULT_LOW = np.uint64(0x2360ED051FC65DA4), np.uint64(0x4385DF649FCCF645)  # PCG's 128-bit multiplier


@njit(cache=True)
def _mulhi(a, b):
    """The high 64 bits of the 128-bit product a·b."""
    a_lo, a_hi, b_lo, b_hi = a & _MASK32, a >> _SHIFT32, b & _MASK32, b >> _SHIFT32
    p0, p1, p2, p3 = a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi
    mid = (p0 >> _SHIFT32) + (p1 & _MASK32) + (p2 & _MASK32)
    return p3 + (p1 >> _SHIFT32) + (p2 >> _SHIFT32) + (mid >> _SHIFT32)


@njit(cache=True)
def next_uniform(rng, b):
    """numpy's PCG64 `random()` on stream row b (words: state high, low, increment high, low): one LCG step
    of the 128-bit state, the XSL-RR output, its top 53 bits as a double in [0, 1)."""
    hi, lo = rng[b, 0], rng[b, 1]
    low = lo * _MULT_LOW
    high = _mulhi(lo, _MULT_LOW) + lo * _MULT_HIGH + hi * _MULT_LOW
    lo2 = low + rng[b, 3]
    hi2 = high + rng[b, 2] + (np.uint64(1) if lo2 < low else np.uint64(0))
    rng[b, 0], rng[b, 1] = hi2, lo2
    v = hi2 ^ lo2
    rot = hi2 >> np.uint64(58)
    out = (v >> rot) | (v << ((np.uint64(64) - rot) & np.uint64(63)))
    return np.float64(out >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True)
def draw_uniforms(rng, rows, out):
    """The next uniform of each row's stream (the numpy kernel's draws)."""
    for i in range(rows.shape[0]):
        out[i] = next_uniform(rng, rows[i])


@njit(cache=True)
def take_columns(src, src_rows, cols, dst, dst_rows):
    """dst[dst_rows[i], :] = src[src_rows[i], cols]: a sharded measure's entries parked or carried (numpy's
    2-D fancy indexing costs ~10 ns an entry, a plain loop ~1)."""
    for i in range(src_rows.shape[0]):
        r, o = src_rows[i], dst_rows[i]
        for c in range(cols.shape[0]):
            dst[o, c] = src[r, cols[c]]


@njit(cache=True)
def put_columns(src, src_rows, cols, dst, dst_rows):
    """dst[dst_rows[i], cols] = src[src_rows[i], :]: a sharded measure's entries restored (a NaN source entry,
    one a token did not change, leaves the destination's as it is)."""
    for i in range(src_rows.shape[0]):
        r, o = src_rows[i], dst_rows[i]
        for c in range(cols.shape[0]):
            v = src[r, c]
            if v == v:
                dst[o, cols[c]] = v


@njit(cache=True)
def move_rows(buf, holes, movers):
    """buf[holes[i]] = buf[movers[i]] row by row, in place (numpy's fancy assignment copies through a temporary)."""
    for i in range(holes.shape[0]):
        buf[holes[i], :] = buf[movers[i], :]


@njit(cache=True)
def unchanged_to_nan(carried, arrived, keys, out):
    """out[i] = carried[i] with NaN wherever it equals arrived[keys[i]]: the shared entries a token left as it
    found them (one pass; numpy's gather, compare and masked write took ~4 passes over the entries)."""
    for i in range(carried.shape[0]):
        k = keys[i]
        for c in range(carried.shape[1]):
            v = carried[i, c]
            out[i, c] = np.nan if v == arrived[k, c] else v


@njit(cache=True)
def _arrive(b, theta, bar, logy, node, n, arrived, slot, xh, ky, inv_m, rows, gw, add_t, beta_t, lam, v):
    k = n[b]
    j = node[b]
    a = add_t[k]
    old = logy[b, j]
    logy[b, j] = max(old, a) + math.log1p(math.exp(-abs(old - a)))
    s = slot[j]
    scale = beta_t[k] * gw[j]
    d = theta.shape[1]
    for t in range(d):
        v[t] = 0.0
    for r in range(rows[s]):
        z = 0.0
        for t in range(d):
            z += xh[s, r, t] * theta[b, t]
        rr = math.tanh(z) + ky[s, r]
        for t in range(d):
            v[t] += rr * xh[s, r, t]
    if lam != 0.0:
        shrink = 1.0 - scale * lam
        for t in range(d):
            theta[b, t] *= shrink
    c = scale * inv_m[s]
    for t in range(d):
        theta[b, t] -= c * v[t]
    n[b] = k + 1
    arrived[b] = True


@njit(cache=True)
def _after_arrival(b, theta, bar, n, max_sq, project, polyak, stop, every, rec):
    d = theta.shape[1]
    sq = 0.0
    for t in range(d):
        sq += theta[b, t] * theta[b, t]
    if not sq <= max_sq:
        return FAILED
    if project > 0.0 and sq > project * project:
        f = project / math.sqrt(sq)
        for t in range(d):
            theta[b, t] *= f
    if polyak:
        for t in range(d):
            bar[b, t] += (theta[b, t] - bar[b, t]) / n[b]
    if every > 0 and n[b] % every == 0 and n[b] < stop:
        return CHECKPOINT
    if rec > 0 and n[b] % rec == 0:
        return RECORD
    return CONTINUE


@njit(cache=True)
def _next_agent(b, u, j, prev, logy, nbr, log_base, cdf, total, deg, adj, adj_deg, alpha, base, num, cum):
    if base == 1:  # iid
        return min(int(u * num), num - 1)
    if base == 2:  # non-backtracking
        cnt = 0
        for c in range(adj_deg[j]):
            if not (adj[j, c] == prev[b] and adj_deg[j] > 1 and prev[b] >= 0):
                cnt += 1
        pick = min(int(u * cnt), cnt - 1)
        for c in range(adj_deg[j]):
            if not (adj[j, c] == prev[b] and adj_deg[j] > 1 and prev[b] >= 0):
                if pick == 0:
                    return adj[j, c]
                pick -= 1
    m = deg[j]
    if alpha == 0.0:
        thr = u * total[j]
        k = 0
        for c in range(m):
            if cdf[j, c] <= thr:
                k += 1
        return nbr[j, min(k, m - 1)]
    top = -np.inf
    for c in range(m):
        w = log_base[j, c] - alpha * logy[b, nbr[j, c]]
        cum[c] = w
        top = max(top, w)
    acc = 0.0
    for c in range(m):
        acc += math.exp(cum[c] - top)
        cum[c] = acc
    thr = u * acc
    k = 0
    for c in range(m):
        if cum[c] <= thr:
            k += 1
    return nbr[j, min(k, m - 1)]


@njit(cache=True, nogil=True)  # Ray's threads in the actor's process take arrivals while it walks
def walk_tokens(theta, bar, logy, node, prev, n, arrived, rng, status, budget, call_hops, first,
                nbr, log_base, cdf, total, deg, adj, adj_deg, slot, xh, ky, inv_m, rows,
                gw, add_t, beta_t, alpha, base, lam, max_sq, project, polyak, stop, owned, every, rec):
    """Walk each token, from row `first` on (wrapping around), until it must stop: `status[b]` says why
    (CONTINUE: its `budget` of hops is spent, or the call's `call_hops` were walked before its turn, when
    `call_hops` > 0). Returns how many tokens had their turn."""
    v = np.empty(theta.shape[1])
    cum = np.empty(nbr.shape[1])
    num = logy.shape[1]
    count = node.shape[0]
    status[:] = CONTINUE
    walked = 0
    for i in range(count):
        if call_hops > 0 and walked >= call_hops:
            return i
        b = (first + i) % count
        hops = 0
        while True:
            if not arrived[b]:
                _arrive(b, theta, bar, logy, node, n, arrived, slot, xh, ky, inv_m, rows, gw, add_t, beta_t, lam, v)
                st = _after_arrival(b, theta, bar, n, max_sq, project, polyak, stop, every, rec)
                if st != CONTINUE:
                    status[b] = st
                    break
            if n[b] >= stop:
                status[b] = DONE
                break
            if hops >= budget:
                break
            u = next_uniform(rng, b)
            j = node[b]
            nxt = _next_agent(b, u, j, prev, logy, nbr, log_base, cdf, total, deg, adj, adj_deg, alpha, base, num, cum)
            prev[b] = j
            node[b] = nxt
            arrived[b] = False
            hops += 1
            if not owned[nxt]:
                status[b] = LEAVE
                break
        walked += hops
    return count
