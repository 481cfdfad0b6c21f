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
from shardwalk.core.srrw.chain import SRRW
from shardwalk.core.srrw.partition import halo_mask
from shardwalk.core.srrw.token import Token


def views(chain: SRRW, held: list[np.ndarray]) -> list[np.ndarray]:
    """Each actor's view (bool over agents): the agents it holds and their neighbours."""
    return [halo_mask(chain, h, 1) for h in held]


def shared_agents(view_masks: list[np.ndarray]) -> np.ndarray:
    """The agents in two or more views, sorted: the entries that travel with a token."""
    return np.flatnonzero(np.sum(view_masks, axis=0) >= 2)


class MeasureShard:
    """One actor's entries of every token's visit measure (its view), kept between the token's visits."""

    def __init__(self, view: np.ndarray, shared: np.ndarray) -> None:
        self.num_nodes = len(view)
        self.view = np.flatnonzero(view)
        self.shared = np.asarray(shared, dtype=np.int64)
        self.exclusive = np.setdiff1d(self.view, self.shared)  # entries no other actor reads
        self.kept: dict[int, np.ndarray] = {}

    def seed(self, key: int, logy: Any) -> None:
        """A token's measure at the start of the walk (every actor gets every token's)."""
        self.kept[key] = np.asarray(logy, dtype=np.float64)[self.view]

    def restore(self, tok: Token, row: np.ndarray) -> None:
        """Fill a batch row with the token's measure: the kept view entries, then the shared ones it carried."""
        kept = self.kept.pop(tok.key, None)
        if kept is None or len(tok.logy) != len(self.shared):
            raise ConfigError(f"token {tok.key} carries {len(tok.logy)} shared measure entries; this actor "
                              f"expects {len(self.shared)} and {'has no' if kept is None else 'has'} its own entries")
        row[self.view] = kept
        row[self.shared] = tok.logy
        tok.logy, tok.partial = [], False

    def park(self, tok: Token, row: np.ndarray) -> None:
        """Keep the row's view entries here; the token leaves with the shared entries only."""
        self.kept[tok.key] = row[self.view].copy()
        tok.logy, tok.partial = row[self.shared], True

    def exclusive_entries(self) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """(exclusive agent indices, each token's values there): this actor's part of `gather`."""
        pos = np.searchsorted(self.view, self.exclusive)
        return self.exclusive, {key: vals[pos] for key, vals in self.kept.items()}


def gather(tok: Token, shared: np.ndarray, parts: list[tuple[np.ndarray, dict[int, np.ndarray]]]) -> None:
    """Make a partial token whole again from the actors' exclusive entries (every agent is covered once)."""
    if not tok.partial:
        return
    full = np.full(sum(len(idx) for idx, _ in parts) + len(shared), np.nan)
    full[shared] = tok.logy
    for idx, values in parts:
        full[idx] = values[tok.key]
    tok.logy, tok.partial = full.tolist(), False
