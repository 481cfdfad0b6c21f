"""core/storage/publish.py: canonical locations and a swap that Ctrl-C never splits (pure, no Ray)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from shardwalk.core.storage import publish
from shardwalk.core.storage.location import canonical


def test_locations_compare_canonically(tmp_path: Path) -> None:
    assert canonical("s3://b/x/y/?endpoint_override=127.0.0.1:9&scheme=http") == "s3://b/x/y"
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert publish.overlaps(tmp_path / "link", f"file://{tmp_path}/real/runs")  # a symlink to the runs dir's parent
    assert publish.overlaps("s3://b/x?endpoint_override=h:1", "s3://b/x/runs") and not publish.overlaps("s3://b/x", "s3://b/xy")
    assert not publish.overlaps(tmp_path / "b", "s3://b")
    assert publish.is_bucket_root("s3://b/") and not publish.is_bucket_root("s3://b/p") and not publish.is_bucket_root("/b")


def test_ctrl_c_between_the_two_renames_of_a_swap_waits_until_the_new_result_is_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final, tmp = tmp_path / "out", tmp_path / ".tmp-out"
    for d, text in ((final, "old"), (tmp, "new")):
        d.mkdir()
        (d / "a.txt").write_text(text)
    rename = os.rename

    def interrupted(src: str, dst: str) -> None:
        rename(src, dst)
        if Path(dst).name.startswith(".old-"):  # the old result has just moved aside
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, "rename", interrupted)
    # Ctrl-C as a user's shell delivers it: Python's own handler (a pytest-xdist worker ignores SIGINT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            publish.swap_dir(tmp, final)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (final / "a.txt").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
