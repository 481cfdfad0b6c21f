"""Issue 17 hardening on the session Ray: a walk's damaged checkpoint, and --force starting it from scratch."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from shardwalk.core.dag.attempt import state_dir

pytestmark = pytest.mark.ray

SRRW = ["--set=steps=1200", "--set=checkpoint_every=500", "--set=record_every=400", "--set=alpha=5.0"]


def _stage(runs: Path, run_id: str, name: str) -> dict:
    return json.loads((runs / "runs" / run_id / "run.json").read_text())["stages"][name]


def _last_run(runs: Path) -> str:
    return max((runs / "runs").glob("*/run.json"), key=lambda p: p.stat().st_mtime).parent.name


def test_a_damaged_walk_checkpoint_names_the_way_out_and_force_recomputes(ray_local, tmp_path, capsys) -> None:
    from shardwalk.pipelines.cli import main

    runs = tmp_path / "runs"
    args = ["run", "srrw", "--runs-dir", str(runs), *SRRW]
    assert main(args) == 0
    walk = Path(_stage(runs, _last_run(runs), "walk")["output"])
    clean = pq.read_table(walk / "tokens.parquet").column("theta").to_pylist()
    state = state_dir(walk)
    assert not state.exists()  # a committed walk keeps no checkpoints
    shutil.rmtree(walk)  # as if the walk had been killed mid-way, leaving a checkpoint that was then damaged
    state.mkdir()
    (state / "token-0.json").write_text('{"node": 8, "n": 500}')
    capsys.readouterr()
    assert main(args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("shardwalk:")]
    assert len(lines) == 1 and "token-0.json" in lines[0] and f"delete {state}" in lines[0] and "--force" in lines[0]
    assert main([*args, "--force"]) == 0
    assert pq.read_table(walk / "tokens.parquet").column("theta").to_pylist() == clean
    assert not state.exists()


def _listening(pids: set[int]) -> list[str]:
    """host:port of every listening TCP socket owned by `pids` (from /proc, Linux)."""
    return _sockets(pids, {"0A"}, 1)  # 0A = LISTEN


def _dialled(pids: set[int]) -> list[str]:
    """Remote host:port of every TCP socket owned by `pids` that is connected or connecting (from /proc, Linux)."""
    return _sockets(pids, {"01", "02"}, 2)  # ESTABLISHED, SYN_SENT


def _sockets(pids: set[int], states: set[str], column: int) -> list[str]:
    inodes = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] in states and fields[9] in inodes:
                host, port = fields[column].split(":")
                found.append(f"{host}:{int(port, 16)}")
    return found


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


LOOPBACK_HEX = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="reads Linux /proc")
def test_the_embedded_ray_listens_and_dials_on_loopback_only(ray_local) -> None:
    """Every server of the embedded Ray, its workers' included, on 127.0.0.1, and every connection between them
    (the dashboard agent's HTTP port is Ray's default 52365: `ray.init` has no public setting for it)."""
    import ray

    node = ray.nodes()[0]
    assert node["NodeManagerAddress"] == "127.0.0.1"

    @ray.remote
    def warm() -> int:
        return os.getpid()

    ray.get(warm.remote())
    sockets = _listening(_descendants(os.getpid()))
    assert len(sockets) >= 3, sockets  # GCS, raylet, agents at least: the check saw Ray's processes
    assert all(s.split(":")[0] in LOOPBACK_HEX for s in sockets), sockets
    peers = _dialled(_descendants(os.getpid()))
    assert peers, peers  # the driver's own connections to the GCS and raylet at least
    assert all(p.split(":")[0] in LOOPBACK_HEX for p in peers), peers  # nothing of ours dials a routable address


def test_after_the_first_error_of_a_fan_out_ray_stops_logging_the_others(ray_local, monkeypatch) -> None:
    import ray

    from shardwalk.core.errors import DataError
    from shardwalk.workers.quiet import QUIET, get_all

    monkeypatch.delenv(QUIET, raising=False)

    @ray.remote
    def shard(i: int) -> int:
        raise DataError(f"shard {i}: bad row")

    assert get_all([ray.put(1)]) == [1] and QUIET not in os.environ  # no error, no change
    with pytest.raises(ray.exceptions.RayTaskError, match=r"shard [0-2]: bad row"):  # whichever failed first
        get_all([shard.remote(i) for i in range(3)])
    assert os.environ[QUIET] == "1"  # Ray reads it before logging an uncollected error as 'Unhandled'


def test_too_many_shards_are_refused_before_any_stage_runs(ray_local, tmp_path, capsys) -> None:
    """shards=1000 on digits started 121 actors and took 11 GB; now the session's 2 CPUs allow 8."""
    from shardwalk.pipelines.cli import main

    runs = tmp_path / "runs"
    code = main(["run", "index", "--runs-dir", str(runs), "--set", "source=builtin:digits", "--set", "shards=1000"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("shardwalk:")]
    assert code == 2
    assert len(lines) == 1 and "would start 1000 actors" in lines[0] and "SHARDWALK_MAX_ACTORS" in lines[0], lines
    assert not list((runs / "cache").glob("*-*"))  # refused before the first stage ran
    (record,) = [json.loads(p.read_text()) for p in (runs / "runs").glob("*/run.json")]
    assert record["status"] == "failed" and "would start 1000 actors" in record["error"]
