"""A hand-off over a direct link as bytes: a `TokenBatch`, its sender and backlog, never pickled.

A peer's message is parsed as numbers only — a fixed header (magic, a version byte, flags, the sender, its
backlog and the batch's shape) followed by the batch's arrays back to back, each aligned to 8 bytes — and
every length is checked against the header, and the header against the receiving walk (`Expect`), before an
array is made; a message that does not match exactly is refused with a `WireError`. Unpickling a peer's
bytes would run whatever code they name: an authenticated peer is still only trusted to send numbers.

Layout (little-endian), after the header: key, n, node, prev, handoffs (rows × int64 each); log_scale (rows ×
float64); θ (rows × dim); θ̄ if kept; the measure entries — rows × width float64, or with `SPARSE` a bit mask
over them (padded to whole uint64 words) and only the entries it marks, the rest NaN on arrival
(`MeasureShard.changed_only`); the PCG64 words (rows × RNG_WORDS uint64); with `RECORDS` each row's path
length (−1: none) and curve count (rows × 2 int64), the paths, the curve steps and the curve θs (count × dim);
and last `arrived` (rows bytes, 0 or 1).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardwalk.core.errors import ShardwalkError
from shardwalk.core.srrw.token import RNG_WORDS, TokenBatch

MAGIC = b"SWtb"
VERSION = 1
HEADER = struct.Struct("<4sBB2xiqqqqq4x")  # magic, version, flags, sender, backlog, rows, dim, width, body bytes
BAR, PARTIAL, SPARSE, RECORDS = 1, 2, 4, 8
KNOWN_FLAGS = BAR | PARTIAL | SPARSE | RECORDS


class WireError(ShardwalkError):
    """A link message is not a well-formed hand-off for this walk (its first fault named)."""


@dataclass(frozen=True)
class Expect:
    """What the receiving walk accepts: θ's dimension, the measure entries a token carries (`width`; `partial`:
    the shared entries only), how many tokens and agents the walk has, and how many actors may send."""

    dim: int
    width: int
    partial: bool
    tokens: int
    agents: int
    senders: int


def encode(batch: TokenBatch, sender: int, backlog: int) -> bytes:
    """One link message: the header and the batch's arrays (one copy, into the returned bytes)."""
    rows, dim, width = len(batch), batch.theta.shape[1], batch.logy.shape[1]
    flags = (BAR if batch.bar is not None else 0) | (PARTIAL if batch.partial else 0)
    parts: list[Any] = [np.stack([batch.key, batch.n, batch.node, batch.prev, batch.handoffs]).astype(np.int64, copy=False),
                        batch.log_scale, batch.theta]
    if batch.bar is not None:
        parts.append(batch.bar)
    kept = batch.logy == batch.logy if batch.partial else None  # not NaN
    if kept is not None and not kept.all():
        flags |= SPARSE
        mask = np.packbits(kept)  # the last byte's spare bits are zero
        parts += [mask, np.zeros(_mask_bytes(kept.size) - len(mask), np.uint8), batch.logy[kept]]
    else:
        parts.append(batch.logy)
    parts.append(batch.rng)
    if batch.records is not None:
        flags |= RECORDS
        parts += _records_arrays(batch.records, dim)
    parts.append(batch.arrived.astype(np.uint8))
    body = [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in parts]
    size = sum(len(b) for b in body)
    return b"".join([HEADER.pack(MAGIC, VERSION, flags, sender, backlog, rows, dim, width, size), *body])


