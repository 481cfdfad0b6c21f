"""How a walker actor loads its own agents' data blocks straight from Parquet (so data never passes through the driver)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import networkx as nx
import pyarrow as pa
import pyarrow.compute as pc

from shardwalk.core.plan.sizing import walk_data_bytes
from shardwalk.core.srrw.agents import agent_blocks
from shardwalk.core.srrw.objectives import build_objective


@dataclass(frozen=True)
class BlockLoader:
    """The objective of some agents, read from a vectors dataset and an agent assignment (docs/design.md "SA-SRRW")."""

    vectors: str  # Parquet file or directory (the vectors contract, with `label`), validated by ingest
    assignment: str  # Parquet `node`, `id` table
    model: str = "logistic"
    lam: float = 1e-3
    intercept: bool = True
    binarize: int | None = None  # logistic on multi-class data: label >= binarize → 1
    classes: int | None = None

    def data_bytes(self, dim: int) -> int:
        """Bytes of every assigned row at θ's dimension `dim`, from the assignment's row count alone."""
        import pyarrow.dataset as pads  # deferred on purpose, as in `load`

        return walk_data_bytes(pads.dataset(self.assignment).count_rows(), dim)

    def load(self, agents: list[int]) -> Any:
        """The objective restricted to `agents` (keyed by agent id), read straight from Parquet."""
        # deferred on purpose: pyarrow.dataset imports pandas (~0.35 CPU-s), which a walker actor given its data
        # in memory never needs; every walker module imports this class
        import pyarrow.dataset as pads

        from shardwalk.core.storage.labelled import read_labelled

        assign = pads.dataset(self.assignment).to_table(filter=pc.field("node").isin(pa.array(agents, pa.int64())))
        ids, x, y = read_labelled(self.vectors, ids=assign.column("id").to_numpy(), binarize=self.binarize)
        holder = nx.Graph()
        holder.add_nodes_from(agents)
        blocks = agent_blocks(assign, ids, x, y, holder, where=self.assignment)
        return build_objective(self.model, blocks, lam=self.lam, intercept=self.intercept, classes=self.classes)
