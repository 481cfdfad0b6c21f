"""SelectShard actors: select coresets from a sharded scores table without gathering it.

Each actor reads its part of the scores and answers the small-summary protocol of
core/coresets/single_process.py; each writes its part of every selection table. Nothing here imports torch, so a
selection actor starts in a fraction of a scoring actor's time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import ray

from shardwalk.core import progress
from shardwalk.core.coresets import single_process as coreset
from shardwalk.core.coresets.selection_names import check_method, selection_name
from shardwalk.core.data.schema import LABEL
from shardwalk.core.errors import DataError, InvariantError
from shardwalk.core.storage import sink
from shardwalk.core.storage.sources import ShardSpec, plan_shards, read_shard
from shardwalk.workers.autoconnect import ensure_ray

if TYPE_CHECKING:  # a type only: evaluation reads Parquet datasets, whose import pulls pandas (0.3 s per actor)
    from shardwalk.core.coresets.evaluation import Split


@ray.remote
class SelectShard:
    """Holds one part of a scores table and answers the selection protocol of core/coresets/single_process.py."""

    def __init__(self, spec: ShardSpec):
        self.spec, self.index, self.start = spec, spec.index, spec.start
        self.table: pa.Table | None = None
        self.selector: coreset.ShardSelector | None = None

    def prepare(self, score: str | None, seed: int, hard_high: bool, holdout: Split | None = None) -> None:
        """Build the selector for one (score, seed); my rows are read once, the score column validated here.

        `holdout` leaves out its validation rows (β tuning selects among the rest).
        """
        if self.table is None:  # read in a method, not __init__, so read errors surface typed
            self.table = read_shard(self.spec)
        table = self.table
        if holdout is not None:
            table = table.filter(pa.array(~holdout.validation_rows(table.column("id").to_numpy())))
        names = table.column_names
        if score is not None and score not in names:
            raise DataError(f"scores: missing score column '{score}'; found {names}")
        values = None if score is None else table.column(score).to_numpy(zero_copy_only=False)
        labels = table.column(LABEL).to_numpy() if LABEL in names else None
        self.selector = coreset.ShardSelector(
            table.column("id").to_numpy(), values, labels, seed=seed, hard_high=hard_high,
            row_offset=self.start,
        )

    def _prepared(self) -> coreset.ShardSelector:
        if self.selector is None:
            raise InvariantError("SelectShard used before prepare()")
        return self.selector

    def ask(self, name: str, kwargs: dict[str, Any]) -> Any:
        """One answer of the selection protocol (core/coresets/selection.py)."""
        return getattr(self._prepared(), name)(**kwargs)

    def ids(self, plan: coreset.Plan) -> np.ndarray:
        """My selected ids under `plan` (a candidate coreset: small, nothing written)."""
        return self._prepared().selected(plan.spec, plan.order, plan.threshold)

    def write(self, plan: coreset.Plan, out_dir: str) -> tuple[int, dict[str, Any]]:
        """Put my part of the selection table; returns its row count and manifest entry."""
        ids = self._prepared().selected(plan.spec, plan.order, plan.threshold)
        return len(ids), sink.put_parquet(coreset.selection_table(ids), out_dir, sink.PART.format(self.index))


def select_distributed(
    scores_dir: str | Path,
    shards: int,
    selections: Sequence[dict[str, Any]],
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_cpus: float = 0,
) -> dict[str, dict[str, Any]]:
    """Run each selection ({method, keep, score?, class_balanced?, beta?, hardest?, strata?, name?}) on
    `shards` actors that read their own part of the scores; each writes `out_dir/<name>/part-*.parquet`
    (`name` defaults to shardwalk.core.coresets.selection_names.selection_name, which shows an explicit β)."""
    ensure_ray()
    actors = [SelectShard.options(num_cpus=num_cpus).remote(s) for s in plan_shards(sink.readable(scores_dir), shards)]
    out: dict[str, dict[str, Any]] = {}
    tracker = progress.Tracker("select", len(selections), "selections")
    try:
        for sel in selections:
            name, plan = _plan_one(actors, sel, seed)
            written = ray.get([a.write.remote(plan, sink.parts_destination(Path(out_dir) / name)) for a in actors])
            sink.record(entry for _, entry in written)
            rows = sum(n for n, _ in written)
            if rows != plan.size:
                raise InvariantError(f"{name}: shards wrote {rows} rows, the plan selects {plan.size}")
            out[name] = {"rows": rows, **plan.info}
            tracker.advance()
    finally:
        for a in actors:
            ray.kill(a)
    return out


def selection_ids(scores_dir: str | Path, shards: int, selections: Sequence[dict[str, Any]], *, seed: int = 0,
                  holdout: Split | None = None, num_cpus: float = 0) -> list[np.ndarray]:
    """The ids of each selection (as `select_distributed`, among the rows `holdout` leaves), nothing written."""
    ensure_ray()
    actors = [SelectShard.options(num_cpus=num_cpus).remote(s) for s in plan_shards(sink.readable(scores_dir), shards)]
    try:
        out = []
        for sel in selections:
            _, plan = _plan_one(actors, sel, seed, holdout)
            out.append(np.sort(np.concatenate(ray.get([a.ids.remote(plan) for a in actors]))))
        return out
    finally:
        for a in actors:
            ray.kill(a)


def _plan_one(actors: list, sel: dict[str, Any], seed: int, holdout: Split | None = None) -> tuple[str, coreset.Plan]:
    sel = dict(sel)
    method, keep = sel.pop("method", None), sel.pop("keep", None)
    score, name = sel.pop("score", None), sel.pop("name", None)
    check_method(method, score)
    hard = coreset.is_hard_high(score, sel.pop("hard_high", None)) if score is not None else True
    ray.get([a.prepare.remote(score if method != "random" else None, seed, hard, holdout) for a in actors])

    def ask(name: str, **kwargs: Any) -> list:
        return ray.get([a.ask.remote(name, kwargs) for a in actors])

    plan = coreset.plan_selection(ask, method, keep, **sel)
    return name or selection_name(method, keep, score, bool(sel.get("class_balanced")), sel.get("beta")), plan
