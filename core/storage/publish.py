"""Publishing a user-facing result (an export, query answers): where it is, and replacing it in one step.

A user reads these locations directly, so they must hold one complete result at every instant: a new
result is built beside the old one and swapped in with the interrupts that could split the swap held back;
a location that overlaps the runs directory or is a bucket root is never a target. Locations are compared
canonically: a local path with its symlinks resolved, a store location as (scheme, bucket/key) whatever
endpoint, query string or doubled slash spells it (core/storage/location.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

from shardwalk.core.storage import store
from shardwalk.core.storage.location import canonical, contains


def overlaps(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when one location is the other or contains it (canonical comparison, core/storage/location.py)."""
    return contains(a, b) or contains(b, a)


def is_bucket_root(location: str | os.PathLike) -> bool:
    """A store URI naming a whole bucket (`s3://bucket`, `s3://bucket/`): never a place to publish into."""
    text = os.fspath(location)
    return store.is_remote(text) and "/" not in canonical(text).split("://", 1)[1].strip("/")


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT / SIGTERM until the block ends, then deliver them: a two-step swap is never split by Ctrl-C.

    Only the main thread can change handlers; elsewhere the block runs as it is.
    """
    pending: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    try:
        previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in held}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pending:
            signal.raise_signal(pending[0])  # the restored handler runs now (KeyboardInterrupt for Ctrl-C)


def swap_dir(tmp: Path, final: Path) -> None:
    """Put the finished directory `tmp` at `final`; a previous `final` is moved aside first and removed after.

    The two renames run with interrupts deferred, so Ctrl-C leaves the old result or the new one in place;
    a hard kill between them leaves the old one complete in its `.old-*` sibling.
    """
    trash = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:12]}"
    swapped = False
    try:
        with interrupts_deferred():  # a held Ctrl-C is delivered on leaving: after the swap, before the tidy-up
            if final.exists():
                os.rename(final, trash)
            try:
                os.rename(tmp, final)
            except BaseException:
                if trash.exists():
                    os.rename(trash, final)
                raise
            swapped = True
    finally:
        if swapped:
            shutil.rmtree(trash, ignore_errors=True)
