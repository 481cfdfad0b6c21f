"""SA-SRRW on Ray: the agent graph is partitioned over `WalkPartition` actors and tokens walk between them.

Each actor holds its agents' data blocks (plus ghost copies within `halo` hops) and runs the very same
vectorised kernel as the single-process reference (shardwalk.core.srrw.kernel): the tokens resident on its agents
advance together in lock step, with no Ray call. A token whose next agent lies outside the actor's
agents is handed straight to the owning actor, never through the driver: leavers wait in a per-peer
outbox, flushed by size or age as one `TokenBatch` (a few contiguous arrays for all its tokens, pickled
as one bytes payload) over a direct link to the peer (shardwalk.workers.peer_link: an authenticated socket, not a
Ray call, which costs the two actors ~3 ms of CPU; `peer.receive.remote(batch)` with
`WalkerLayout(links=False)`). The actor is threaded: the walk runs on a thread of its own, and hand-offs arrive on
the links' reader threads (or Ray's task threads) into a lock-protected inbox while it walks (the compiled
kernel releases the GIL), joining the resident tokens between kernel calls. A
finished token is delivered to a small async `TokenSink` actor (shardwalk.workers.token_sink), whose `wait(key)`
ObjectRef is all the driver waits on. Tokens are checkpointed every N steps (shardwalk.core.srrw.token_store) and a run resumes from there;
a partitioned walk's checkpoint gathers the token's measure entries from the other actors first (whole tokens
on disk, measures sharded in transit; with two actors a crossing carries only the entries the token changed).

When every actor's copy of all agents' data fits its node (`replicate = "auto"`, the default), the actors
instead all hold every agent and split the tokens: nothing is ever handed off, so throughput grows with
actors up to the number of tokens. Partitioning is for data that no single actor can hold.

Same seed ⇒ same node sequence and θ as `shardwalk.core.srrw.run_sa_srrw`, for any partitioning. Actors are spread
over the cluster's nodes; on a multi-node cluster the checkpoint directory (and a `BlockLoader`'s Parquet
paths) must be on storage every node can read. A lost actor loses its tokens: rerun with `resume=True`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import ray

from shardwalk.core import progress
from shardwalk.core.errors import ConfigError, InvariantError, ShardwalkError
from shardwalk.core.srrw import SRRW, SAResult, Token, WalkerLayout, WalkSpec, bind, halo_mask, walk_partition
from shardwalk.core.srrw.agents import check_parts, cut_edge_fraction
from shardwalk.core.srrw.block_loader import BlockLoader
from shardwalk.core.srrw.kernel import (
    CHECKPOINT,
    DONE,
    FAILED,
    LEAVE,
    Resident,
    WalkContext,
    advance_batch,
    warm_up,
)
from shardwalk.core.srrw.partition import choose_halo
from shardwalk.core.srrw.shard import MeasureShard, check_tokens_fit, gather, shared_agents, views
from shardwalk.core.srrw.spec import RUN_OPTIONS, record_differences, resume_record, split_settings
from shardwalk.core.srrw.token import TokenBatch, spec_tokens
from shardwalk.core.srrw.token_store import checkpoint_hint, load_token, save_token
from shardwalk.core.srrw.wire import Expect, decode, encode
from shardwalk.core.storage import store
from shardwalk.core.storage.store import read_json_sealed, write_json_sealed
from shardwalk.workers.autoconnect import ensure_ray
from shardwalk.workers.cluster import cluster_nodes
from shardwalk.workers.peer_link import LinkEnd
from shardwalk.workers.token_sink import TokenSink

__all__ = ["RUN_META", "BlockLoader", "WalkPartition", "run_distributed_sa_srrw"]

RUN_META = "checkpoint.json"  # the checkpoints' settings record (not the DAG's run record, runs/<id>/run.json)
EARLIER_RUN_META = "run.json"  # its name before: such checkpoints are not resumed, the walk starts over (CHANGELOG)
COMPILED_CHUNK = 4096  # at most this many hops per token per compiled kernel call (≈ 4 ms per token)
SLICE_HOPS = 16384  # hops per compiled kernel call at most, the resident tokens taking turns (≈ 12 ms between inbox looks)
MIN_HOPS_PER_TOKEN = 64
# A hand-off call costs the two actors ~2.8 ms of CPU (Ray's send and task dispatch; py-spy, issue 28), far
# more than its tokens' bytes, so a peer's outbox is held while this actor still walks tokens and sent as one
# call when: this actor has nothing left to walk; the peer's backlog (tokens resident or queued there, as its
# last batch reported) is below STARVING_SHARE of them, so it would soon idle; the outbox holds FLUSH_SHARE of the
# walk's tokens per actor; or its oldest token waited FLUSH_AGE_S.
FLUSH_AGE_S = 0.2
FLUSH_SHARE = 0.5  # of the walk's tokens per actor (0: as many tokens as are resident here)
STARVING_SHARE = 0.125  # of the walk's tokens per actor
BYTES_SAMPLE_EVERY = 16  # payload bytes per crossing are summed over every 16th hand-off call
# Ray ships a call's arguments inline up to 100 KiB (its max_direct_call_object_size); a larger one goes
# through the object store, which costs the two actors ~2.0 ms of CPU per call against ~0.9 ms just below it
# (bench_handoff_calls, threaded receiver). So an outbox larger than this is sent as several calls.
INLINE_ARG_BYTES = 96 * 1024
# Ray's task threads per walker actor: hand-offs from every peer, a peer's checkpoint fetch and the driver's
# stats calls run beside the walking thread (which is the actor's own, not one of these)
TASK_THREADS = 4


@ray.remote(max_concurrency=TASK_THREADS)
class WalkPartition:
    """One partition of the agent graph: its data, the resident tokens, and peers to hand tokens to.

    Threaded, not async: `receive` and `exclusive_of` run on Ray's task threads, the walk on `self.walker`;
    `self.lock` guards what both sides touch (the inbox, the re-admissions, the counts)."""

    def __init__(self, part: int, edges: np.ndarray, owner: np.ndarray, objective: Any, spec: WalkSpec,
                 layout: WalkerLayout, sink: Any, checkpoint_dir: str | None = None,
                 shared: np.ndarray | None = None) -> None:
        graph = nx.Graph()
        graph.add_edges_from(edges.tolist())
        chain = SRRW(graph, spec.alpha, spec.base)
        held = halo_mask(chain, owner == part, layout.halo)
        mine = np.flatnonzero(held)
        if isinstance(objective, BlockLoader):
            objective = objective.load([int(chain.nodes[i]) for i in mine])
            objective = objective.relabel({int(chain.nodes[i]): int(i) for i in mine})
        every = layout.checkpoint_every if checkpoint_dir else 0
        self.ctx = WalkContext(chain, objective, spec.schedule, spec.steps, held, every)
        self.chunk = layout.chunk
        # two actors: a leaving token carries only the shared entries it changed here (MeasureShard.changed_only)
        self.shard = None if shared is None else MeasureShard(views(chain, [held])[0], shared, delta=int(owner.max()) == 1)
        warm_up(self.ctx, objective.dim, self.shard)
        self.resident = Resident(objective.dim, chain.num_nodes, spec.schedule.polyak, self.shard)
        self.part, self.owner, self.sink, self.checkpoint_dir = part, owner, sink, checkpoint_dir
        self.lock, self.wake = threading.Lock(), threading.Event()
        self.inbox: list[TokenBatch] = []
        self.readmit: list[TokenBatch] = []  # checkpointed here, walking on here (not arrivals from a peer)
        self.saver = ThreadPoolExecutor(1, thread_name_prefix="walk-checkpoint")  # sharded tokens gathering entries
        self.walker: threading.Thread | None = None
        self.failed: list[str] = []  # why the walk thread stopped, if it did (`stats` raises it)
        self.admitted = np.zeros(spec.tokens, dtype=np.int64)  # token key -> its step count when it joined
        self.peers: list[Any] = []
        self.outbox: dict[int, list[TokenBatch]] = {}  # peer -> tokens bound for it, sent by size or age
        self.outbox_since: dict[int, float] = {}
        self.peer_backlog: dict[int, int] = {}  # peer -> tokens resident or queued there, as its last batch said
        self.tokens_total = spec.tokens
        self.counts = {"steps_walked": 0, "chunks": 0, "calls_out": 0, "tokens_out": 0, "calls_in": 0,
                       "bytes_sampled": 0, "tokens_sampled": 0, "tokens_per_call": 0}
        self.kernel_cpu = self.admit_cpu = self.idle = 0.0
        self.idle_at_first_done: float | None = None  # idle seconds before this actor finished its first token
        self.cpu_start = time.process_time()
        self.links: LinkEnd | None = None

    def listen(self, authkey: bytes, peers: int) -> tuple[str, int]:
        """Open this actor's end of the direct hand-off links to its `peers` (before `connect`); returns its address."""
        width = self.ctx.chain.num_nodes if self.shard is None else len(self.shard.shared)
        expect = Expect(self.ctx.objective.dim, width, self.shard is not None, self.tokens_total,
                        self.ctx.chain.num_nodes, peers + 1)
        self.links = LinkEnd(authkey, lambda message: self._arrive(*decode(message, expect)), self.failed, expected=peers)
        return self.links.address

    def connect(self, peers: list[Any], measures: np.ndarray | None = None,
                addresses: list[tuple[str, int]] | None = None) -> int:
        """Learn the peers (and, sharded, every token's starting measure; with links, where each listens) and
        start walking whatever arrives."""
        self.peers = peers
        if self.links is not None and addresses is not None:
            for p, address in enumerate(addresses):
                if p != self.part:
                    self.links.open(p, address)  # a peer it cannot reach gets its tokens by Ray calls (`send`)
        if self.shard is not None:
            self.shard.seed_all(measures)
        if self.walker is None:
            self.walker = threading.Thread(target=_guarded(self._run, self.failed), name="walk", daemon=True)
            self.walker.start()
        return len(self.ctx.objective.blocks)

    @ray.method(num_returns=0)  # fire and forget: no return object to create, reply with and release
    def receive(self, batch: TokenBatch, sender: int = -1, backlog: int = 0) -> None:
        """Tokens handed over by a peer (or the driver) join the resident ones before the next kernel call;
        `backlog` is how many tokens the sending peer still had to walk."""
        self._arrive(batch, sender, backlog)

    def _arrive(self, batch: TokenBatch, sender: int, backlog: int) -> None:
        """A batch in (a Ray call's or a link's); a short sender gets its outbox back at once."""
        with self.lock:
            if sender >= 0:
                self.peer_backlog[sender] = backlog
            self.inbox.append(batch)
            self.counts["calls_in"] += 1
            short = sender >= 0 and urgent(backlog, 0.0, self.tokens_total / max(len(self.peers), 1))
            answer = self.outbox.pop(sender, None) if short else None
            if answer:
                del self.outbox_since[sender]
        self.wake.set()
        if answer:  # the peer runs short: its tokens go now, not when this actor's kernel call ends
            for part in TokenBatch.concat(answer).fill(INLINE_ARG_BYTES):
                self._send(sender, part)

    def _run(self) -> None:
        """Walk while tokens are resident; sleep until a hand-off (or a re-admitted checkpoint) arrives."""
        while True:
            if self.inbox or self.readmit:
                cpu = time.thread_time()
                self._admit()
                self.admit_cpu += time.thread_time() - cpu
            if not len(self.resident):
                self._flush(everything=True)
                self.wake.clear()
                idle = time.perf_counter()
                if not (self.inbox or self.readmit):  # an arrival after clear() sets it again
                    self.wake.wait()
                self.idle += time.perf_counter() - idle
                continue
            self.counts["tokens_per_call"] += len(self.resident)
            cpu = time.thread_time()
            try:
                stopped, statuses, errors = advance_batch(self.resident, self.ctx, self._budget(),
                                                          0 if self.chunk else SLICE_HOPS)
            except Exception as exc:  # an unexpected failure: every resident token reports it
                stopped = self.resident.take_batch(np.arange(len(self.resident)), self.ctx.tables)
                statuses, errors = [FAILED] * len(stopped), [exc] * len(stopped)
            self.counts["chunks"] += 1
            self._dispatch(stopped, statuses, errors)
            self.kernel_cpu += time.thread_time() - cpu

    def _budget(self) -> int:
        """Work per kernel call: `chunk`, or a slice of ≈ SLICE_HOPS hops shared by the resident tokens."""
        if self.chunk:
            return self.chunk
        if not self.ctx.compiled:
            return 1
        return max(MIN_HOPS_PER_TOKEN, min(COMPILED_CHUNK, SLICE_HOPS // len(self.resident)))

    def _admit(self) -> None:
        """Arrived batches join the resident tokens; a token this walk cannot take is reported, not lost."""
        with self.lock:
            readmit, self.readmit = self.readmit, []
            batches, self.inbox = self.inbox, []
        for batch in readmit:  # what the peer holds of its measure is unchanged by a checkpoint here
            before = None if self.shard is None or self.shard.arrived is None else self.shard.arrived[batch.key].copy()
            self.resident.add_batch(batch, self.ctx.tables)
            self.admitted[batch.key] = batch.n
            if before is not None:
                self.shard.arrived[batch.key] = before
        for batch in batches:
            try:
                self.resident.add_batch(batch, self.ctx.tables)
                self.admitted[batch.key] = batch.n
            except Exception:
                for i in range(len(batch)):
                    one = batch.select(np.array([i]))
                    try:
                        self.resident.add_batch(one, self.ctx.tables)
                        self.admitted[one.key] = one.n
                    except Exception as exc:
                        self.sink.deliver.remote(int(one.key[0]), None, exc)

    def _dispatch(self, stopped: TokenBatch | None, statuses: list[str], errors: list[Exception | None]) -> None:
        """Leavers into their owners' outboxes, checkpoints saved, finished tokens delivered; outboxes flushed."""
        if stopped is not None:
            self.counts["steps_walked"] += int((stopped.n - self.admitted[stopped.key]).sum())
            leave = np.array([status == LEAVE for status in statuses])
            if leave.any():
                self._post(stopped, np.flatnonzero(leave))
            for i in np.flatnonzero(~leave).tolist():
                self._finish(stopped, i, statuses[i], errors[i])
        self._flush(everything=False)

    def _post(self, stopped: TokenBatch, rows: np.ndarray) -> None:
        """Leaving tokens into the outbox of the peer owning the agent each stands at."""
        now = time.monotonic()
        stopped.handoffs[rows] += 1
        peers = self.owner[stopped.node[rows]]
        for peer in np.unique(peers).tolist():
            going = rows[peers == peer]
            leaving = stopped if len(going) == len(stopped) else stopped.select(going)  # all of them: no copy
            if self.shard is not None and self.shard.arrived is not None:
                leaving.logy = self.shard.changed_only(leaving.key, leaving.logy)
            with self.lock:
                self.outbox.setdefault(peer, []).append(leaving)
                self.outbox_since.setdefault(peer, now)

    def _finish(self, stopped: TokenBatch, i: int, status: str, error: Exception | None) -> None:
        """A token that stopped here for good (DONE, FAILED) or for a checkpoint (then it walks on)."""
        if status in (CHECKPOINT, DONE) and self.checkpoint_dir and self.shard is not None:
            one = stopped.select(np.array([i]))
            self.saver.submit(_guarded(lambda: self._save_whole(one, status), self.failed))  # as the walk thread
            return
        tok = stopped.token(i)
        try:
            if status in (CHECKPOINT, DONE) and self.checkpoint_dir:
                save_token(self.checkpoint_dir, tok)
        except Exception as exc:
            status, error = FAILED, exc
        if status == CHECKPOINT:
            with self.lock:
                self.inbox.append(stopped.select(np.array([i])))
        else:
            self._delivered()
            self.sink.deliver.remote(tok.key, tok.plain() if status == DONE else None, error)

    def _delivered(self) -> None:
        if self.idle_at_first_done is None:
            self.idle_at_first_done = self.idle

    def _save_whole(self, one: TokenBatch, status: str) -> None:
        """Checkpoint (or finish) a token whose measure is sharded, on the checkpoint thread: the entries only
        other actors hold are fetched from them — they cannot change while the token is here — and the whole
        token is saved, the same file as an unsharded walk's; meanwhile the token waits, the others walk on."""
        key, tok, error = int(one.key[0]), None, None
        try:
            others = [peer.exclusive_of.remote([key]) for p, peer in enumerate(self.peers) if p != self.part]
            parts = [self.shard.exclusive_entries([key]), *ray.get(others)]
            tok = one.token(0)
            gather(tok, self.shard.shared, parts)
            save_token(self.checkpoint_dir, tok)
        except Exception as exc:
            status, error = FAILED, exc
        if status == CHECKPOINT:
            with self.lock:
                self.readmit.append(one)
            self.wake.set()
        else:
            self._delivered()
            self.sink.deliver.remote(key, tok.plain() if status == DONE else None, error)

    def exclusive_of(self, keys: list[int]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """This actor's exclusive entries of these tokens' measures (a peer checkpoints one of them)."""
        return self.shard.exclusive_entries(keys)

    def _flush(self, everything: bool) -> None:
        """Send each peer's outbox when due (FLUSH_AGE_S, FLUSH_SHARE, STARVING_SHARE above) or `everything`:
        `.remote` returns at once, so sending never blocks. A call carries at most INLINE_ARG_BYTES; an outbox sent
        because it is full goes as full calls only, the tail of fewer than FLUSH_SHARE tokens waiting for more (a
        call costs the actors the same ~3 ms of CPU whatever it carries), while an urgent one goes whole."""
        now = time.monotonic()
        share = self.tokens_total / max(len(self.peers), 1)
        for peer in list(self.outbox):
            with self.lock:  # `receive` may send a short peer its outbox meanwhile
                batches = self.outbox.get(peer, [])
                waiting = sum(len(batch) for batch in batches)
                backlog, age = self.peer_backlog.get(peer, share), now - self.outbox_since.get(peer, now)
                if not batches or not (everything or flush_due(waiting, len(self.resident), backlog, age, share)):
                    continue
                del self.outbox[peer], self.outbox_since[peer]
            calls = TokenBatch.concat(batches).fill(INLINE_ARG_BYTES)
            if len(calls) > 1 and len(calls[-1]) < FLUSH_SHARE * share and not (everything or urgent(backlog, age, share)):
                with self.lock:
                    self.outbox.setdefault(peer, []).insert(0, calls.pop())
                    self.outbox_since.setdefault(peer, now)
            for batch in calls:
                self._send(peer, batch)

    def _send(self, peer: int, batch: TokenBatch) -> None:
        """One hand-off call (from the walk thread, or from `receive` answering a short peer); it tells the peer
        how many tokens this actor still has to walk."""
        with self.lock:
            sample = self.counts["calls_out"] % BYTES_SAMPLE_EVERY == 0  # payload size, on a sample of calls
            self.peer_backlog[peer] = self.peer_backlog.get(peer, 0) + len(batch)  # till it reports again
            self.counts["calls_out"] += 1
            self.counts["tokens_out"] += len(batch)
            backlog = len(self.resident) + sum(len(b) for b in self.inbox)
        linked = self.links is not None and peer in self.links.out
        message = encode(batch, self.part, backlog) if linked else None
        if sample:
            nbytes = len(message) if message is not None else batch.nbytes
            with self.lock:
                self.counts["bytes_sampled"] += nbytes
                self.counts["tokens_sampled"] += len(batch)
        if message is not None:
            self.links.send(peer, message)
        else:
            self.peers[peer].receive.remote(batch, self.part, backlog)

    def measures(self) -> tuple[np.ndarray, dict[int, np.ndarray]] | None:
        """This actor's exclusive entries of every token's measure (shardwalk.core.srrw.shard.gather), once all are done."""
        return None if self.shard is None else self.shard.exclusive_entries()

    def stats(self) -> dict[str, float]:
        """Counts and CPU seconds: the process's (Ray's threads included), the walking thread's (kernel
        calls and the dispatch of their exits; arrivals joining) and the seconds with no token resident (in
        all, and before the first token finished here: the rest is the walk's tail). Raises if the walk
        thread stopped: the driver polls this while it waits, so the walk fails instead of waiting for ever."""
        if self.failed:
            raise InvariantError(f"walker partition {self.part}: its walk thread stopped ({self.failed[0]}); "
                                 "the tokens it held cannot finish")
        return {"agents": float(self.ctx.owned.sum()), **{k: float(v) for k, v in self.counts.items()},
                "cpu_seconds": time.process_time() - self.cpu_start, "kernel_cpu_seconds": self.kernel_cpu,
                "admit_cpu_seconds": self.admit_cpu, "idle_seconds": self.idle,
                "link_cpu_seconds": sum(self.links.thread_cpu.values()) if self.links else 0.0,
                "idle_before_first_done_seconds": self.idle if self.idle_at_first_done is None else self.idle_at_first_done,
                "setting_slice_hops": float(SLICE_HOPS), "setting_flush_age_s": FLUSH_AGE_S,
                "setting_flush_share": FLUSH_SHARE, "setting_starving_share": STARVING_SHARE,
                "setting_direct_links": len(self.links.out) / max(len(self.peers) - 1, 1) if self.links else 0.0}


def _guarded(walk: Callable[[], None], failed: list[str]) -> Callable[[], None]:
    """A walker thread's target (the walk, a checkpoint gathering): a failure outside the kernel (a token's own
    errors are reported with it) would end the thread silently and strand its tokens; it is kept in `failed`."""
    def run() -> None:
        try:
            walk()
        except BaseException as exc:
            failed.append(f"{type(exc).__name__}: {exc}")
    return run


def flush_due(waiting: int, resident: int, peer_backlog: float, age_s: float, share: float) -> bool:
    """Whether a peer's outbox (`waiting` tokens, the oldest `age_s` old) is sent now, this actor still walking
    `resident` tokens: the outbox is full (FLUSH_SHARE of `share`, the walk's tokens per actor; 0: as many as are
    resident), or it is `urgent`."""
    full = max(1.0, FLUSH_SHARE * share) if FLUSH_SHARE else resident
    return waiting >= full or urgent(peer_backlog, age_s, share)


def urgent(peer_backlog: float, age_s: float, share: float) -> bool:
    """Whether a peer's outbox goes whole now: the peer is short of work (its last reported backlog below
    STARVING_SHARE of `share`), or the oldest token waited FLUSH_AGE_S."""
    return peer_backlog < STARVING_SHARE * share or age_s >= FLUSH_AGE_S


def _meta_path(directory: str, name: str = RUN_META) -> Any:
    return store.join(directory, name) if store.is_remote(directory) else Path(directory) / name


def _has(directory: str, name: str) -> bool:
    path = _meta_path(directory, name)
    return store.read_bytes(path) is not None if store.is_remote(directory) else path.is_file()


def _initial_tokens(chain: SRRW, dim: int, spec: WalkSpec, checkpoint_dir: str | None, resume: bool) -> list[Token]:
    """Fresh tokens, or the checkpointed ones when resuming a run with the same walk spec."""
    fresh = spec_tokens(chain, dim, spec)
    if not (resume and checkpoint_dir):
        return fresh
    meta_path = _meta_path(checkpoint_dir)
    if _has(checkpoint_dir, RUN_META):
        found = read_json_sealed(meta_path, "checkpoint run record", checkpoint_hint(checkpoint_dir))
        diff = record_differences(found, _run_record(spec, chain, dim))
        if diff:
            raise ConfigError(f"{checkpoint_dir}: checkpoints were made with different settings ({', '.join(diff)})")
    elif _has(checkpoint_dir, EARLIER_RUN_META):  # an earlier version's checkpoints: its settings are not checked here
        return fresh
    loaded = [load_token(checkpoint_dir, k) for k in range(spec.tokens)]
    return [tok if tok is not None else fresh[k] for k, tok in enumerate(loaded)]


def _run_record(spec: WalkSpec, chain: SRRW, dim: int) -> dict[str, Any]:
    """The resume record: the walk spec but its stop (a later stop continues the same trajectory)."""
    record = resume_record(spec, agents=chain.num_nodes, dim=dim)
    record.pop("steps")
    return record


HEALTH_CHECK_S = 5.0


def _await_tokens(waits: list[Any], actors: list[Any], timeout: float | None, hops: int = 0) -> list[Any]:
    """Wait for every token, checking the walker actors between waits (their hop counts are the progress).

    A partition lost with its node takes its tokens along and nothing would ever answer; its death
    surfaces here as RayActorError, which the DAG runner retries, and the retry resumes from the last
    token checkpoint. A token's hops are counted when it leaves an actor (hand-off, checkpoint, end).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        ready, _ = ray.wait(waits, num_returns=len(waits), timeout=HEALTH_CHECK_S)
        if len(ready) == len(waits):
            return ray.get(waits)
        with contextlib.suppress(ray.exceptions.GetTimeoutError):  # busy is fine; dead raises RayActorError
            busy = ray.get([actor.stats.remote() for actor in actors], timeout=HEALTH_CHECK_S)
            walked = int(sum(b["steps_walked"] for b in busy))
            progress.report(progress.Update("walk", min(walked, hops), hops, "hops"))
        if deadline is not None and time.monotonic() > deadline:
            raise ray.exceptions.GetTimeoutError(f"walk: tokens not back within {timeout} s")


def _owner_map(chain: SRRW, graph: nx.Graph, spec: WalkSpec, layout: WalkerLayout, parts: dict | None) -> np.ndarray:
    """Agent index -> partition (the layout's partitioner unless `parts` is given; one part when replicated)."""
    if layout.replicate:
        return np.zeros(chain.num_nodes, dtype=np.int64)
    if parts is None:
        parts = walk_partition(chain, graph, layout.partitions, seed=spec.seed, method=layout.partitioner)
    return np.asarray([parts[int(v)] for v in chain.nodes], dtype=np.int64)


def _start_actors(chain: SRRW, graph: nx.Graph, objective: Any, spec: WalkSpec, layout: WalkerLayout,
                  owner: np.ndarray, sink: Any, ckpt: str | None, actors: list[Any],
                  toks: list[Token]) -> np.ndarray | None:
    """One walker actor per partition (appended to `actors` as they start, so a failure can clean up); the
    shared measure entries when the tokens' measures are sharded (whenever the agents are partitioned)."""
    edges = np.asarray(list(graph.edges()), dtype=np.int64)
    count = min(layout.partitions, spec.tokens) if layout.replicate else int(owner.max()) + 1
    mine = [np.full(chain.num_nodes, p) if layout.replicate else owner for p in range(count)]  # replicated: all p's
    held = [halo_mask(chain, mine[p] == p, layout.halo) for p in range(count)]
    shared = None if layout.replicate else shared_agents(views(chain, held))
    for p in range(count):
        share = objective if isinstance(objective, BlockLoader) else objective.restrict(np.flatnonzero(held[p]))
        actors.append(WalkPartition.options(num_cpus=layout.num_cpus, scheduling_strategy="SPREAD").remote(
            p, edges, mine[p], share, spec, layout, sink, ckpt, shared))
    measures = None if shared is None else ray.put(np.asarray([tok.logy for tok in toks], dtype=np.float64))
    addresses = None
    if count > 1 and not layout.replicate and layout.links:
        key = secrets.token_bytes(32)
        addresses = ray.get([actor.listen.remote(key, count - 1) for actor in actors], timeout=layout.timeout)
    ray.get([actor.connect.remote(actors, measures, addresses) for actor in actors], timeout=layout.timeout)
    if shared is not None:
        for tok in toks:
            tok.logy, tok.partial = np.asarray(tok.logy)[shared], True
    return shared


def run_distributed_sa_srrw(objective: Any, graph: nx.Graph, spec: WalkSpec | None = None,
                            layout: WalkerLayout | None = None, /, **settings: Any) -> SAResult:
    """`shardwalk.core.srrw.run_sa_srrw` on walker actors; the same walk spec gives the same result.

    Pass a `WalkSpec` and a `WalkerLayout`, or their fields as keywords (`steps=`, `alpha=`, ...,
    `partitions=`, `partitioner=`, `halo=`, `checkpoint_every=`). Further keywords: `parts` (agent ->
    partition, overrides the partitioner), `checkpoint_dir`, `resume`, `dim` (needed with a
    `BlockLoader`, whose actors read their own agents' rows). More tokens or partitions than agents is
    a ConfigError. With `replicate="auto"` (the default) every actor holds all agents and the tokens are
    split between actors (no hand-offs, `parts` unused) whenever a copy per actor fits the nodes'
    memory (`shardwalk.core.plan.sizing.replicate_fits`); otherwise the agents are partitioned. `stats["replicated"]`
    says which ran.
    """
    ensure_ray()
    if spec is None:
        spec, flat_layout, rest = split_settings(settings)
        layout = layout or flat_layout
    else:
        rest, layout = settings, layout or WalkerLayout()
        unknown = sorted(set(rest) - set(RUN_OPTIONS))
        if unknown:
            raise ConfigError(f"run_distributed_sa_srrw: with a WalkSpec, settings {unknown} belong in it or the layout")
    chain = SRRW(graph, spec.alpha, spec.base)
    if spec.tokens > chain.num_nodes:
        raise ConfigError(f"tokens={spec.tokens} exceeds the number of agents ({chain.num_nodes}); use at most one token per agent")
    check_parts(graph, layout.partitions)  # whether the layout then partitions or replicates
    dim = rest.get("dim")
    if isinstance(objective, BlockLoader):
        if dim is None:
            raise ConfigError("run_distributed_sa_srrw: pass dim= with a BlockLoader")
    else:
        objective = bind(objective, chain)
        dim = objective.dim
    data = objective.data_bytes(dim) if isinstance(objective, BlockLoader) else objective.data_bytes
    layout = layout.resolved(data, cluster_nodes())
    owner = _owner_map(chain, graph, spec, layout, rest.get("parts"))
    halo_rates: dict[int, float] = {}
    if layout.halo == "auto":
        halo, halo_rates = (1, {}) if layout.replicate else choose_halo(chain, owner, seed=spec.seed)
        layout = dataclasses.replace(layout, halo=halo)
    check_tokens_fit(chain, spec.tokens, layout, owner, data, dim, cluster_nodes())
    ckpt = str(rest["checkpoint_dir"]) if rest.get("checkpoint_dir") is not None else None
    toks = _initial_tokens(chain, dim, spec, ckpt, bool(rest.get("resume", False)))
    if ckpt:
        write_json_sealed(_meta_path(ckpt), _run_record(spec, chain, dim))
    sink = TokenSink.remote()
    actors: list[Any] = []
    try:
        shared = _start_actors(chain, graph, objective, spec, layout, owner, sink, ckpt, actors, toks)
        waits = [sink.wait.remote(tok.key) for tok in toks]
        began = time.perf_counter()
        first: dict[int, list[Token]] = {}
        for tok in toks:
            first.setdefault(tok.key % len(actors) if layout.replicate else int(owner[tok.node]), []).append(tok)
        for p, batch in first.items():
            actors[p].receive.remote(TokenBatch.from_tokens(batch))
        results = [(None if plain is None else Token.from_plain(plain), error) for plain, error in
                   _await_tokens(waits, actors, layout.timeout, sum(max(0, spec.steps - tok.n) for tok in toks))]
        seconds = time.perf_counter() - began
        busy = ray.get([actor.stats.remote() for actor in actors], timeout=layout.timeout)
        if shared is not None and all(error is None for _, error in results):
            parts = ray.get([actor.measures.remote() for actor in actors], timeout=layout.timeout)
            for tok, _ in results:
                gather(tok, shared, parts)
    finally:
        for actor in [*actors, sink]:
            ray.kill(actor)
    stats = _result(results, seconds, busy, layout)
    cut = 0.0 if layout.replicate else cut_edge_fraction(graph, {int(v): int(p) for v, p in zip(chain.nodes, owner)})
    stats.stats |= {"cut_fraction": cut, "halo": float(layout.halo),
                    **{f"pilot_handoffs_per_1000_hops_halo{h}": r for h, r in halo_rates.items()},
                    "shared_entries": float(len(shared)) if shared is not None else float(chain.num_nodes)}
    return stats



def _result(results: list[tuple[Token | None, BaseException | None]], seconds: float, busy: list[dict],
            layout: WalkerLayout) -> SAResult:
    """The tokens back from the sink (re-raising a walker's failure) and the actors' counts."""
    done = []
    for token, error in results:
        if error is not None:
            raise error if isinstance(error, ShardwalkError) else RuntimeError(f"walker failed: {error!r}")
        done.append(token)
    total = {k: float(sum(b[k] for b in busy)) for k in busy[0] if not k.startswith("setting_")}
    stats = {"walk_seconds": seconds, "handoffs": float(sum(t.handoffs for t in done)), "partitions": float(len(busy)),
             "actor_cpu_seconds": total["cpu_seconds"], "actor_kernel_cpu_seconds": total["kernel_cpu_seconds"],
             "handoff_calls": total["calls_out"], "steps_walked": total["steps_walked"], "chunks": total["chunks"],
             "actor_idle_seconds": total["idle_seconds"], "actor_admit_cpu_seconds": total["admit_cpu_seconds"],
             "actor_link_cpu_seconds": total["link_cpu_seconds"],
             "actor_idle_before_first_done_seconds": total["idle_before_first_done_seconds"], "tokens_per_kernel_call": total["tokens_per_call"] / max(total["chunks"], 1.0),
             "replicated": float(layout.replicate), "handoff_calls_per_s": total["calls_out"] / max(seconds, 1e-9),
             "tokens_per_handoff_call": total["tokens_out"] / max(total["calls_out"], 1.0),
             **{k: v for k, v in busy[0].items() if k.startswith("setting_")}}
    steps = max(total["steps_walked"], 1.0)
    stats |= {"handoffs_per_1000_hops": 1000.0 * stats["handoffs"] / steps,
              "hops_per_actor_cpu_second": total["steps_walked"] / max(total["cpu_seconds"], 1e-9),
              "bytes_per_crossing": total["bytes_sampled"] / total["tokens_sampled"] if total["tokens_sampled"] else 0.0}
    return SAResult(np.mean([t.theta for t in done], axis=0), done, stats)
