"""Progress of long work: what a stage reports (units done of a total), and the rate and ETA drawn from it.

Pure (no Ray, no sockets): stage code reports through `report` / `Tracker` to whatever sink the caller
installed (`reporting_to`); without one a report costs a context-variable lookup. pipelines/progress.py
draws the display, workers/progress_channel.py carries reports from Ray workers to the driver.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from shardwalk.core.errors import DataError

Clock = Callable[[], float]
MAX_TEXT = 40  # phase and unit names are short labels; a longer one on the wire is refused
MAX_COUNT = 2**53  # counts are JSON numbers: integers beyond a double's exact range are refused


@dataclass(frozen=True)
class Update:
    """One report of a phase of work: `done` of `total` units (parts, chunks, blocks), and rows (or hops) so far."""

    phase: str
    done: int
    total: int | None = None
    unit: str = "parts"
    rows: int | None = None  # rows, queries or hops processed so far: the rate is in these when given
    rows_unit: str = "rows"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Update:
        """An Update from a decoded wire message (data from a stranger): exact keys, bounded labels and counts."""
        if not isinstance(data, dict) or set(data) != set(cls.__dataclass_fields__):
            raise DataError("progress update: expected the keys " + ", ".join(sorted(cls.__dataclass_fields__)))
        for name in ("phase", "unit", "rows_unit"):
            if not isinstance(data[name], str) or not 0 < len(data[name]) <= MAX_TEXT or not data[name].isprintable():
                raise DataError(f"progress update: '{name}' must be a printable label of 1..{MAX_TEXT} characters")
        for name, optional in (("done", False), ("total", True), ("rows", True)):
            value = data[name]
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
                raise DataError(f"progress update: '{name}' must be an integer in 0..2^53, got {value!r}")
        return cls(**data)


def encode(stage: str, sender: str, token: str, update: Update) -> bytes:
    """One datagram: who reports (stage, sender), the run's token, the update."""
    return json.dumps({"stage": stage, "sender": sender, "token": token, "update": update.to_json()}).encode()


def decode(payload: bytes, token: str) -> tuple[str, str, Update]:
    """(stage, sender, update) of a datagram carrying `token`; DataError for anything else."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DataError("progress datagram: not JSON") from None
    if not isinstance(data, dict) or set(data) != {"stage", "sender", "token", "update"}:
        raise DataError("progress datagram: expected stage, sender, token and update")
    if data["token"] != token:
        raise DataError("progress datagram: not from this run (token differs)")
    for name in ("stage", "sender"):
        if not isinstance(data[name], str) or not 0 < len(data[name]) <= 2 * MAX_TEXT or not data[name].isprintable():
            raise DataError(f"progress datagram: '{name}' must be a short printable label")
    return data["stage"], data["sender"], Update.from_json(data["update"])


@dataclass(frozen=True)
class Snapshot:
    """What the display shows of one stage: its phase, units done of total, the rate and the time left."""

    phase: str
    done: int
    total: int | None
    unit: str
    rate: float | None  # per second, in `rate_unit`
    rate_unit: str
    eta: float | None  # seconds


class Meter:
    """Rate and ETA of one stage's current phase, from the updates of its senders (counts summed, one total).

    The rate is measured over the last `window` seconds of updates, so it follows the work as it speeds
    up or slows down; a new phase, or counts going back (a retried attempt starting over), starts afresh.
    """

    def __init__(self, clock: Clock = time.monotonic, window: float = 30.0) -> None:
        self.clock, self.window = clock, window
        self.latest: dict[str, Update] = {}  # sender → its last update of the current phase
        self.samples: deque[tuple[float, float]] = deque()  # (time, progress in rate units)

    def update(self, update: Update, sender: str = "") -> None:
        previous = self.latest.get(sender)
        phase = next(iter(self.latest.values())).phase if self.latest else update.phase
        if update.phase != phase or (previous is not None and _units(update) < _units(previous)):
            self.latest.clear()
            self.samples.clear()
        self.latest[sender] = update
        now = self.clock()
        self.samples.append((now, self._progress()))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()

    def _progress(self) -> float:
        return float(sum(_units(u) for u in self.latest.values()))

    def snapshot(self) -> Snapshot | None:
        """None until some update arrived."""
        if not self.latest:
            return None
        updates = list(self.latest.values())
        first = updates[0]
        done = sum(u.done for u in updates)
        totals = [u.total for u in updates]  # the senders of one phase share its total (a query's worker processes)
        total = None if any(t is None for t in totals) else max(t for t in totals if t is not None)
        done = done if total is None else min(done, total)  # a retried block is counted by two senders
        rate = self._rate()
        return Snapshot(first.phase, done, total, first.unit, rate, first.rows_unit if first.rows is not None else first.unit,
                        self._eta(done, total, rate))

    def _rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, p0), (t1, p1) = self.samples[0], self.samples[-1]
        return (p1 - p0) / (t1 - t0) if t1 > t0 else None

    def _eta(self, done: int, total: int | None, rate: float | None) -> float | None:
        """Seconds left at the current pace: units left, in the rate's units when it counts rows."""
        if total is None or rate is None or rate <= 0:
            return None
        if done >= total:
            return 0.0
        updates = list(self.latest.values())
        if all(u.rows is not None for u in updates) and done > 0:
            rows_per_unit = sum(u.rows or 0 for u in updates) / done
            return (total - done) * rows_per_unit / rate
        if any(u.rows is not None for u in updates):
            return None
        return (total - done) / rate


