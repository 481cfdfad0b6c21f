"""The walking state of SA-SRRW tokens: what travels between walker actors and what a checkpoint holds.

A token carries θ, the visit measure (as log y with x = c·y; log c is a function of the step n), the
current and previous agent, its own RNG stream (PCG64) and what it records. Between walker actors tokens
travel as a `TokenBatch`: a few contiguous arrays for all the tokens of one hand-off (pickled as one bytes
payload), never one Python object per token. On disk a token is JSON + .npy (shardwalk.core.srrw.token_store),
never pickle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shardwalk.core.errors import ConfigError
from shardwalk.core.srrw.chain import SRRW
from shardwalk.core.srrw.spec import Schedule, WalkSpec


@dataclass
class Token:
    """The walking state: small, picklable in transit, and saved as JSON + .npy (never pickle on disk)."""

    key: int
    theta: np.ndarray
    logy: list[float]  # log of the unnormalised visit measure y, x = c·y (a list: tokens compare with ==; an
    #                    array of the shared entries while `partial`)
    log_scale: float  # log c
    n: int  # steps taken (θ_n, x_n)
    node: int  # internal index of X_n (or of X_{n+1} when `arrived` is False)
    prev: int  # X_{n−1} (the non-backtracking walk needs it); −1 at the start
    arrived: bool  # False: X_{n+1} was drawn but its x/θ update is still due (at its owner)
    rng: np.random.Generator
    handoffs: int = 0  # times the token moved between walker actors (bookkeeping only)
    partial: bool = False  # logy holds only the walk's shared entries (in transit: shardwalk.core.srrw.shard)
    theta_bar: np.ndarray | None = None
    path: list[int] | None = None  # X_0, X_1, ... as internal indices (SRRW.nodes[i] is the agent id)
    curve_n: list[int] = field(default_factory=list)
    curve_theta: list[np.ndarray] = field(default_factory=list)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickle (Ray's transit between actors) as plain bytes and ints: no numpy buffers, no class
        state objects; this halves the cost of a hand-off and round-trips every float exactly."""
        return _unpack_token, (self.plain(),)

    def plain(self) -> tuple[Any, ...]:
        """The token as a tuple of plain values (`Token.from_plain` inverts it): what holds it in transit needs
        no import of this package to keep it (the walk's token sink)."""
        bitgen = self.rng.bit_generator
        return (
            self.key, self.n, self.node, self.prev, self.arrived, self.log_scale, self.handoffs, self.partial,
            type(bitgen).__name__, bitgen.state,
            self.theta.tobytes(), np.asarray(self.logy, dtype=np.float64).tobytes(),
            None if self.theta_bar is None else self.theta_bar.tobytes(), self.path,
            self.curve_n, np.asarray(self.curve_theta, dtype=np.float64).tobytes(),
        )

    @staticmethod
    def from_plain(packed: tuple[Any, ...]) -> Token:
        """The token `plain()` gave."""
        return _unpack_token(packed)

    def visit_measure(self) -> np.ndarray:
        """x_n, normalised (it sums to 1 by construction; renormalising only removes rounding)."""
        logy = np.asarray(self.logy, dtype=np.float64)
        x = np.exp(logy - logy.max())
        return x / x.sum()

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-able metadata, arrays) fully describing the token."""
        if self.partial:
            raise ValueError(f"token {self.key} holds only part of its visit measure; gather it first")
        meta = {
            "key": self.key, "n": self.n, "node": self.node, "prev": self.prev, "arrived": self.arrived,
            "log_scale": self.log_scale, "rng": self.rng.bit_generator.state,
            "has_theta_bar": self.theta_bar is not None, "has_path": self.path is not None,
            "handoffs": self.handoffs,
        }
        arrays = {"theta": self.theta, "logy": np.asarray(self.logy, dtype=np.float64),
                  "curve_n": np.asarray(self.curve_n, dtype=np.int64),
                  "curve_theta": np.asarray(self.curve_theta, dtype=np.float64).reshape(len(self.curve_n), len(self.theta))}
        if self.theta_bar is not None:
            arrays["theta_bar"] = self.theta_bar
        if self.path is not None:
            arrays["path"] = np.asarray(self.path, dtype=np.int64)
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Token:
        """The token `state()` described (KeyError/ValueError/TypeError on a malformed description)."""
        bitgen = bit_generator(meta["rng"]["bit_generator"])
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


# The bit generators a token may name: the ones numpy ships (tokens use PCG64). A checkpoint is data, so its
# name is looked up here, never with getattr on a module.
BIT_GENERATORS = {cls.__name__: cls for cls in (np.random.PCG64, np.random.PCG64DXSM, np.random.Philox,
                                                np.random.SFC64, np.random.MT19937)}


def bit_generator(name: Any) -> np.random.BitGenerator:
    """A fresh bit generator of the kind `name` (from BIT_GENERATORS; ValueError for any other name)."""
    if not isinstance(name, str) or name not in BIT_GENERATORS:
        raise ValueError(f"unknown RNG bit generator {str(name)[:80]!r} (known: {', '.join(sorted(BIT_GENERATORS))})")
    return BIT_GENERATORS[name](_SEED)


_SEED = np.random.SeedSequence(0)  # any seed: the state is overwritten; reusing one skips building a sequence


def _unpack_token(packed: tuple[Any, ...]) -> Token:
    (key, n, node, prev, arrived, log_scale, handoffs, partial, bitgen_name, bitgen_state, theta, logy, theta_bar,
     path, curve_n, curve_theta) = packed
    bitgen = bit_generator(bitgen_name)
    bitgen.state = bitgen_state
    measure = np.frombuffer(logy, dtype=np.float64)
    theta_arr = np.frombuffer(theta, dtype=np.float64).copy()
    curves = np.frombuffer(curve_theta, dtype=np.float64).reshape(len(curve_n), len(theta_arr))
    return Token(
        key=key, theta=theta_arr, logy=measure.copy() if partial else measure.tolist(), log_scale=log_scale,
        n=n, node=node, prev=prev, arrived=arrived, rng=np.random.Generator(bitgen), handoffs=handoffs,
        partial=partial, theta_bar=None if theta_bar is None else np.frombuffer(theta_bar, dtype=np.float64).copy(),
        path=path, curve_n=curve_n, curve_theta=list(curves.copy()),
    )


RNG_WORDS = 6  # a PCG64 stream as uint64 words: state (high, low), increment (high, low), has_uint32, uinteger
_LOW = (1 << 64) - 1


def rng_words(rng: np.random.Generator, key: int) -> list[int]:
    """The token's PCG64 stream as RNG_WORDS integers (the walk kernels draw from these words directly)."""
    state = rng.bit_generator.state
    if state.get("bit_generator") != "PCG64":
        raise ConfigError(f"token {key} draws from a {state.get('bit_generator')} stream; the walk needs PCG64 streams")
    s, inc = state["state"]["state"], state["state"]["inc"]
    return [s >> 64, s & _LOW, inc >> 64, inc & _LOW, state["has_uint32"], state["uinteger"]]


