"""SA-SRRW on Ray: the agent graph is partitioned over `WalkPartition` actors and tokens walk between them.

Each actor holds its agents' data blocks and kernel rows (core.srrw.SRRW.restrict) and runs the very
same `core.srrw.walk` as the single-process reference: inside its partition a token moves with no Ray
call; when the next agent belongs to another partition the actor hands the token straight to that
actor (`peer.receive.remote(token)`), never through the driver. A finished token is delivered to a
small async `_TokenSink` actor, whose `wait(key)` ObjectRef is all the driver waits on. Tokens are
checkpointed every N steps (JSON + .npy, atomic; core.srrw.save_token) and a run resumes from there.

Same seed ⇒ same node sequence and θ as `core.srrw.run_sa_srrw`, for any number of partitions.
Actors are spread over the cluster's nodes; on a multi-node cluster the checkpoint directory (and a
`BlockLoader`'s Parquet paths) must be on storage every node can read. A lost actor loses its tokens:
rerun with `resume=True` to continue from their last checkpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import ray

from core import store
from core.block_loader import BlockLoader
from core.errors import ConfigError, ShardwalkError
from core.io import read_json_sealed, write_json_sealed
from core.srrw import (
    CHECKPOINT,
    LEAVE,
    SRRW,
    SAResult,
    Schedule,
    Token,
    bind,
    checkpoint_hint,
    halo_mask,
    make_tokens,
    walk,
    walk_partition,
)
from core.token_store import load_checkpoint, save_checkpoint
from workers.autoconnect import ensure_ray

RUN_META = "run.json"


@ray.remote(num_cpus=0)
class _TokenSink:
    """Where finished tokens land; the driver holds one `wait(key)` ObjectRef per token."""

    def __init__(self) -> None:
        self._results: dict[int, tuple[Token | None, BaseException | None]] = {}
        self._events: dict[int, asyncio.Event] = {}

    def _event(self, key: int) -> asyncio.Event:
        return self._events.setdefault(key, asyncio.Event())

    async def deliver(self, key: int, token: Token | None, error: BaseException | None) -> None:
        self._results[key] = (token, error)
        self._event(key).set()

    async def wait(self, key: int) -> tuple[Token | None, BaseException | None]:
        await self._event(key).wait()
        return self._results.pop(key)


@ray.remote
class WalkPartition:
    """One partition of the agent graph: its kernel rows, its agents' data, and peers to hand tokens to."""

    def __init__(
        self,
        part: int,
        edges: np.ndarray,
        owner: np.ndarray,
        objective: Any,
        alpha: float,
        base: str,
        schedule: Schedule,
        stop: int,
        sink: Any,
        checkpoint_dir: str | None = None,
        checkpoint_every: int = 0,
        halo: int = 1,
    ) -> None:
        graph = nx.Graph()
        graph.add_edges_from(edges.tolist())
        chain = SRRW(graph, alpha, base)
        held = halo_mask(chain, owner == part, halo)
        mine = np.flatnonzero(held)
        self.chain = chain.restrict(mine)
        if isinstance(objective, BlockLoader):
            objective = objective.load([int(chain.nodes[i]) for i in mine])
            objective = objective.relabel({int(chain.nodes[i]): int(i) for i in mine})
        self.objective = objective
        self.owner, self.owned = owner, held
        self.schedule, self.stop, self.sink = schedule, stop, sink
        self.checkpoint_dir, self.checkpoint_every = checkpoint_dir, checkpoint_every
        self.peers: list[Any] = []
        self.steps_walked = 0
        self.busy_seconds = 0.0
        self.send_seconds = 0.0
        self.cpu_seconds = 0.0
        self.visits = 0

    def connect(self, peers: list[Any]) -> int:
        self.peers = peers
        return len(self.objective.blocks)

    def receive(self, tokens: list[Token]) -> None:
        """Walk each token while it stays here; pass the leavers on, one call per peer (cut edges),
        and deliver the finished ones. Batching the hand-offs of concurrent tokens amortises the cost
        of a Ray call; tokens are independent, so their trajectories do not change."""
        began, cpu = time.perf_counter(), time.process_time()
        outbox: dict[int, list[Token]] = {}
        for token in tokens:
            try:
                peer = self._advance(token)
            except Exception as exc:  # deliver every failure, so the driver never waits forever
                self.sink.deliver.remote(token.key, None, exc)
                continue
            if peer is None:
                self.sink.deliver.remote(token.key, token, None)
            else:
                token.handoffs += 1
                outbox.setdefault(peer, []).append(token)
        sent = time.perf_counter()
        for peer, batch in outbox.items():
            self.peers[peer].receive.remote(batch)
        now = time.perf_counter()
        self.send_seconds += now - sent
        self.busy_seconds += now - began
        self.cpu_seconds += time.process_time() - cpu  # CPU, unlike busy_seconds, is fair on a loaded machine
        self.visits += 1

    def _advance(self, token: Token) -> int | None:
        """Walk `token` here (checkpointing on the way); the partition it must move to, or None when done."""
        start = token.n
        every = self.checkpoint_every if self.checkpoint_dir else 0
        while True:
            status = walk(token, self.chain, self.objective, self.schedule, self.stop, self.owned, every)
            if status != CHECKPOINT:
                break
            save_checkpoint(self.checkpoint_dir, token)
        self.steps_walked += token.n - start
        if status == LEAVE:
            return int(self.owner[token.node])
        if self.checkpoint_dir:
            save_checkpoint(self.checkpoint_dir, token)
        return None

    def stats(self) -> dict[str, float]:
        return {"agents": float(self.owned.sum()), "steps_walked": float(self.steps_walked),
                "busy_seconds": self.busy_seconds, "send_seconds": self.send_seconds, "cpu_seconds": self.cpu_seconds,
                "visits": float(self.visits)}