def decode(message: bytes | bytearray, expect: Expect) -> tuple[TokenBatch, int, int]:
    """(batch, sender, backlog) of a link message; WireError unless it is exactly a hand-off `expect` allows.
    The arrays are writable views of one copy of the message."""
    if len(message) < HEADER.size:
        raise WireError(f"a link message of {len(message)} bytes is shorter than its {HEADER.size}-byte header")
    magic, version, flags, sender, backlog, rows, dim, width, size = HEADER.unpack_from(message)
    if magic != MAGIC or version != VERSION:
        raise WireError(f"a link message has magic {magic!r} version {version}; expected {MAGIC!r} version {VERSION}")
    _check(not flags & ~KNOWN_FLAGS, f"unknown flags {flags:#x}")
    _check(size == len(message) - HEADER.size, f"a body of {len(message) - HEADER.size} bytes; its header says {size}")
    _check(1 <= rows <= expect.tokens, f"{rows} tokens; this walk has {expect.tokens}")
    _check(dim == expect.dim and width == expect.width, f"θ of {dim} and {width} measure entries; this walk "
                                                         f"expects {expect.dim} and {expect.width}")
    _check(bool(flags & PARTIAL) == expect.partial and (expect.partial or not flags & SPARSE),
           f"flags {flags:#x} for a walk whose tokens are {'partial' if expect.partial else 'whole'}")
    _check(0 <= sender < expect.senders and 0 <= backlog <= expect.tokens, f"sender {sender}, backlog {backlog}")
    read = _Reader(bytearray(memoryview(message)[HEADER.size:]))
    ints = read.take((5, rows), np.int64)
    log_scale, theta = read.take((rows,), np.float64), read.take((rows, dim), np.float64)
    bar = read.take((rows, dim), np.float64) if flags & BAR else None
    if flags & SPARSE:
        cells = rows * width
        bits = np.unpackbits(read.take((_mask_bytes(cells),), np.uint8)).view(bool)
        _check(not bits[cells:].any(), "bits set in the measure mask's padding")
        kept = bits[:cells].reshape(rows, width)
        logy = np.full((rows, width), np.nan)
        logy[kept] = read.take((np.count_nonzero(kept),), np.float64)
    else:
        logy = read.take((rows, width), np.float64)
    rng = read.take((rows, RNG_WORDS), np.uint64)
    records = _read_records(read, rows, dim) if flags & RECORDS else None
    arrived = read.take((rows,), np.uint8)
    _check(read.at == len(read.buf), f"{len(read.buf) - read.at} bytes after the last array")
    key, n, node, prev, handoffs = ints
    _check(bool((arrived <= 1).all()), "an arrived flag other than 0 or 1")
    _check(bool(key.min() >= 0 and key.max() < expect.tokens) and len(np.unique(key)) == rows,
           f"token keys outside 0..{expect.tokens - 1} or repeated")
    _check(bool(node.min() >= 0 and node.max() < expect.agents and prev.min() >= -1 and prev.max() < expect.agents),
           f"agents outside 0..{expect.agents - 1}")
    _check(bool(n.min() >= 0 and handoffs.min() >= 0), "a negative step or hand-off count")
    batch = TokenBatch(key, n, node, prev, arrived.astype(bool), handoffs, log_scale, theta, bar, logy, rng,
                       bool(flags & PARTIAL), records)
    return batch, sender, backlog


class _Reader:
    """Consecutive arrays over one buffer, each bounds-checked before it is made."""

    def __init__(self, buf: bytearray) -> None:
        self.buf, self.at = buf, 0

    def take(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        count = math.prod(shape)  # Python ints: a forged length cannot overflow
        nbytes = count * np.dtype(dtype).itemsize
        _check(count >= 0 and self.at + nbytes <= len(self.buf), f"arrays beyond the message's {len(self.buf)} bytes")
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.at).reshape(shape)
        self.at += nbytes
        return out


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise WireError(f"a link message is malformed: {what}")


def _mask_bytes(entries: int) -> int:
    """Bytes of a bit mask over `entries`, padded to whole uint64 words (the arrays after it stay aligned)."""
    return (entries + 63) // 64 * 8


def _records_arrays(records: list[tuple[list[int] | None, list[int], list[np.ndarray]]], dim: int) -> list[np.ndarray]:
    lens = np.array([(-1 if path is None else len(path), len(steps)) for path, steps, _ in records], dtype=np.int64)
    paths = np.array([v for path, _, _ in records if path is not None for v in path], dtype=np.int64)
    steps = np.array([v for _, s, _ in records for v in s], dtype=np.int64)
    thetas = np.array([t for _, _, ts in records for t in ts], dtype=np.float64).reshape(-1, dim)
    return [lens.reshape(-1, 2), paths, steps, thetas]


def _read_records(read: _Reader, rows: int, dim: int) -> list[tuple[list[int] | None, list[int], list[np.ndarray]]]:
    lens = read.take((rows, 2), np.int64)
    _check(bool((lens[:, 0] >= -1).all() and (lens[:, 1] >= 0).all()), "a negative path length or curve count")
    path_total, curve_total = int(np.maximum(lens[:, 0], 0).sum()), int(lens[:, 1].sum())
    paths = read.take((path_total,), np.int64).tolist()
    steps = read.take((curve_total,), np.int64).tolist()
    thetas = read.take((curve_total, dim), np.float64)
    out, p, c = [], 0, 0
    for length, count in lens.tolist():
        path = None if length < 0 else paths[p: p + length]
        p += max(length, 0)
        out.append((path, steps[c: c + count], [thetas[i].copy() for i in range(c, c + count)]))
        c += count
    return out
