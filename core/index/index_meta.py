"""The top-level manifest of a sharded index (`index.json`) as a frozen value, not a bag of state.

The JSON keys are the on-disk contract of docs/design.md ("Persisted"): `to_json` writes exactly the keys
older versions wrote (`router` and `build_seconds` only when set), so saved indexes keep opening and a
re-save writes the same bytes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from shardwalk.core.errors import CorruptArtifactError
from shardwalk.core.index import hnsw


@dataclass(frozen=True)
class IndexMeta:
    """Layout, parameters and sizes of a sharded index; changed only through `dataclasses.replace`."""

    shards: int
    replicas: int
    partition: str
    space: str = "l2"
    dim: int | None = None
    params: hnsw.HnswParams | None = None
    router: dict[str, Any] | None = None
    shard_sizes: tuple[int, ...] = ()
    live: int = 0
    build_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The `index.json` payload (same keys as every earlier version wrote)."""
        out: dict[str, Any] = {
            "shards": self.shards, "replicas": self.replicas, "partition": self.partition, "space": self.space,
            "dim": self.dim, "params": asdict(self.params) if self.params is not None else None,
            "shard_sizes": list(self.shard_sizes), "live": self.live, "format": hnsw.FORMAT,
        }
        if self.router is not None:
            out["router"] = self.router
        if self.build_seconds is not None:
            out["build_seconds"] = self.build_seconds
        return out

    @classmethod
    def from_json(cls, payload: dict[str, Any], where: str = "index manifest") -> IndexMeta:
        """An `index.json` read by shardwalk.core.index.hnsw.read_index_manifest (which checked its format and keys)."""
        try:
            return cls(
                shards=int(payload["shards"]), replicas=int(payload.get("replicas", 1)), partition=payload["partition"],
                space=payload["space"], dim=int(payload["dim"]), params=hnsw.HnswParams(**payload["params"]),
                router=payload.get("router"), shard_sizes=tuple(int(s) for s in payload.get("shard_sizes", ())),
                live=int(payload.get("live", 0)), build_seconds=payload.get("build_seconds"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptArtifactError(f"{where}: bad index manifest ({type(exc).__name__}: {exc})") from None