def _run_meta(chain: SRRW, dim: int, seed: int, tokens: int, schedule: Schedule) -> dict[str, Any]:
    return {
        "alpha": chain.alpha, "base": chain.base, "agents": chain.num_nodes, "dim": dim, "seed": seed,
        "tokens": tokens, "a": schedule.a, "b": schedule.b, "lr": schedule.lr, "project": schedule.project,
        "polyak": schedule.polyak, "record_path": schedule.record_path, "record_every": schedule.record_every,
    }


def _initial_tokens(chain: SRRW, dim: int, schedule: Schedule, *, tokens: int, seed: int, theta0: Any,
                    start: Any, checkpoint_dir: str | None, resume: bool) -> list[Token]:
    """Fresh tokens, or the checkpointed ones when resuming a run with the same settings."""
    fresh = make_tokens(chain, dim, schedule, tokens=tokens, seed=seed, theta0=theta0, start=start)
    if not (resume and checkpoint_dir):
        return fresh
    meta_path = store.join(checkpoint_dir, RUN_META) if store.is_remote(checkpoint_dir) else Path(checkpoint_dir) / RUN_META
    expected = _run_meta(chain, dim, seed, tokens, schedule)
    exists = store.read_bytes(meta_path) is not None if store.is_remote(checkpoint_dir) else meta_path.is_file()
    if exists:
        found = read_json_sealed(meta_path, "checkpoint run record", checkpoint_hint(checkpoint_dir))
        diff = sorted(k for k in expected if found.get(k) != expected[k])
        if diff:
            raise ConfigError(f"{checkpoint_dir}: checkpoints were made with different settings ({', '.join(diff)})")
    loaded = [load_checkpoint(checkpoint_dir, k) for k in range(tokens)]
    return [tok if tok is not None else fresh[k] for k, tok in enumerate(loaded)]


HEALTH_CHECK_S = 5.0


