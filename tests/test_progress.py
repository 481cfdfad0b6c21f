"""Progress of long work: the model (counts, rate, ETA), the wire format, the display's throttling, the UDP
channel on loopback. No Ray; a fake clock everywhere (nothing asserts wall-clock time)."""

from __future__ import annotations

import io
import json
import socket
import threading

import pytest

from shardwalk.core import progress
from shardwalk.core.dag.runner import RunRecord, StageRecord
from shardwalk.core.errors import DataError
from shardwalk.core.progress import Meter, Throttle, Tracker, Update, describe
from shardwalk.pipelines.progress import StageDisplay
from shardwalk.workers import progress_channel


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_meter_rate_and_eta_from_units() -> None:
    clock = FakeClock()
    meter = Meter(clock)
    assert meter.snapshot() is None
    meter.update(Update("insert", 0, 20, "chunks"))
    clock.now = 10.0
    meter.update(Update("insert", 5, 20, "chunks"))
    snap = meter.snapshot()
    assert (snap.phase, snap.done, snap.total, snap.unit) == ("insert", 5, 20, "chunks")
    assert snap.rate == pytest.approx(0.5) and snap.rate_unit == "chunks"
    assert snap.eta == pytest.approx(30.0)
    assert describe(snap) == "insert: 5/20 chunks (25%) · 0.5 chunks/s · ETA 30s"


def test_meter_rate_in_rows_and_eta_from_rows_per_unit() -> None:
    clock = FakeClock()
    meter = Meter(clock)
    meter.update(Update("read input", 0, 4, "parts", rows=0))
    clock.now = 2.0
    meter.update(Update("read input", 1, 4, "parts", rows=1000))
    snap = meter.snapshot()
    assert snap.rate == pytest.approx(500.0) and snap.rate_unit == "rows"
    assert snap.eta == pytest.approx(6.0)  # 3 parts left × 1,000 rows a part at 500 rows/s
    assert describe(snap) == "read input: 1/4 parts (25%) · 500 rows/s · ETA 6s"


def test_meter_rate_follows_the_recent_window() -> None:
    clock = FakeClock()
    meter = Meter(clock, window=10.0)
    for t, done in [(0, 0), (10, 100), (20, 110), (30, 120)]:  # fast at first, then 1 unit/s
        clock.now = t
        meter.update(Update("graph", done, 1000, "batches"))
    assert meter.snapshot().rate == pytest.approx(1.0)


def test_meter_sums_senders_under_one_total_and_restarts_on_a_new_phase_or_a_retry() -> None:
    clock = FakeClock()
    meter = Meter(clock)
    meter.update(Update("answer", 100, 1000, "queries"), "a")
    meter.update(Update("answer", 300, 1000, "queries"), "b")
    snap = meter.snapshot()
    assert (snap.done, snap.total) == (400, 1000)
    meter.update(Update("exact search", 1, 8), "a")  # a new phase: only its own counts
    assert (meter.snapshot().phase, meter.snapshot().done, meter.snapshot().total) == ("exact search", 1, 8)
    clock.now = 5.0
    meter.update(Update("exact search", 6, 8), "a")
    clock.now = 6.0
    meter.update(Update("exact search", 2, 8), "a")  # counts went back: a retried attempt starts over
    snap = meter.snapshot()
    assert snap.done == 2 and snap.rate is None


def test_unknown_total_shows_counts_without_eta() -> None:
    clock = FakeClock()
    meter = Meter(clock)
    meter.update(Update("answer", 0, None, "queries"))
    clock.now = 4.0
    meter.update(Update("answer", 8000, None, "queries"))
    snap = meter.snapshot()
    assert snap.eta is None and describe(snap) == "answer: 8,000 queries · 2,000 queries/s"


def test_throttle() -> None:
    clock = FakeClock()
    throttle = Throttle(30.0, clock)
    assert throttle.due()
    clock.now = 29.0
    assert not throttle.due()
    assert throttle.due(force=True)
    clock.now = 58.0
    assert not throttle.due()
    clock.now = 59.0
    assert throttle.due()
    late = Throttle(30.0, clock, wait_first=True)
    assert not late.due()
    clock.now = 89.0
    assert late.due()


def test_duration() -> None:
    assert [progress.duration(s) for s in (0.2, 42, 185, 7440)] == ["1s", "42s", "3m05s", "2h04m"]


def test_tracker_reports_each_advance_to_the_installed_sink_only() -> None:
    seen: list[Update] = []
    Tracker("orphan", 3).advance()  # no sink: nothing to report to, nothing raised
    with progress.reporting_to(seen.append):
        assert progress.active()
        tracker = Tracker("knn graph", 3, "batches", "rows")
        tracker.advance(1, 500)
        tracker.advance(2, 700)
    assert not progress.active()
    assert [(u.done, u.rows) for u in seen] == [(0, 0), (1, 500), (3, 1200)]
    assert all(u.total == 3 and u.unit == "batches" and u.rows_unit == "rows" for u in seen)


def test_a_failing_sink_never_fails_the_work() -> None:
    def broken(update: Update) -> None:
        raise OSError("no buffer space")

    with progress.reporting_to(broken):
        Tracker("insert", 2).advance()


