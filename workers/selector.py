"""SelectShard actors: select coresets from a sharded scores table without gathering it.

Each actor reads its part of the scores and answers the small-summary protocol of
core/coresets/single_process.py; each writes its part of every selection table. Nothing here imports torch, so a
selection actor starts in a fraction of a scoring actor's time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


class SelectShards:
    """The SelectShard actors of one scores table, one per part of it, killed on `close` (or leaving a `with`).

    Every selection on that table reuses them: each method and rate of a select stage, and each of β tuning's
    candidates and refits. An actor reads its part once and `prepare` rebuilds its selector per selection, so a
    stage starts one actor per part instead of one per part and selection call (~0.8 CPU-s each).
    """

    def __init__(self, scores_dir: str | Path, shards: int, *, num_cpus: float = 0) -> None:
        ensure_ray()
        self.actors = [SelectShard.options(num_cpus=num_cpus).remote(s)
                       for s in plan_shards(sink.readable(scores_dir), shards)]

    def __enter__(self) -> SelectShards:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []

    def select(self, selections: Sequence[dict[str, Any]], out_dir: str | Path, *, seed: int = 0
               ) -> dict[str, dict[str, Any]]:
        """Each selection, written as `out_dir/<name>/part-*.parquet` (see `select_distributed`)."""
        out: dict[str, dict[str, Any]] = {}
        tracker = progress.Tracker("select", len(selections), "selections")
        for sel in selections:
            name, plan = _plan_one(self.actors, sel, seed)
            written = ray.get([a.write.remote(plan, sink.parts_destination(Path(out_dir) / name)) for a in self.actors])
            sink.record(entry for _, entry in written)
            rows = sum(n for n, _ in written)
            if rows != plan.size:
                raise InvariantError(f"{name}: shards wrote {rows} rows, the plan selects {plan.size}")
            out[name] = {"rows": rows, **plan.info}
            tracker.advance()
        return out

    def ids(self, selections: Sequence[dict[str, Any]], *, seed: int = 0, holdout: Split | None = None
            ) -> list[np.ndarray]:
        """The ids of each selection (among the rows `holdout` leaves), nothing written."""
        out = []
        for sel in selections:
            _, plan = _plan_one(self.actors, sel, seed, holdout)
            out.append(np.sort(np.concatenate(ray.get([a.ids.remote(plan) for a in self.actors]))))
        return out


class SelectPools:
    """`SelectShards` per named table, each started on first use and all closed together: one select stage's
    tables (its scores, the knn_density scores) and every selection on them."""

    def __init__(self, tables: Mapping[str, str | Path | None], shards: int) -> None:
        self.tables, self.shards = dict(tables), shards
        self.pools: dict[str, SelectShards] = {}

    def __call__(self, table: str) -> SelectShards:
        if table not in self.pools:
            self.pools[table] = SelectShards(self.tables[table], self.shards)
        return self.pools[table]

    def __enter__(self) -> SelectPools:
        return self

    def __exit__(self, *exc: object) -> None:
        for pool in self.pools.values():
            pool.close()


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
    with SelectShards(scores_dir, shards, num_cpus=num_cpus) as pool:
        return pool.select(selections, out_dir, seed=seed)


def selection_ids(scores_dir: str | Path, shards: int, selections: Sequence[dict[str, Any]], *, seed: int = 0,
                  holdout: Split | None = None, num_cpus: float = 0) -> list[np.ndarray]:
    """The ids of each selection (as `select_distributed`, among the rows `holdout` leaves), nothing written."""
    with SelectShards(scores_dir, shards, num_cpus=num_cpus) as pool:
        return pool.ids(selections, seed=seed, holdout=holdout)


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
