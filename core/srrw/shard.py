"""A token's visit measure sharded with the agents: each walker actor keeps its own entries of every token.

SA-SRRW's update x ← x + γ(δ_X − x) is a global decay (log c, a function of the step n) plus one increment
at the agent arrived at, so a token only ever writes the entry of the agent it stands on and reads the
entries of that agent's neighbours. An actor therefore needs, of every token, the entries of its *view*:
the agents it holds (own + halo) and their neighbours. An entry in one actor's view only is read and
written there alone and never travels; the *shared* entries (in two or more views) travel with the token,
written back into it whenever it leaves. So a crossing carries θ, the RNG state, the step and the shared
entries — not the whole measure — and the trajectory is unchanged: every entry an actor reads is current.
At the end, a token's full measure is its shared entries plus each actor's exclusive ones (`gather`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shardwalk.core.errors import ConfigError
from shardwalk.core.plan.sizing import Node, walk_token_bytes, walk_tokens_fit
from shardwalk.core.srrw.chain import SRRW
from shardwalk.core.srrw.partition import halo_mask
from shardwalk.core.srrw.spec import WalkerLayout
from shardwalk.core.srrw.token import RNG_WORDS, Token


def views(chain: SRRW, held: list[np.ndarray]) -> list[np.ndarray]:
    """Each actor's view (bool over agents): the agents it holds and their neighbours."""
    return [halo_mask(chain, h, 1) for h in held]


def shared_agents(view_masks: list[np.ndarray]) -> np.ndarray:
    """The agents in two or more views, sorted: the entries that travel with a token."""
    return np.flatnonzero(np.sum(view_masks, axis=0) >= 2)