def test_wire_format_round_trip_and_refusals() -> None:
    update = Update("insert", 3, 8, "chunks", 3000, "rows")
    assert progress.decode(progress.encode("build", "task", "t0k", update), "t0k") == ("build", "task", update)
    with pytest.raises(DataError, match="token differs"):
        progress.decode(progress.encode("build", "task", "t0k", update), "other")
    good = json.loads(progress.encode("build", "task", "t0k", update))
    bad_updates = [
        {**good["update"], "done": -1}, {**good["update"], "done": True}, {**good["update"], "total": 2.5},
        {**good["update"], "phase": "x" * 41}, {**good["update"], "unit": "a\x1b[2Jb"}, {**good["update"], "extra": 1},
    ]
    for bad in bad_updates:
        with pytest.raises(DataError):
            progress.decode(json.dumps({**good, "update": bad}).encode(), "t0k")
    for payload in (b"\xff\xfe", b"[]", b"{}", json.dumps({**good, "stage": 7}).encode()):
        with pytest.raises(DataError):
            progress.decode(payload, "t0k")


class NotATerminal(io.StringIO):
    def isatty(self) -> bool:
        return False


def _record(status: str) -> tuple[RunRecord, StageRecord]:
    run = RunRecord("20261206-100000-index-abcdef", "index", {})
    rec = StageRecord("build", "k" * 64, "/runs/cache/build")
    rec.status, rec.seconds, rec.rows = status, 1.0, 0
    run.stages["build"] = rec
    return run, rec


def test_log_lines_without_a_terminal_are_periodic_never_a_flood() -> None:
    clock, out = FakeClock(), NotATerminal()
    display = StageDisplay("index", out, None, interval=30.0, clock=clock)
    display(*_record("running"))
    for step in range(1, 601):  # ten minutes of updates, one a second
        clock.now = step / 10 * 10
        display.progress("build", "task", Update("insert", step, 600, "chunks", step * 100))
        if step == 1:
            assert "insert" not in out.getvalue()  # no line for work that has not lasted an interval yet
    lines = [line for line in out.getvalue().splitlines() if "insert" in line]
    assert 19 <= len(lines) <= 20  # one every 30 s of 600 s
    assert lines[0].startswith("[20261206-100000-index-abcdef] stage build: insert: ")
    assert "rows/s" in lines[0] and "ETA" in lines[0]


def test_a_late_update_of_a_finished_stage_is_dropped() -> None:
    clock, out = FakeClock(), NotATerminal()
    display = StageDisplay("index", out, None, interval=0.0, clock=clock)
    display(*_record("running"))
    display(*_record("done"))
    clock.now = 100.0
    display.progress("build", "task", Update("insert", 1, 2, "chunks"))
    assert "insert" not in out.getvalue() and "build" not in display.meters


def test_udp_channel_on_loopback_delivers_updates_and_drops_strangers() -> None:
    got: list[tuple[str, str, Update]] = []
    arrived = threading.Event()

    def on_update(stage: str, sender: str, update: Update) -> None:
        got.append((stage, sender, update))
        arrived.set()

    with progress_channel.listening("127.0.0.1", on_update) as channel:
        assert channel is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:  # no token: dropped
            stranger.sendto(progress.encode("build", "x", "wrong", Update("insert", 1, 2)), (channel.host, channel.port))
            stranger.sendto(b"not json", (channel.host, channel.port))
        with progress_channel.sending(channel, "build"):
            assert progress_channel.target() == (channel, "build")
            Tracker("insert", 2, "chunks").advance(2)  # the phase's first and last updates are always sent
        assert arrived.wait(10)
        for _ in range(50):  # both datagrams, or give up (never a timing assertion)
            if len(got) == 2:
                break
            arrived.clear()
            arrived.wait(0.2)
    assert [(s, sender, u.done, u.total) for s, sender, u in got] == [("build", "task", 0, 2), ("build", "task", 2, 2)]


def test_terminal_rows_follow_running_stages() -> None:
    from rich.console import Console
    from rich.progress import Progress

    clock = FakeClock()
    live = Progress(console=Console(file=io.StringIO(), force_terminal=True))  # never started: no thread
    display = StageDisplay("index", live.console.file, live, clock=clock)
    display(*_record("running"))
    display.progress("build", "task", Update("insert", 0, 8, "chunks", 0))
    clock.now = 4.0
    display.progress("build", "task", Update("insert", 2, 8, "chunks", 2000))
    rows = {t.description: (t.completed, t.total) for t in live.tasks}
    assert rows["  build: insert: 2/8 chunks (25%) · 500 rows/s · ETA 12s"] == (2, 8)
    assert "index (0/1 stages)" in rows
    display(*_record("done"))
    assert [t.description for t in live.tasks] == ["index (1/1 stages)"]
    assert "stage build: done" in live.console.file.getvalue()


def test_the_log_interval_is_a_positive_number_of_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    from shardwalk.core.errors import ConfigError
    from shardwalk.pipelines.progress import LOG_INTERVAL_S, log_interval

    monkeypatch.delenv("SHARDWALK_PROGRESS_INTERVAL_S", raising=False)
    assert log_interval() == LOG_INTERVAL_S
    monkeypatch.setenv("SHARDWALK_PROGRESS_INTERVAL_S", "5")
    assert log_interval() == 5.0
    for bad in ("0", "-1", "soon"):
        monkeypatch.setenv("SHARDWALK_PROGRESS_INTERVAL_S", bad)
        with pytest.raises(ConfigError, match="SHARDWALK_PROGRESS_INTERVAL_S"):
            log_interval()


def test_stage_lines_give_rows_only_for_stages_that_write_table_rows() -> None:
    from shardwalk.pipelines.progress import _stage_line

    ingest = StageRecord("ingest", "k", "o", status="done", rows=1797, seconds=2.5)
    report = StageRecord("report", "k", "o", status="done", rows=0, seconds=1.0)
    cached = StageRecord("build", "k", "o", status="cached", rows=None)
    assert _stage_line(ingest) == "stage ingest: done in 2.50s (1,797 rows)"
    assert _stage_line(report) == "stage report: done in 1.00s"
    assert _stage_line(cached) == "stage build: cache hit"