def set_rng_words(rng: np.random.Generator, words: np.ndarray) -> None:
    """Position a PCG64 generator at the stream state `words` (rng_words' inverse)."""
    w = [int(v) for v in words]
    rng.bit_generator.state = {"bit_generator": "PCG64", "state": {"state": (w[0] << 64) | w[1], "inc": (w[2] << 64) | w[3]},
                               "has_uint32": w[4], "uinteger": w[5]}


@dataclass
class TokenBatch:
    """Tokens in transit as arrays, row i one token: what a hand-off, a flush of an outbox, carries.

    `logy` holds each token's whole log-measure, or with `partial` only the walk's shared entries (the rest
    stays with the agents: shardwalk.core.srrw.shard). `records` (path, curve steps, curve θs per token) is present
    only when the walk records them; everything else is a numeric array, packed into one payload in transit
    whatever the batch's size.
    """

    key: np.ndarray  # int64
    n: np.ndarray  # int64
    node: np.ndarray  # int64
    prev: np.ndarray  # int64
    arrived: np.ndarray  # bool
    handoffs: np.ndarray  # int64
    log_scale: np.ndarray  # float64
    theta: np.ndarray  # (B, d) float64
    bar: np.ndarray | None  # (B, d) float64: Polyak averages, when kept
    logy: np.ndarray  # (B, M) float64
    rng: np.ndarray  # (B, RNG_WORDS) uint64
    partial: bool = False
    records: list[tuple[list[int] | None, list[int], list[np.ndarray]]] | None = None

    def __len__(self) -> int:
        return len(self.key)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickle (a hand-off's transit) as one bytes payload: Ray then handles one buffer per call,
        not one per array — each buffer costs the receiving actor ~0.1 ms to deserialise."""
        return _unpack_batch, self._packed()

    def _packed(self) -> tuple[tuple[int, int, int, bool, bool, bool], bytes, Any]:
        """(header, payload, records): the numeric arrays back to back; measure entries marked NaN (left as
        they were: shardwalk.core.srrw.shard.MeasureShard.changed_only) are left out, a bit mask says where."""
        ints = np.stack([self.key, self.n, self.node, self.prev, self.handoffs]) if len(self) else np.zeros((5, 0), np.int64)
        kept = ~np.isnan(self.logy) if self.partial else None
        sparse = kept is not None and not kept.all()
        if sparse:
            bits = np.zeros(_mask_bytes(kept.size) * 8, dtype=bool)
            bits[: kept.size] = kept.ravel()
            measure: tuple[np.ndarray, ...] = (np.packbits(bits), self.logy[kept])
        else:
            measure = (self.logy,)
        arrays = (ints.astype(np.int64, copy=False), self.arrived.astype(np.uint8), self.log_scale, self.theta,
                  *(() if self.bar is None else (self.bar,)), *measure, self.rng)
        header = (len(self), self.theta.shape[1], self.logy.shape[1], self.bar is not None, self.partial, sparse)
        return header, b"".join(np.ascontiguousarray(a).tobytes() for a in arrays), self.records

    @property
    def nbytes(self) -> int:
        """Bytes of the payload a hand-off ships (Ray's framing aside)."""
        return len(self._packed()[1])

    def row_bytes(self) -> np.ndarray:
        """Each row's share of the payload `_packed` ships, in bytes (the bit mask's padding aside)."""
        fixed = 8 * 5 + 1 + 8 + 8 * self.theta.shape[1] * (1 if self.bar is None else 2) + 8 * RNG_WORDS
        width = self.logy.shape[1]
        kept = (~np.isnan(self.logy)).sum(axis=1) if self.partial else np.full(len(self), width)
        sparse = self.partial and bool((kept < width).any())
        return fixed + 8.0 * kept + (width / 8 if sparse else 0.0)

    def fill(self, limit: int) -> list[TokenBatch]:
        """This batch as consecutive batches, each as many rows as fit `limit` payload bytes (the last one what
        is left; a row larger than that goes alone): whole calls first, so the fewest calls carry it."""
        sizes = np.cumsum(self.row_bytes())
        cuts, start, done = [], 0, 0.0
        while start < len(self):
            end = max(int(np.searchsorted(sizes, done + limit - 16, side="right")), start + 1)
            cuts.append(end)
            start, done = end, float(sizes[end - 1])
        return [self.select(np.arange(a, b)) for a, b in zip([0, *cuts[:-1]], cuts)] if len(cuts) > 1 else [self]

    @classmethod
    def from_tokens(cls, tokens: list[Token]) -> TokenBatch:
        """The tokens packed (their streams must be PCG64; partial tokens must all be partial)."""
        partial = {tok.partial for tok in tokens}
        if len(partial) > 1:
            raise ValueError("a batch holds whole tokens or partial tokens, not both")
        recorded = any(tok.path is not None or tok.curve_n for tok in tokens)
        bars = [tok.theta_bar for tok in tokens]
        return cls(
            key=np.array([tok.key for tok in tokens], dtype=np.int64), n=np.array([tok.n for tok in tokens], dtype=np.int64),
            node=np.array([tok.node for tok in tokens], dtype=np.int64),
            prev=np.array([tok.prev for tok in tokens], dtype=np.int64),
            arrived=np.array([tok.arrived for tok in tokens], dtype=bool),
            handoffs=np.array([tok.handoffs for tok in tokens], dtype=np.int64),
            log_scale=np.array([tok.log_scale for tok in tokens], dtype=np.float64),
            theta=np.array([tok.theta for tok in tokens], dtype=np.float64).reshape(len(tokens), -1),
            bar=None if tokens and bars[0] is None else np.array(bars, dtype=np.float64).reshape(len(tokens), -1),
            logy=np.array([np.asarray(tok.logy, dtype=np.float64) for tok in tokens]).reshape(len(tokens), -1),
            rng=np.array([rng_words(tok.rng, tok.key) for tok in tokens], dtype=np.uint64).reshape(len(tokens), RNG_WORDS),
            partial=partial == {True},
            records=[(tok.path, tok.curve_n, tok.curve_theta) for tok in tokens] if recorded else None,
        )

    def write_into(self, i: int, tok: Token) -> Token:
        """Row i's state into the Token object `tok` (its key must match); returns it."""
        tok.theta, tok.n, tok.node, tok.prev = self.theta[i].copy(), int(self.n[i]), int(self.node[i]), int(self.prev[i])
        tok.arrived, tok.handoffs, tok.log_scale = bool(self.arrived[i]), int(self.handoffs[i]), float(self.log_scale[i])
        tok.theta_bar = None if self.bar is None else self.bar[i].copy()
        tok.logy, tok.partial = (self.logy[i].copy(), True) if self.partial else (self.logy[i].tolist(), False)
        set_rng_words(tok.rng, self.rng[i])
        if self.records is not None:
            tok.path, tok.curve_n, tok.curve_theta = self.records[i]
        return tok

    def token(self, i: int) -> Token:
        """Row i as a new Token."""
        tok = Token(key=int(self.key[i]), theta=self.theta[i], logy=[], log_scale=0.0, n=0, node=0, prev=-1,
                    arrived=True, rng=np.random.Generator(bit_generator("PCG64")))
        return self.write_into(i, tok)

    def tokens(self) -> list[Token]:
        return [self.token(i) for i in range(len(self))]

    def select(self, rows: np.ndarray) -> TokenBatch:
        """The batch of the given rows (copies)."""
        rows = np.asarray(rows, dtype=np.int64)
        return TokenBatch(
            self.key[rows], self.n[rows], self.node[rows], self.prev[rows], self.arrived[rows], self.handoffs[rows],
            self.log_scale[rows], self.theta[rows], None if self.bar is None else self.bar[rows], self.logy[rows],
            self.rng[rows], self.partial, None if self.records is None else [self.records[i] for i in rows.tolist()])

    @classmethod
    def concat(cls, batches: list[TokenBatch]) -> TokenBatch:
        """One batch of the rows of `batches`, in order (the same kind of tokens: whole or partial)."""
        if len(batches) == 1:
            return batches[0]
        first = batches[0]
        records = None
        if any(b.records is not None for b in batches):
            records = [r for b in batches for r in (b.records or [(None, [], [])] * len(b))]
        return cls(*(np.concatenate([getattr(b, f) for b in batches]) for f in (
            "key", "n", "node", "prev", "arrived", "handoffs", "log_scale", "theta")),
            None if first.bar is None else np.concatenate([b.bar for b in batches]),
            np.concatenate([b.logy for b in batches]), np.concatenate([b.rng for b in batches]), first.partial, records)


def _mask_bytes(entries: int) -> int:
    """Bytes of a bit mask over `entries`, padded to whole uint64 words (the arrays after it stay aligned)."""
    return (entries + 63) // 64 * 8


def _unpack_batch(header: tuple[int, int, int, bool, bool, bool], payload: bytes,
                  records: list[tuple[list[int] | None, list[int], list[np.ndarray]]] | None) -> TokenBatch:
    """`TokenBatch.__reduce__`'s inverse: writable arrays over one copy of the payload."""
    rows, dim, width, has_bar, partial, sparse = header
    buf = bytearray(payload)
    at = 0

    def take(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        nonlocal at
        count = int(np.prod(shape))
        out = np.frombuffer(buf, dtype=dtype, count=count, offset=at).reshape(shape)
        at += count * np.dtype(dtype).itemsize
        return out

    ints, arrived, log_scale, theta = take((5, rows), np.int64), take((rows,), np.uint8), take((rows,), np.float64), take((rows, dim), np.float64)
    bar = take((rows, dim), np.float64) if has_bar else None
    if sparse:
        kept = np.unpackbits(take((_mask_bytes(rows * width),), np.uint8), count=rows * width).astype(bool).reshape(rows, width)
        logy = np.full((rows, width), np.nan)
        logy[kept] = take((int(kept.sum()),), np.float64)
    else:
        logy = take((rows, width), np.float64)
    rng = take((rows, RNG_WORDS), np.uint64)
    if at != len(buf):
        raise ValueError(f"a token batch's payload has {len(buf)} bytes; its header describes {at}")
    return TokenBatch(ints[0], ints[1], ints[2], ints[3], arrived.astype(bool), ints[4], log_scale, theta, bar, logy,
                      rng, partial, records)


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


def make_tokens(chain: SRRW, dim: int, schedule: Schedule, *, tokens: int = 1, seed: int = 0,
                theta0: np.ndarray | None = None, start: int | None = None) -> list[Token]:
    """The K fresh tokens of a run: the same in the reference and in every distributed layout."""
    theta0 = np.zeros(dim) if theta0 is None else np.asarray(theta0, dtype=np.float64)
    if theta0.shape != (dim,) or not np.isfinite(theta0).all():
        raise ConfigError(f"theta0 must be a finite vector of shape ({dim},), got shape {theta0.shape}")
    return [new_token(k, chain, theta0, rng, schedule, start) for k, rng in enumerate(token_streams(seed, tokens))]


def spec_tokens(chain: SRRW, dim: int, spec: WalkSpec) -> list[Token]:
    """The fresh tokens of the walk `spec` describes."""
    return make_tokens(chain, dim, spec.schedule, tokens=spec.tokens, seed=spec.seed,
                       theta0=spec.initial_theta(dim), start=spec.start)
