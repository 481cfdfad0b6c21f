"""A hand-off's link message (shardwalk.core.srrw.wire): round trips exactly, and anything else is refused."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest

from shardwalk.core.srrw.token import RNG_WORDS, TokenBatch
from shardwalk.core.srrw.wire import HEADER, MAGIC, VERSION, Expect, WireError, decode, encode

EXPECT = Expect(dim=3, width=7, partial=True, tokens=16, agents=50, senders=2)


def _batch(rows: int, *, bar: bool = False, sparse: bool = True, records: bool = False) -> TokenBatch:
    rng = np.random.default_rng(rows)
    logy = rng.random((rows, 7))
    if sparse:
        logy[rng.random((rows, 7)) < 0.5] = np.nan  # entries the token left as it arrived (changed_only)
    recs = [([1, 2, 3][: i % 4] if i % 2 else None, list(range(i % 3)), [rng.random(3) for _ in range(i % 3)])
            for i in range(rows)] if records else None
    return TokenBatch((np.arange(rows, dtype=np.int64) + 2) % 16, rng.integers(0, 1000, rows), rng.integers(0, 50, rows),
                      rng.integers(-1, 50, rows), rng.random(rows) < 0.5, rng.integers(0, 9, rows), rng.random(rows),
                      rng.random((rows, 3)), rng.random((rows, 3)) if bar else None, logy,
                      rng.integers(0, 2**63, (rows, RNG_WORDS), dtype=np.uint64), True, recs)


def _assert_batches_equal(got: TokenBatch, want: TokenBatch) -> None:
    for field in ("key", "n", "node", "prev", "arrived", "handoffs", "log_scale", "theta", "logy", "rng"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))  # NaN where NaN, bit for bit
        assert getattr(got, field).dtype == getattr(want, field).dtype
    assert (got.bar is None) == (want.bar is None) and got.partial == want.partial
    if want.bar is not None:
        np.testing.assert_array_equal(got.bar, want.bar)
    if want.records is None:
        assert got.records is None
    else:
        for (path, steps, thetas), (wpath, wsteps, wthetas) in zip(got.records, want.records, strict=True):
            assert path == wpath and steps == wsteps and len(thetas) == len(wthetas)
            for a, b in zip(thetas, wthetas):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", [{}, {"sparse": False}, {"bar": True}, {"records": True}, {"bar": True, "records": True}])
@pytest.mark.parametrize("rows", [1, 5, 16])
def test_a_batch_round_trips_bit_for_bit_with_its_sender_and_backlog(rows: int, kind: dict) -> None:
    want = _batch(rows, **kind)
    got, sender, backlog = decode(encode(want, 1, 9), EXPECT)
    assert (sender, backlog) == (1, 9)
    _assert_batches_equal(got, want)
    got.theta[0, 0] = 5.0  # writable arrays: the walker restores them into its resident rows
    assert got.theta.flags.aligned and got.logy.flags.aligned


def _forged(message: bytes, **fields: int) -> bytes:
    """The message with header fields replaced (a peer that does not follow the format)."""
    names = ("magic", "version", "flags", "sender", "backlog", "rows", "dim", "width", "size")
    values = dict(zip(names, HEADER.unpack_from(message))) | fields
    return HEADER.pack(*(values[n] for n in names)) + message[HEADER.size:]


GOOD = encode(_batch(4), 0, 3)
DENSE = encode(_batch(4, sparse=False), 0, 3)


@pytest.mark.parametrize("message, fault", [
    (GOOD[:10], "shorter than its"),
    (GOOD[:-8], "body of"),
    (GOOD + b"\0" * 8, "body of"),
    (_forged(GOOD, magic=b"XXXX"), "magic"),
    (_forged(GOOD, version=VERSION + 1), "version"),
    (_forged(GOOD, flags=0x40), "unknown flags"),
    (_forged(GOOD, rows=17), "17 tokens"),
    (_forged(GOOD, rows=0), "0 tokens"),
    (_forged(GOOD, dim=4), "θ of 4"),
    (_forged(GOOD, width=8), "8 measure entries"),
    (_forged(GOOD, sender=2), "sender 2"),
    (_forged(GOOD, backlog=-1), "backlog -1"),
    (_forged(DENSE, rows=3), "bytes after the last array"),
    (_forged(DENSE, rows=5), "beyond the message"),
    (_forged(GOOD, flags=0), "flags 0x0"),
    (_forged(DENSE, flags=2 | 4), "malformed"),  # dense entries read as a mask: whatever fault comes first
    (_forged(GOOD, size=2**62), "body of"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_malformed_message_is_refused_naming_its_fault(message: bytes, fault: str) -> None:
    with pytest.raises(WireError, match=fault):
        decode(message, EXPECT)


def test_values_outside_the_walk_are_refused() -> None:
    bad_key, bad_node, bad_arrived, repeated = (_batch(4) for _ in range(4))
    bad_key.key[0] = 16
    bad_node.node[1] = 50
    repeated.key[1] = repeated.key[0]
    for batch, fault in ((bad_key, "token keys"), (bad_node, "agents outside"), (repeated, "repeated")):
        with pytest.raises(WireError, match=fault):
            decode(encode(batch, 0, 0), EXPECT)
    message = bytearray(encode(bad_arrived, 0, 0))
    message[-1] = 2  # `arrived` is the last array: a byte other than 0 or 1
    with pytest.raises(WireError, match="arrived flag"):
        decode(bytes(message), EXPECT)


def test_bits_in_the_measure_masks_padding_are_refused() -> None:
    message = bytearray(GOOD)
    mask_at = HEADER.size + 8 * (5 * 4 + 4 + 4 * 3)  # ints, log_scale, θ: then the mask over 4 × 7 entries
    message[mask_at + 7] |= 1  # bit 63, past the 28 cells
    with pytest.raises(WireError, match="padding"):
        decode(bytes(message), EXPECT)


def test_a_pickle_is_never_unpickled_only_refused() -> None:
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("a peer's pickle was executed",))

    payload = pickle.dumps((Boom(), 0, 0))
    with pytest.raises(WireError):
        decode(payload, EXPECT)
    header = struct.pack("<4sB", MAGIC, VERSION)
    with pytest.raises(WireError):
        decode(header + payload, EXPECT)
