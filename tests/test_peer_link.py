"""Direct hand-off links between walker actors (shardwalk.workers.peer_link), without Ray, and the walk over them."""

from __future__ import annotations

import socket
import threading
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client

import numpy as np
import pytest

from shardwalk.core.errors import ConfigError
from shardwalk.core.srrw import WalkerLayout, run_sa_srrw
from shardwalk.core.srrw.token import TokenBatch
from shardwalk.core.srrw.wire import encode
from shardwalk.workers.peer_link import LinkEnd
from shardwalk.workers.walker import run_distributed_sa_srrw
from tests.test_walker import LES, _assert_same, _objective


def _batch(rows: int, start: int) -> TokenBatch:
    rng = np.random.default_rng(start)
    ints = [np.arange(start, start + rows, dtype=np.int64) for _ in range(5)]
    return TokenBatch(ints[0], ints[1], ints[2], ints[3], np.ones(rows, bool), ints[4], rng.random(rows),
                      rng.random((rows, 3)), None, rng.random((rows, 7)), rng.integers(0, 2**63, (rows, 6), dtype=np.uint64))


def test_a_link_delivers_batches_in_order_and_refuses_a_caller_without_the_key() -> None:
    """Then the listener, having admitted the one peer it expects, is closed: no port stays open during a walk."""
    got, done, failed = [], threading.Event(), []

    def deliver(message):
        got.append(message)
        if len(got) == 3:
            done.set()

    key = b"k" * 32
    receiver = LinkEnd(key, deliver, failed, expected=1, host="127.0.0.1")
    with pytest.raises(AuthenticationError):
        Client(receiver.address, authkey=b"x" * 32)
    sender = LinkEnd(key, lambda message: None, failed, expected=0, host="127.0.0.1")
    assert sender.open(0, receiver.address)  # still accepting after the refused caller
    sent = [encode(_batch(rows, 10 * rows), 1, rows) for rows in (1, 4, 2)]
    for message in sent:
        sender.send(0, message)
    assert done.wait(10) and failed == []
    assert got == sent  # bytes in, the same bytes out, in order: nothing is pickled on the way
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(receiver.address, timeout=5)
    assert not LinkEnd(key, lambda message: None, failed, expected=0, host="127.0.0.1").open(1, receiver.address)
    assert failed == []


def test_a_malformed_message_stops_the_link_and_is_kept_as_the_reason() -> None:
    """A pickle (or any bytes not laid out by wire.encode) is parsed, never unpickled; the reader thread stops and
    its failure is what the walker's `stats` then raises."""
    import pickle
    import time

    from shardwalk.core.srrw.wire import Expect, decode

    failed: list[str] = []
    expect = Expect(dim=3, width=7, partial=False, tokens=16, agents=50, senders=2)
    key = b"k" * 32
    receiver = LinkEnd(key, lambda message: decode(message, expect), failed, expected=1, host="127.0.0.1")
    sender = LinkEnd(key, lambda message: None, failed, expected=0, host="127.0.0.1")
    assert sender.open(0, receiver.address)
    sender.send(0, pickle.dumps((_batch(2, 0), 1, 0)))
    deadline = time.monotonic() + 10
    while not failed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(failed) == 1 and failed[0].startswith("hand-off link: WireError: a link message has magic")


def test_links_is_a_layout_setting_and_must_be_a_bool() -> None:
    assert WalkerLayout().links is True
    with pytest.raises(ConfigError, match="links must be true or false, got 'no'"):
        WalkerLayout(links="no")


@pytest.mark.parametrize("links", [True, False])
def test_partitioned_walk_is_the_reference_over_links_and_over_ray_calls(ray_local, links):
    obj = _objective()
    kw = dict(steps=800, alpha=5.0, seed=2, tokens=6, record_path=True, record_every=100)
    dist = run_distributed_sa_srrw(obj, LES, partitions=2, replicate=False, halo=1, links=links, **kw)
    _assert_same(dist, run_sa_srrw(obj, LES, **kw))
    assert dist.stats["handoffs"] > 0 and dist.stats["setting_direct_links"] == float(links)
