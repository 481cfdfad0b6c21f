"""What one hand-off call costs Ray, by payload size: CPU of the receiving and the sending actor per call.

    python -m benchmarks.bench_handoff_calls --json benchmarks/results/handoff_calls.json

The partitioned walker hands tokens over as one `receive.remote(batch)` per peer and flush (issue 28). This
measures that path alone, between two actors (num_cpus=0): the sender fires `calls`
calls of a bytes payload and waits for the receiver to have them all; CPU seconds of both processes (Ray's
threads included) per call, for each payload size, with `num_returns=0` (the walker's) and with a returned
ObjectRef that is dropped; `--receivers async,threaded`: an async receiver and a threaded one (sync methods,
`max_concurrency=2`, no event-loop hop per call: the walker's since tokens8). `--sizes 95000,105000` shows Ray's
100 KiB inline-argument limit (a larger argument goes through the object store). Read with the walk's own counts
(calls, tokens per call, bytes per crossing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

import ray

SIZES = (0, 1_024, 16_384, 65_536, 262_144)


@ray.remote(num_cpus=0)
class Receiver:
    """Counts arrivals like the walker's inbox; `until(n)` answers once n have arrived."""

    def __init__(self) -> None:
        self.count = 0
        self.event = asyncio.Event()
        self.want = 0

    @ray.method(num_returns=0)
    async def receive(self, payload: bytes) -> None:
        self.count += 1
        if self.count >= self.want:
            self.event.set()

    async def receive_ref(self, payload: bytes) -> None:
        self.count += 1
        if self.count >= self.want:
            self.event.set()

    async def reset(self, want: int) -> float:
        self.count, self.want = 0, want
        self.event.clear()
        return time.process_time()

    async def until(self) -> float:
        await self.event.wait()
        return time.process_time()


@ray.remote(num_cpus=0, max_concurrency=2)
class ThreadedReceiver:
    """The same receiver as a threaded actor (sync methods on a pool of 2 threads): no event-loop hop per call."""

    def __init__(self) -> None:
        import threading

        self.count, self.want, self.lock, self.event = 0, 0, threading.Lock(), threading.Event()

    @ray.method(num_returns=0)
    def receive(self, payload: bytes) -> None:
        with self.lock:
            self.count += 1
            if self.count >= self.want:
                self.event.set()

    def receive_ref(self, payload: bytes) -> None:
        self.receive(payload)

    def reset(self, want: int) -> float:
        with self.lock:
            self.count, self.want = 0, want
            self.event.clear()
        return time.process_time()

    def until(self) -> float:
        self.event.wait()
        return time.process_time()


@ray.remote(num_cpus=0)
class Sender:
    """Fires the calls from inside an actor, as a walker does."""

    async def fire(self, peer: Any, calls: int, size: int, returns: bool) -> tuple[float, float]:
        payload = os.urandom(size)
        cpu, wall = time.process_time(), time.perf_counter()
        method = peer.receive_ref if returns else peer.receive
        for _ in range(calls):
            method.remote(payload)
        return time.process_time() - cpu, time.perf_counter() - wall


def measure(calls: int, kind: str = "async", sizes: tuple[int, ...] = SIZES) -> list[dict[str, Any]]:
    receiver, sender = (ThreadedReceiver if kind == "threaded" else Receiver).remote(), Sender.remote()
    rows = []
    for size in sizes:
        for returns in (False, True):
            start = ray.get(receiver.reset.remote(calls))
            wall = time.perf_counter()
            send_cpu, _ = ray.get(sender.fire.remote(receiver, calls, size, returns))
            end = ray.get(receiver.until.remote())
            seconds = time.perf_counter() - wall
            rows.append({"receiver": kind, "payload_bytes": size, "returns": "objectref dropped" if returns else "num_returns=0",
                         "calls": calls, "receiver_cpu_us_per_call": 1e6 * (end - start) / calls,
                         "sender_cpu_us_per_call": 1e6 * send_cpu / calls, "calls_per_s": calls / seconds})
            print(f"{size:>8} B  {rows[-1]['returns']:<18} receiver {rows[-1]['receiver_cpu_us_per_call']:7.0f} µs/call"
                  f"  sender {rows[-1]['sender_cpu_us_per_call']:7.0f} µs/call  {rows[-1]['calls_per_s']:8.0f} calls/s")
    for actor in (receiver, sender):
        ray.kill(actor)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_handoff_calls", description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--label", default="")
    ap.add_argument("--receivers", default="async", help="comma-separated: async (the walker's), threaded (max_concurrency=2)")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)),
                    help="comma-separated payload bytes (Ray inlines arguments up to 100 KiB: try 95000,105000)")
    ap.add_argument("--json", required=True)
    args = ap.parse_args(argv)
    try:
        sizes = tuple(int(v) for v in args.sizes.split(","))
    except ValueError:
        ap.error(f"--sizes {args.sizes!r}: comma-separated whole numbers of bytes")
    load = os.getloadavg()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ray.get(Receiver.remote().reset.remote(0))  # workers warm
        rows = [row for kind in args.receivers.split(",") for row in measure(args.calls, kind, sizes)]
    finally:
        ray.shutdown()
    out = {"label": args.label, "load_average_before": list(load), "load_average_after": list(os.getloadavg()),
           "ray": ray.__version__, "rows": rows}
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