class MeasureShard:
    """One actor's entries of every token's visit measure (its view), kept between the token's visits.

    Row `key` of `kept` holds token `key`'s view entries while the token is away (`present`); batches of
    tokens are restored into and parked from the resident rows by compiled copies.

    With `delta` (a walk of exactly two actors) a leaving token need carry only the shared entries it
    changed here (`changed_only`; the others are NaN, never a log-measure value): every shared entry lies in
    both views, and the peer's kept value of an entry the token did not change here is still current, since
    the token was nowhere else in between. `arrived` holds each token's shared entries as it arrived.
    """

    def __init__(self, view: np.ndarray, shared: np.ndarray, delta: bool = False) -> None:
        self.num_nodes = len(view)
        self.view = np.flatnonzero(view)
        self.shared = np.asarray(shared, dtype=np.int64)
        self.exclusive = np.setdiff1d(self.view, self.shared)  # entries no other actor reads
        self.kept = np.zeros((0, len(self.view)))
        self.present = np.zeros(0, dtype=bool)
        self.arrived = np.zeros((0, len(self.shared))) if delta else None

    def blank(self) -> MeasureShard:
        """An empty shard of the same view and shared entries (a warm-up's scratch copy)."""
        view = np.zeros(self.num_nodes, dtype=bool)
        view[self.view] = True
        return MeasureShard(view, self.shared, self.arrived is not None)

    def _reserve(self, keys: int) -> None:
        if keys > len(self.present):
            cap = max(keys, 2 * len(self.present))
            kept = np.zeros((cap, len(self.view)))
            kept[: len(self.kept)] = self.kept
            present = np.zeros(cap, dtype=bool)
            present[: len(self.present)] = self.present
            self.kept, self.present = kept, present
            if self.arrived is not None:
                arrived = np.zeros((cap, len(self.shared)))
                arrived[: len(self.arrived)] = self.arrived
                self.arrived = arrived

    def seed(self, key: int, logy: Any) -> None:
        """A token's measure at the start of the walk (every actor gets every token's)."""
        self.seed_all(np.asarray(logy, dtype=np.float64)[None, :], np.array([key]))

    def seed_all(self, measures: np.ndarray, keys: np.ndarray | None = None) -> None:
        """Tokens' measures at the start of the walk, one row each (keys 0..K−1 unless given)."""
        keys = np.arange(len(measures)) if keys is None else np.asarray(keys, dtype=np.int64)
        self._reserve(int(keys.max()) + 1 if len(keys) else 0)
        self.kept[keys] = np.asarray(measures, dtype=np.float64)[:, self.view]
        self.present[keys] = True
        if self.arrived is not None:
            self.arrived[keys] = np.asarray(measures, dtype=np.float64)[:, self.shared]

    def check(self, keys: np.ndarray, carried: int) -> None:
        """ConfigError unless these tokens carry this walk's shared entries and their own entries are here."""
        away = (keys >= len(self.present)) | (keys < 0)
        away[~away] = ~self.present[keys[~away]]
        if carried != len(self.shared) or away.any():
            key = int(keys[np.flatnonzero(away)[0]]) if away.any() else int(keys[0])
            raise ConfigError(f"token {key} carries {carried} shared measure entries; this actor expects "
                              f"{len(self.shared)} and {'has no' if away.any() else 'has'} its own entries")

    def restore(self, keys: np.ndarray, logy: np.ndarray, rows: np.ndarray, carried: np.ndarray) -> None:
        """Fill resident rows with tokens' measures: the kept view entries, then the shared ones they carried."""
        from shardwalk.core.srrw import compiled  # numba: loaded by the walks that shard

        self.check(keys, carried.shape[1])
        keys, rows = np.asarray(keys, dtype=np.int64), np.asarray(rows, dtype=np.int64)
        compiled.put_columns(self.kept, keys, self.view, logy, rows)
        compiled.put_columns(np.ascontiguousarray(carried, dtype=np.float64), np.arange(len(rows)), self.shared, logy, rows)
        self.present[keys] = False
        if self.arrived is not None:
            compiled.take_columns(logy, rows, self.shared, self.arrived, keys)

    def park(self, keys: np.ndarray, logy: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Keep the rows' view entries here; returns the shared entries the tokens leave with."""
        from shardwalk.core.srrw.compiled import take_columns

        keys, rows = np.asarray(keys, dtype=np.int64), np.asarray(rows, dtype=np.int64)
        self._reserve(int(keys.max()) + 1 if len(keys) else 0)
        take_columns(logy, rows, self.view, self.kept, keys)
        self.present[keys] = True
        carried = np.empty((len(rows), len(self.shared)))
        take_columns(logy, rows, self.shared, carried, np.arange(len(rows)))
        return carried

    def changed_only(self, keys: np.ndarray, carried: np.ndarray) -> np.ndarray:
        """The carried shared entries with NaN where the token left them as it arrived here (`delta` walks)."""
        from shardwalk.core.srrw.compiled import unchanged_to_nan

        carried = np.ascontiguousarray(carried, dtype=np.float64)
        out = np.empty_like(carried)
        unchanged_to_nan(carried, self.arrived, np.asarray(keys, dtype=np.int64), out)
        return out

    def exclusive_entries(self, keys: list[int] | None = None) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """(exclusive agent indices, each token's values there): this actor's part of `gather`, for the tokens
        `keys` (None: every token whose entries are here). A token away from this actor has its entries here
        unchanged since it left, so they are current wherever the token is."""
        pos = np.searchsorted(self.view, self.exclusive)
        keys = np.flatnonzero(self.present).tolist() if keys is None else [int(k) for k in keys]
        away = [k for k in keys if not (0 <= k < len(self.present) and self.present[k])]
        if away:
            raise ValueError(f"token {away[0]}'s measure entries are not kept here (the token is resident or unknown)")
        return self.exclusive, {key: self.kept[key, pos] for key in keys}


def token_bytes_on_actor(chain: SRRW, layout: WalkerLayout, owner: np.ndarray, dim: int) -> int:
    """Bytes one token takes on the walker actor with the largest view (`walk_token_bytes`): all agents'
    entries when replicated; partitioned, the view's entries, plus with exactly two actors the shared entries
    as the token arrived (`MeasureShard.arrived`). A stream is RNG_WORDS words: no uniforms are pre-drawn."""
    if layout.replicate:
        return walk_token_bytes(chain.num_nodes, dim, RNG_WORDS)
    parts = int(owner.max()) + 1
    seen = views(chain, [halo_mask(chain, owner == p, layout.halo) for p in range(parts)])
    baseline = len(shared_agents(seen)) if parts == 2 else 0
    return walk_token_bytes(max(int(v.sum()) for v in seen), dim, RNG_WORDS, baseline)


def check_tokens_fit(chain: SRRW, tokens: int, layout: WalkerLayout, owner: np.ndarray, data_bytes: int, dim: int,
                     nodes: list[Node]) -> None:
    """ConfigError when a partition has no agents, or naming how many tokens fit when the walker actors on
    `nodes` cannot hold `tokens` of them (every token may gather on one actor, beside its share of the data)."""
    parts = int(owner.max()) + 1
    empty = sorted(set(range(parts)) - set(np.asarray(owner).tolist()))
    if empty:
        raise ConfigError(f"partition(s) {empty} of {parts} have no agents; number the partitions 0..P-1 without gaps")
    held = [halo_mask(chain, owner == p, layout.halo) for p in range(parts)]
    actors = min(layout.partitions, tokens) if layout.replicate else parts
    share = data_bytes if layout.replicate else int(data_bytes * max(float(h.mean()) for h in held))
    per_token = token_bytes_on_actor(chain, layout, owner, dim)
    fit = walk_tokens_fit(per_token, share, actors, nodes)
    if fit is not None and tokens > fit:
        raise ConfigError(f"tokens={tokens} do not fit the walker actors' memory: each token takes "
                          f"{per_token:,} bytes on an actor; at most {fit} tokens fit")


def gather(tok: Token, shared: np.ndarray, parts: list[tuple[np.ndarray, dict[int, np.ndarray]]]) -> None:
    """Make a partial token whole again from the actors' exclusive entries (every agent is covered once)."""
    if not tok.partial:
        return
    full = np.full(sum(len(idx) for idx, _ in parts) + len(shared), np.nan)
    full[shared] = tok.logy
    for idx, values in parts:
        full[idx] = values[tok.key]
    tok.logy, tok.partial = full.tolist(), False
