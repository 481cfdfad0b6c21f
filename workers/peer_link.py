"""Direct links between walker actors: hand-offs sent over an authenticated socket instead of a Ray actor call.

A Ray actor call costs the two actors ≈ 3 ms of CPU whatever it carries (the sender's submit and pickling,
the receiver's task dispatch; docs/throughput.md, issue 28), and a partitioned walk makes ~1,200 of them per
16M hops. Each walker actor instead listens on a TCP port of its node (`multiprocessing.connection`, whose
`authkey` handshake — HMAC over a random challenge — admits only holders of the walk's key, sent to the
actors through Ray); a peer's link carries whole messages as bytes (`send_bytes` / `recv_bytes`: never
pickled, so nothing a peer sends is unpickled; the walker lays a hand-off out with shardwalk.core.srrw.wire and
checks it on receipt), one reader thread per incoming link hands each to the actor, and one sender thread per outgoing link sends in order, so neither the walking
thread nor a reader ever blocks on a full socket. Ray still starts, connects, checkpoints and stops the
actors; only the tokens' hand-offs take the link. A listener admits exactly the peers it expects and then closes
(no port stays open while the walk runs), and a peer it cannot reach within `CONNECT_TIMEOUT_S` (a firewall
between nodes that lets only Ray's ports through) is sent its tokens by Ray calls instead.

Why not Ray's own channels: `ray.experimental.channel` and Compiled Graphs are experimental (alpha) APIs
built for a static DAG that the driver executes, not for peers exchanging batches whenever they like.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener

import ray

Deliver = Callable[[bytes], None]
# a dropped SYN (a firewall) would otherwise hold `Client` for the OS's connect timeout, minutes
CONNECT_TIMEOUT_S = 10.0


class LinkEnd:
    """One actor's end: a listener for its `expected` peers' links, and its own links to them (`open`)."""

    def __init__(self, authkey: bytes, deliver: Deliver, failed: list[str], expected: int,
                 host: str | None = None) -> None:
        self.listener = Listener((host or ray.util.get_node_ip_address(), 0), authkey=authkey)
        self.authkey, self.deliver, self.failed, self.expected = authkey, deliver, failed, expected
        self.address: tuple[str, int] = self.listener.address
        self.out: dict[int, queue.SimpleQueue] = {}
        self.thread_cpu: dict[str, float] = {}  # a link thread's CPU seconds so far (`time.thread_time`), by thread
        threading.Thread(target=self._accept, name="link-accept", daemon=True).start()

    def open(self, peer: int, address: tuple[str, int]) -> bool:
        """A link to `peer` listening at `address`, with its sender thread; False if it cannot be reached."""
        try:
            socket.create_connection(tuple(address), timeout=CONNECT_TIMEOUT_S).close()
            conn = Client(tuple(address), authkey=self.authkey)
        except (OSError, EOFError, AuthenticationError):
            return False
        self.out[peer] = outgoing = queue.SimpleQueue()
        threading.Thread(target=self._guard(lambda: self._send_loop(conn, outgoing, f"send-{peer}")),
                         name=f"link-send-{peer}", daemon=True).start()
        return True

    def send(self, peer: int, message: bytes) -> None:
        """Queued for `peer`'s sender thread: returns at once."""
        self.out[peer].put(message)

    def _accept(self) -> None:
        admitted = 0
        while admitted < self.expected:
            try:
                conn = self.listener.accept()
            except (OSError, EOFError, AuthenticationError):  # a failed handshake (wrong key, a probe): refused, not us
                continue
            admitted += 1
            threading.Thread(target=self._guard(lambda c=conn, n=admitted: self._read_loop(c, f"read-{n}")),
                             name="link-read", daemon=True).start()
        self.listener.close()

    def _read_loop(self, conn: Connection, name: str) -> None:
        while True:
            try:
                message = conn.recv_bytes()
            except EOFError:  # the peer closed its end (it is stopping)
                return
            self.deliver(message)
            self.thread_cpu[name] = time.thread_time()

    def _send_loop(self, conn: Connection, outgoing: queue.SimpleQueue, name: str) -> None:
        while True:
            conn.send_bytes(outgoing.get())
            self.thread_cpu[name] = time.thread_time()

    def _guard(self, loop: Callable[[], None]) -> Callable[[], None]:
        """A link thread's failure is kept where the walker reports it (its tokens would otherwise be stranded)."""
        def run() -> None:
            try:
                loop()
            except BaseException as exc:
                self.failed.append(f"hand-off link: {type(exc).__name__}: {exc}")
        return run