def _units(update: Update) -> int:
    return update.rows if update.rows is not None else update.done


class Throttle:
    """Whether it is time to act again: at most once per `interval` seconds, unless forced.

    `wait_first`: the first time is also an interval after the throttle was made (a log line only for
    work that lasts), rather than at once.
    """

    def __init__(self, interval: float, clock: Clock = time.monotonic, wait_first: bool = False) -> None:
        self.interval, self.clock = interval, clock
        self.last: float | None = clock() if wait_first else None

    def due(self, force: bool = False) -> bool:
        now = self.clock()
        if force or self.last is None or now - self.last >= self.interval:
            self.last = now
            return True
        return False


def _count(n: float) -> str:
    return f"{n:,.0f}" if abs(n) >= 100 else f"{n:.3g}"


def duration(seconds: float) -> str:
    """`42s`, `3m05s`, `2h04m`: short enough for a status line."""
    seconds = max(0, math.ceil(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def describe(snap: Snapshot) -> str:
    """`insert: 3/8 chunks (38%) · 12,345 rows/s · ETA 40s`, leaving out what is not known yet."""
    if snap.total is not None:
        share = f" ({100 * snap.done / snap.total:.0f}%)" if snap.total else ""
        text = f"{snap.phase}: {snap.done:,}/{snap.total:,} {snap.unit}{share}"
    else:
        text = f"{snap.phase}: {snap.done:,} {snap.unit}"
    if snap.rate is not None:
        text += f" · {_count(snap.rate)} {snap.rate_unit}/s"
    if snap.eta is not None and snap.total is not None and snap.done < snap.total:
        text += f" · ETA {duration(snap.eta)}"
    return text


Sink = Callable[[Update], None]
_SINK: contextvars.ContextVar[Sink | None] = contextvars.ContextVar("progress_sink", default=None)


@contextlib.contextmanager
def reporting_to(sink: Sink) -> Iterator[None]:
    """Send this context's reports (and threads started with a copy of it) to `sink`."""
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)


def active() -> bool:
    """Whether anyone listens: callers skip the work of counting when not."""
    return _SINK.get() is not None


def report(update: Update) -> None:
    """Hand one update to the installed sink; never raises (progress is never worth failing a stage)."""
    sink = _SINK.get()
    if sink is not None:
        with contextlib.suppress(Exception):
            sink(update)


class Tracker:
    """Counts one phase's units (and rows) as they finish, reporting each change; safe across threads."""

    def __init__(self, phase: str, total: int | None, unit: str = "parts", rows_unit: str | None = None) -> None:
        self.phase, self.total, self.unit, self.rows_unit = phase, total, unit, rows_unit
        self.done, self.rows = 0, 0
        self.lock = threading.Lock()
        self._send()

    def advance(self, units: int = 1, rows: int = 0) -> None:
        with self.lock:
            self.done += units
            self.rows += rows
            self._send()

    def _send(self) -> None:
        rows = self.rows if self.rows_unit is not None else None
        report(Update(self.phase, self.done, self.total, self.unit, rows, self.rows_unit or "rows"))
