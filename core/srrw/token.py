"""The walking state of one SA-SRRW token: what travels between walker actors and what a checkpoint holds.

A token carries θ, the visit measure (as log y with x = c·y; log c is a function of the step n), the
current and previous agent, its own RNG stream and what it records. Ray pickles it as plain bytes and
ints (`__reduce__`); on disk it is JSON + .npy (shardwalk.core.srrw.token_store), never pickle.
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
        bitgen = self.rng.bit_generator
        packed = (
            self.key, self.n, self.node, self.prev, self.arrived, self.log_scale, self.handoffs, self.partial,
            type(bitgen).__name__, bitgen.state,
            self.theta.tobytes(), np.asarray(self.logy, dtype=np.float64).tobytes(),
            None if self.theta_bar is None else self.theta_bar.tobytes(), self.path,
            self.curve_n, np.asarray(self.curve_theta, dtype=np.float64).tobytes(),
        )
        return _unpack_token, (packed,)

    def wire_bytes(self) -> int:
        """Bytes of the payload a hand-off carries (`__reduce__`'s arrays and fields; Ray's framing aside)."""
        packed = self.__reduce__()[1][0]
        return sum(len(v) if isinstance(v, bytes) else len(repr(v)) for v in packed)

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