def _await_tokens(waits: list[Any], actors: list[Any], timeout: float | None) -> list[Any]:
    """Wait for every token, checking the walker actors between waits.

    A partition lost with its node takes its tokens along and nothing would ever answer; its death
    surfaces here as RayActorError, which the DAG runner retries, and the retry resumes from the last
    token checkpoint.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        ready, _ = ray.wait(waits, num_returns=len(waits), timeout=HEALTH_CHECK_S)
        if len(ready) == len(waits):
            return ray.get(waits)
        with contextlib.suppress(ray.exceptions.GetTimeoutError):  # busy is fine; dead raises RayActorError
            ray.get([actor.stats.remote() for actor in actors], timeout=HEALTH_CHECK_S)
        if deadline is not None and time.monotonic() > deadline:
            raise ray.exceptions.GetTimeoutError(f"walk: tokens not back within {timeout} s")


def run_distributed_sa_srrw(
    objective: Any,
    graph: nx.Graph,
    *,
    steps: int,
    alpha: float = 0.0,
    a: float = 0.8,
    b: float = 0.9,
    base: str = "mhrw",
    tokens: int = 1,
    seed: int = 0,
    lr: float = 1.0,
    theta0: np.ndarray | None = None,
    start: int | None = None,
    project: float | None = None,
    polyak: bool = False,
    max_norm: float = 1e8,
    record_every: int = 0,
    record_path: bool = False,
    partitions: int = 2,
    parts: dict[int, int] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    dim: int | None = None,
    halo: int = 1,
    num_cpus: float = 0,
    timeout: float | None = None,
    partitioner: str = "kl",
) -> SAResult:
    """`core.srrw.run_sa_srrw` on `partitions` walker actors; the same arguments give the same result.

    `objective` is an in-memory objective (each actor is sent its share) or a `BlockLoader` (each actor
    reads its own agents' rows; then pass `dim`). `parts` overrides the agent → partition map.
    `halo` >= 0: each actor also keeps ghost copies of the agents within that many hops of its own,
    so a token crossing a cut edge is handed off only once it walks beyond them. `partitioner`: kl |
    louvain | range (core.srrw.walk_partition). More tokens or partitions than agents is a ConfigError.
    """
    ensure_ray()
    if not isinstance(halo, int) or halo < 0:
        raise ConfigError(f"halo must be an integer >= 0, got {halo!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
    if not isinstance(checkpoint_every, int) or checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every must be an integer >= 0, got {checkpoint_every!r}")
    chain = SRRW(graph, alpha, base)
    if isinstance(tokens, int) and tokens > chain.num_nodes:
        raise ConfigError(f"tokens={tokens} exceeds the number of agents ({chain.num_nodes}); use at most one token per agent")
    schedule = Schedule(a, b, lr, project, polyak, max_norm, record_every, record_path)
    if isinstance(objective, BlockLoader):
        if dim is None:
            raise ConfigError("run_distributed_sa_srrw: pass dim= with a BlockLoader")
    else:
        objective = bind(objective, chain)
        dim = objective.dim
    parts = walk_partition(chain, graph, partitions, seed=seed, method=partitioner) if parts is None else parts
    owner = np.asarray([parts[int(v)] for v in chain.nodes], dtype=np.int64)
    n_parts = int(owner.max()) + 1
    ckpt = str(checkpoint_dir) if checkpoint_dir is not None else None
    toks = _initial_tokens(chain, dim, schedule, tokens=tokens, seed=seed, theta0=theta0, start=start,
                           checkpoint_dir=ckpt, resume=resume)
    if ckpt:
        write_json_sealed(store.join(ckpt, RUN_META) if store.is_remote(ckpt) else Path(ckpt) / RUN_META,
                          _run_meta(chain, dim, seed, tokens, schedule))
    edges = np.asarray(list(graph.edges()), dtype=np.int64)
    sink = _TokenSink.remote()
    actors = []
    try:
        for p in range(n_parts):
            held = np.flatnonzero(halo_mask(chain, owner == p, halo))
            share = objective if isinstance(objective, BlockLoader) else objective.restrict(held)
            actors.append(
                WalkPartition.options(num_cpus=num_cpus, scheduling_strategy="SPREAD").remote(
                    p, edges, owner, share, chain.alpha, base, schedule, steps, sink, ckpt, checkpoint_every, halo
                )
            )
        ray.get([actor.connect.remote(actors) for actor in actors], timeout=timeout)
        waits = [sink.wait.remote(tok.key) for tok in toks]
        began = time.perf_counter()
        first: dict[int, list[Token]] = {}
        for tok in toks:
            first.setdefault(int(owner[tok.node]), []).append(tok)
        for p, batch in first.items():
            actors[p].receive.remote(batch)
        results = _await_tokens(waits, actors, timeout)
        seconds = time.perf_counter() - began
        busy = ray.get([actor.stats.remote() for actor in actors], timeout=timeout)
    finally:
        for actor in [*actors, sink]:
            ray.kill(actor)
    done = []
    for token, error in results:
        if error is not None:
            raise error if isinstance(error, ShardwalkError) else RuntimeError(f"walker failed: {error!r}")
        done.append(token)
    stats = {"walk_seconds": seconds, "handoffs": float(sum(t.handoffs for t in done)), "partitions": float(n_parts),
             "actor_busy_seconds": float(sum(b["busy_seconds"] for b in busy)),
             "actor_send_seconds": float(sum(b["send_seconds"] for b in busy)),
             "actor_cpu_seconds": float(sum(b["cpu_seconds"] for b in busy))}
    return SAResult(np.mean([t.theta for t in done], axis=0), done, stats)
