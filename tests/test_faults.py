"""Single-node fault injection: killed shard actors, corrupt artifacts, corrupt checkpoints, bad input files.

Every test injects one fault and checks that nothing is lost: either the job finishes with the result of a
fault-free run, or it refuses with a typed error naming the damaged file and leaves nothing committed.
Multi-node faults (node loss) live in tests/test_faults_multinode.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray

from shardwalk.core.data.builtin import synthetic
from shardwalk.core.data.schema import from_numpy
from shardwalk.core.errors import CorruptArtifactError, DataError, ShardUnavailableError
from shardwalk.core.index import hnsw
from shardwalk.core.storage.files import MANIFEST

pytestmark = pytest.mark.ray

N, D = 1500, 16
# One hnswlib thread and no reserved CPUs: the build is deterministic, so two builds are bit-identical.
FAST: dict[str, Any] = {"M": 8, "ef_construction": 64, "cpus_per_actor": 0}


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return synthetic(n=N, d=D, seed=11)[0]


@pytest.fixture(scope="module")
def queries(data: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(3)
    return data[rng.choice(N, 300, replace=False)] + rng.normal(scale=0.05, size=(300, D)).astype(np.float32)


@pytest.fixture(scope="module")
def clean(_ray_module: None, data: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fault-free answer every faulted run must reproduce exactly."""
    from shardwalk.workers.sharded_index import ShardedIndex

    with ShardedIndex.build(data, shards=2, **FAST) as index:
        result = index.search(queries, k=10, ef=64, batch_size=4)
    return result.ids, result.dists


@pytest.fixture(scope="module")
def _ray_module() -> None:
    """Module-scoped twin of `ray_local` (the same session Ray) for the module-scoped fixtures."""
    from shardwalk.pipelines.runtime import connect

    if not ray.is_initialized():
        connect(num_cpus=2)


def _wait_restarted(actor: Any, old_pid: int, timeout: float = 60.0) -> dict[str, Any]:
    """Poll the actor until a new incarnation answers (calls made while it restarts fail)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            stats = ray.get(actor.stats.remote(), timeout=timeout)
            if stats["pid"] != old_pid:
                return stats
        except ray.exceptions.RayActorError:
            pass
        assert time.monotonic() < deadline, "the killed actor did not come back"
        time.sleep(0.1)


def _pid(actor: Any) -> int:
    return ray.get(actor.stats.remote())["pid"]


def _kill_on(monkeypatch: pytest.MonkeyPatch, step: str, victim: Callable[[], Any]) -> list[int]:
    """Kill (restartable) the actor `victim()` when ShardedIndex reaches the `raykit.wait_all` named `step`.

    Returns a list that receives the victim's pid once the kill happened (empty: the step never came).
    """
    from shardwalk.workers import raykit

    real, killed = raykit.wait_all, []

    def wait(refs: list[Any], what: str, timeout: float | None = None) -> list[Any]:
        if what == step and not killed:
            actor = victim()
            killed.append(_pid(actor) if step != "insert pieces" else -1)
            ray.kill(actor, no_restart=False)
        return real(refs, what, timeout)

    monkeypatch.setattr(raykit, "wait_all", wait)
    return killed


# ----------------------------------------------------------------------------- HnswShard actor killed


def test_actor_killed_after_persisting_its_shard_mid_build(
    _ray_module: None, monkeypatch: pytest.MonkeyPatch, data: np.ndarray, queries: np.ndarray, clean: tuple
) -> None:
    """Killed while the build is still running (adding replicas): it reloads its persisted shard."""
    from shardwalk.workers.sharded_index import ShardedIndex

    holder: dict[str, Any] = {}
    original = ShardedIndex._add_replicas

    def add_replicas(self: ShardedIndex, cpus: float) -> None:
        holder["index"] = self
        original(self, cpus)

    monkeypatch.setattr(ShardedIndex, "_add_replicas", add_replicas)
    killed = _kill_on(monkeypatch, "start replicas", lambda: holder["index"].actors[1][0])
    with ShardedIndex.build(data, shards=2, replicas=2, **FAST) as index:
        assert killed, "the fault was not injected"
        stats = _wait_restarted(index.actors[1][0], killed[0])
        assert stats["reconstructed"] and stats["live"] > 0
        ids, dists = index.search(queries, k=10, ef=64, batch_size=4)
    np.testing.assert_array_equal(ids, clean[0])
    np.testing.assert_array_equal(dists, clean[1])


def test_actor_killed_while_building_its_shard(
    _ray_module: None, monkeypatch: pytest.MonkeyPatch, data: np.ndarray, queries: np.ndarray, clean: tuple
) -> None:
    """Issue 6: kill an HnswShard during build → the build completes and search equals a fault-free run."""
    from shardwalk.workers.sharded_index import ShardedIndex

    spawned: list[Any] = []
    original = ShardedIndex._spawn

    def spawn(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        spawned.extend(row[0] for row in out[0])
        return out

    monkeypatch.setattr(ShardedIndex, "_spawn", staticmethod(spawn))
    killed = _kill_on(monkeypatch, "insert pieces", lambda: spawned[1])
    with ShardedIndex.build(data, shards=2, **FAST) as index:
        assert killed, "the fault was not injected"
        assert all(row[0] not in spawned for row in index.actors), "the build did not start again with new actors"
        ids, dists = index.search(queries, k=10, ef=64, batch_size=4)
    np.testing.assert_array_equal(ids, clean[0])
    np.testing.assert_array_equal(dists, clean[1])


def test_build_gives_up_after_its_restarts(
    _ray_module: None, monkeypatch: pytest.MonkeyPatch, data: np.ndarray, tmp_path: Path
) -> None:
    """A primary dying on every attempt ends in ShardUnavailableError, and the working directory is removed."""
    import shardwalk.workers.sharded_index as hs
    from shardwalk.workers import index_actors, raykit

    monkeypatch.setattr(hs, "BUILD_RESTARTS", 1)
    real, killed = raykit.wait_all, []

    def wait(refs: list[Any], what: str, timeout: float | None = None) -> list[Any]:
        if what == "build shards" and started[-1] not in killed:  # once per attempt: its shard-0 primary
            killed.append(started[-1])
            ray.kill(started[-1], no_restart=False)
        return real(refs, what, timeout)

    started: list[Any] = []
    original = index_actors.start_primaries

    def start(*args: Any, **kwargs: Any) -> list[list[Any]]:
        out = original(*args, **kwargs)
        started.append(out[0][0])
        return out

    monkeypatch.setattr(index_actors, "start_primaries", start)
    monkeypatch.setattr(raykit, "wait_all", wait)
    with pytest.raises(ShardUnavailableError, match="a shard actor died"):
        hs.ShardedIndex.build(data, shards=2, workdir=tmp_path, **FAST)
    assert len(started) == len(killed) == 2, "one first attempt plus BUILD_RESTARTS=1 restart"
    assert list(tmp_path.iterdir()) == [], "the failed build left files behind"


def _search_killing(index: Any, queries: np.ndarray, victim: Any, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """Run a many-batch search and kill `victim` when the driver first waits for a shard's answer."""
    real_get, state = ray.get, {"pid": _pid(victim)}
    # Keep the victim busy with one long call, so every batch it is sent is still queued when it dies.
    blocker = np.random.default_rng(0).normal(size=(40_000, queries.shape[1])).astype(np.float32)
    victim.search.remote(blocker, 10, 400)

    def get(refs: Any, *args: Any, **kwargs: Any) -> Any:
        if not state.get("killed"):
            state["killed"] = True
            ray.kill(victim, no_restart=False)
        return real_get(refs, *args, **kwargs)

    monkeypatch.setattr(ray, "get", get)
    try:
        result = index.search(queries, k=10, ef=64, batch_size=4)
    finally:
        monkeypatch.setattr(ray, "get", real_get)
    assert state.get("killed"), "the fault was not injected"
    return result, state["pid"]



def test_replicated_shard_killed_during_batch_search(
    _ray_module: None, monkeypatch: pytest.MonkeyPatch, data: np.ndarray, queries: np.ndarray, clean: tuple
) -> None:
    """With 2 replicas the search fails over and the killed replica restarts from its persisted shard."""
    from shardwalk.workers.sharded_index import ShardedIndex

    with ShardedIndex.build(data, shards=2, replicas=2, **FAST) as index:
        victim = index.actors[0][0]
        (ids, dists), pid = _search_killing(index, queries, victim, monkeypatch)
        assert _wait_restarted(victim, pid)["reconstructed"]
        again = index.search(queries, k=10, ef=64, batch_size=4)  # the restarted replica answers again
    np.testing.assert_array_equal(ids, clean[0])
    np.testing.assert_array_equal(dists, clean[1])
    np.testing.assert_array_equal(again.ids, clean[0])


def test_single_replica_shard_killed_during_batch_search(
    _ray_module: None, monkeypatch: pytest.MonkeyPatch, data: np.ndarray, queries: np.ndarray, clean: tuple
) -> None:
    """Issue 6: the killed actor restarts, reloads its persisted shard and the search result is identical.

    Once the restarted actor has answered one retry, the other batches queued on it when it died are sent
    again at once: waiting for a restart happens once, not once per batch (75 batches here: 19 s of waits)."""
    from types import SimpleNamespace

    from shardwalk.workers import index_search
    from shardwalk.workers.sharded_index import ShardedIndex

    waits: list[float] = []
    monkeypatch.setattr(index_search, "time", SimpleNamespace(sleep=lambda s: (waits.append(s), time.sleep(s))))
    with ShardedIndex.build(data, shards=2, **FAST) as index:
        (ids, dists), _ = _search_killing(index, queries, index.actors[1][0], monkeypatch)
    np.testing.assert_array_equal(ids, clean[0])
    np.testing.assert_array_equal(dists, clean[1])
    assert len(waits) <= index_search.RESTART_RETRIES  # the backoff of one restart, not one per queued batch


# ----------------------------------------------------------------------------- corrupt index artifacts


@pytest.fixture(scope="module")
def saved(_ray_module: None, data: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pristine saved index; tests corrupt copies of it."""
    from shardwalk.workers.sharded_index import ShardedIndex

    path = tmp_path_factory.mktemp("saved") / "index"
    with ShardedIndex.build(data, shards=2, **FAST) as index:
        index.save(path)
    return path


@pytest.fixture
def copy(saved: Path, tmp_path: Path) -> Path:
    target = tmp_path / "index"
    shutil.copytree(saved, target)
    return target


def _open(path: Path) -> None:
    from shardwalk.workers.sharded_index import ShardedIndex

    ShardedIndex.open(path).close()


def test_pristine_copy_opens_and_answers(copy: Path, queries: np.ndarray, clean: tuple) -> None:
    """The control for the corruption tests below: an untouched copy opens and answers exactly."""
    from shardwalk.workers.sharded_index import ShardedIndex

    with ShardedIndex.open(copy) as index:
        ids, _ = index.search(queries, k=10, ef=64, batch_size=4)
    np.testing.assert_array_equal(ids, clean[0])


def test_flipped_byte_in_a_shard_file_is_refused_naming_it(copy: Path) -> None:
    shard = copy / hnsw.shard_file(1)
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit in the middle of the graph data
    shard.write_bytes(bytes(raw))
    with pytest.raises(CorruptArtifactError, match=f"{shard.name}: checksum does not match"):
        _open(copy)


def test_truncated_shard_file_is_refused_naming_it(copy: Path) -> None:
    shard = copy / hnsw.shard_file(0)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CorruptArtifactError, match=shard.name):
        _open(copy)


def test_deleted_shard_file_is_refused_naming_it(copy: Path) -> None:
    (copy / hnsw.shard_file(1)).unlink()
    with pytest.raises(CorruptArtifactError, match=f"{hnsw.shard_file(1)}: listed in the shard manifest but missing"):
        _open(copy)


def test_edited_shard_manifest_checksum_is_refused(copy: Path) -> None:
    path = copy / hnsw.shard_manifest_file(0)
    manifest = json.loads(path.read_text())
    name = hnsw.shard_file(0)
    manifest["files"][name] = "0" * 64
    path.write_text(json.dumps(manifest))
    # the saved index's own manifest catches the edited shard manifest before any shard loads
    with pytest.raises(CorruptArtifactError, match=f"{path.name}: checksum does not match"):
        _open(copy)


@pytest.mark.parametrize("edit", ["garbage", "other_shard"])
def test_unreadable_or_swapped_shard_manifest_is_refused_naming_it(copy: Path, edit: str) -> None:
    path = copy / hnsw.shard_manifest_file(1)
    if edit == "garbage":
        path.write_text('{"format": ')
    else:
        shutil.copyfile(copy / hnsw.shard_manifest_file(0), path)  # claims to be shard 0
    with pytest.raises(CorruptArtifactError, match=path.name):
        _open(copy)


def test_edited_live_count_in_shard_manifest_names_the_file(copy: Path) -> None:
    path = copy / hnsw.shard_manifest_file(0)
    manifest = json.loads(path.read_text())
    manifest["live"] += 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(CorruptArtifactError, match=str(copy)):
        _open(copy)


def test_edited_index_json_is_refused(copy: Path) -> None:
    path = copy / hnsw.INDEX_FILE
    meta = json.loads(path.read_text())
    meta["params"]["M"] = 48  # a silent lie about how the index was built
    path.write_text(json.dumps(meta))
    with pytest.raises(CorruptArtifactError, match=hnsw.INDEX_FILE):
        _open(copy)


def test_index_json_with_a_missing_key_is_refused_naming_it(copy: Path) -> None:
    path = copy / hnsw.INDEX_FILE
    meta = json.loads(path.read_text())
    del meta["shards"]
    path.write_text(json.dumps(meta))
    with pytest.raises(CorruptArtifactError, match=f"{hnsw.INDEX_FILE}: missing key 'shards'"):
        _open(copy)


def test_directories_that_are_not_an_index_are_refused(copy: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a shardwalk index"):
        _open(tmp_path / "empty")
    with pytest.raises(DataError, match="not a directory"):
        _open(copy / hnsw.shard_file(0))
    (copy / hnsw.INDEX_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DataError, match="not a shardwalk index manifest"):
        _open(copy)
    assert (copy / MANIFEST).is_file()  # refusing never touched the files


def _plant_escaping_entry(copy: Path, rel: str) -> Path:
    """The issue's repro: a shard manifest lists `rel` with the sha256 of a payload planted where it points."""
    payload = copy.parent / "probe.txt"
    payload.write_text("written by a hostile manifest")
    path = copy / hnsw.shard_manifest_file(0)
    manifest = json.loads(path.read_text())
    manifest["files"][rel] = hashlib.sha256(payload.read_bytes()).hexdigest()
    path.write_text(json.dumps(manifest))
    (copy / MANIFEST).unlink()  # so the top-level checksums do not catch the edit first
    return payload


@pytest.mark.parametrize("rel", ["../probe.txt", "sub/../../probe.txt", "/abs/probe.txt"])
def test_a_manifest_path_escaping_the_index_writes_nothing(copy: Path, tmp_path: Path, rel: str) -> None:
    """Security: keys of a shard manifest are confined to the index directory before any file operation."""
    _plant_escaping_entry(copy, rel)
    before = sorted(p.relative_to(tmp_path.parent) for p in tmp_path.parent.rglob("*"))
    with pytest.raises(CorruptArtifactError, match="not committed"):
        _open(copy)
    with pytest.raises(CorruptArtifactError, match="unsafe path|leads outside"):
        hnsw.load_shard_manifest(copy, 0)  # the shard's own check, which the actor runs before linking
    assert sorted(p.relative_to(tmp_path.parent) for p in tmp_path.parent.rglob("*")) == before


def test_confined_refuses_escapes_and_symlinks(tmp_path: Path) -> None:
    from shardwalk.core.storage.files import confined

    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    assert confined(root, "a/b.bin", "manifest") == root / "a" / "b.bin"
    for rel in ["../x", "a/../../x", "/etc/passwd", "", "./x", "a//b", "link/x", "a\\..\\x"]:
        with pytest.raises(CorruptArtifactError, match="manifest"):
            confined(root, rel, "manifest")


def test_an_index_without_its_commit_marker_is_refused(copy: Path) -> None:
    (copy / MANIFEST).unlink()
    with pytest.raises(CorruptArtifactError, match="not committed"):
        _open(copy)


def test_query_cli_refuses_a_hostile_index_with_exit_2(copy: Path, queries: np.ndarray, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from shardwalk.pipelines.cli import main

    payload = _plant_escaping_entry(copy, "../probe.txt")
    qfile = tmp_path / "q.parquet"
    pq.write_table(from_numpy(queries[:5]), qfile)
    workdir = copy.parent
    assert main(["query", str(copy), "--queries", str(qfile), "-k", "3"]) == 2
    assert "not committed" in capsys.readouterr().err
    assert payload.read_text() == "written by a hostile manifest"
    assert sorted(p.name for p in workdir.iterdir()) == sorted(["index", "probe.txt", "q.parquet"])


# ----------------------------------------------------------------------------- corrupt input to a pipeline


def _committed(runs: Path) -> list[str]:
    cache = runs / "cache"
    return sorted(p.name for p in cache.iterdir() if (p / MANIFEST).is_file()) if cache.is_dir() else []


@pytest.mark.parametrize("damage", ["truncated"])
def test_damaged_parquet_input_exits_2_naming_the_file(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    from shardwalk.pipelines.cli import main

    source = tmp_path / "in"
    source.mkdir()
    x = synthetic(n=400, d=8, seed=1)[0]
    pq.write_table(from_numpy(x[:200], ids=np.arange(200)), source / "a.parquet")
    pq.write_table(from_numpy(x[200:], ids=np.arange(200, 400)), source / "b.parquet")
    bad = source / "b.parquet"
    raw = bad.read_bytes()
    if damage == "truncated":
        bad.write_bytes(raw[: len(raw) * 2 // 3])
    else:  # the footer length / magic lives in the last 8 bytes
        bad.write_bytes(raw[:-6] + bytes(b ^ 0xFF for b in raw[-6:]))
    runs = tmp_path / "runs"
    code = main(["run", "index", "--runs-dir", str(runs), "--set", f"source={source}", "--set", "shards=2"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("shardwalk:")]
    assert code == 2, err
    assert len(lines) == 1 and "b.parquet" in lines[0], err
    assert "Traceback" not in err
    assert _committed(runs) == []


# ----------------------------------------------------------------------------- corrupt token checkpoints


@pytest.fixture(scope="module")
def walk_setup() -> tuple[Any, Any]:
    from benchmarks.faultkit import walk_problem

    return walk_problem()


WALK = {"alpha": 5.0, "seed": 6, "tokens": 2, "partitions": 2}


@pytest.fixture(scope="module")
def _pristine_checkpoint(_ray_module: None, walk_setup: tuple, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shardwalk.workers.walker import run_distributed_sa_srrw

    obj, graph = walk_setup
    ckpt = tmp_path_factory.mktemp("walk") / "ckpt"
    run_distributed_sa_srrw(obj, graph, steps=300, checkpoint_dir=ckpt, checkpoint_every=100, **WALK)
    return ckpt


@pytest.fixture
def checkpoint(_pristine_checkpoint: Path, tmp_path: Path) -> Path:
    """A private copy of a 300-step checkpoint (tests damage it)."""
    return Path(shutil.copytree(_pristine_checkpoint, tmp_path / "ckpt"))


def _resume(walk_setup: tuple, ckpt: Path) -> Any:
    from shardwalk.workers.walker import run_distributed_sa_srrw

    obj, graph = walk_setup
    return run_distributed_sa_srrw(obj, graph, steps=600, checkpoint_dir=ckpt, checkpoint_every=100, resume=True,
                                   timeout=120, **WALK)


def test_intact_checkpoint_resumes_to_the_reference(walk_setup: tuple, checkpoint: Path) -> None:
    """The control: resuming an untouched checkpoint gives the uninterrupted reference trajectory."""
    from shardwalk.core.srrw import run_sa_srrw

    obj, graph = walk_setup
    ref = run_sa_srrw(obj, graph, steps=600, alpha=5.0, seed=6, tokens=2)
    resumed = _resume(walk_setup, checkpoint)
    for got, want in zip(resumed.tokens, ref.tokens):
        np.testing.assert_array_equal(got.theta, want.theta)


@pytest.mark.parametrize("array", ["theta", "logy"])
def test_flipped_byte_in_a_token_array_is_refused_naming_it(walk_setup: tuple, checkpoint: Path, array: str) -> None:
    meta = json.loads((checkpoint / "token-1.json").read_text())
    target = checkpoint / meta["files"][array]["file"]
    raw = bytearray(target.read_bytes())
    raw[-3] ^= 0x10  # inside the data, after the .npy header
    target.write_bytes(bytes(raw))
    before = sorted(p.name for p in checkpoint.iterdir())
    with pytest.raises(CorruptArtifactError, match=f"{target.name}: missing or checksum does not match"):
        _resume(walk_setup, checkpoint)
    assert sorted(p.name for p in checkpoint.iterdir()) == before  # nothing was overwritten


def test_missing_token_array_is_refused_naming_it(walk_setup: tuple, checkpoint: Path) -> None:
    meta = json.loads((checkpoint / "token-0.json").read_text())
    target = checkpoint / meta["files"]["theta"]["file"]
    target.unlink()
    with pytest.raises(CorruptArtifactError, match=target.name):
        _resume(walk_setup, checkpoint)


@pytest.mark.parametrize("edit", ["truncated", "no_files", "not_json"])
def test_damaged_token_manifest_is_refused_naming_it(walk_setup: tuple, checkpoint: Path, edit: str) -> None:
    path = checkpoint / "token-0.json"
    text = path.read_text()
    if edit == "truncated":
        path.write_text(text[: len(text) // 2])
    elif edit == "no_files":
        meta = json.loads(text)
        del meta["files"]
        path.write_text(json.dumps(meta))
    else:
        path.write_bytes(b"\x00\xff\xfe garbage")
    with pytest.raises(CorruptArtifactError, match="token-0.json"):
        _resume(walk_setup, checkpoint)


def test_resume_refuses_a_checkpoint_of_other_settings(walk_setup: tuple, checkpoint: Path) -> None:
    from shardwalk.core.errors import ConfigError
    from shardwalk.core.storage.store import read_json_sealed, write_json_sealed
    from shardwalk.workers.walker import RUN_META

    meta = read_json_sealed(checkpoint / RUN_META, "checkpoint run record")
    meta["alpha"] = 0.5
    write_json_sealed(checkpoint / RUN_META, meta)  # a genuine checkpoint of another walk
    with pytest.raises(ConfigError, match="different settings"):
        _resume(walk_setup, checkpoint)


def test_an_edited_checkpoint_run_record_is_refused(walk_setup: tuple, checkpoint: Path) -> None:
    from shardwalk.workers.walker import RUN_META

    path = checkpoint / RUN_META
    path.write_text(path.read_text().replace('"alpha": 5.0', '"alpha": 0.5'))
    with pytest.raises(CorruptArtifactError, match="checkpoint run record does not match its checksum"):
        _resume(walk_setup, checkpoint)


def test_an_earlier_versions_checkpoint_starts_over(walk_setup: tuple, checkpoint: Path) -> None:
    """Checkpoints whose settings record has the old name (`run.json`) are not resumed: the walk starts over,
    so their tokens are never read (here one is garbage), and it still ends on the reference trajectory."""
    from shardwalk.core.srrw import run_sa_srrw
    from shardwalk.workers.walker import RUN_META

    assert RUN_META == "checkpoint.json"
    (checkpoint / RUN_META).rename(checkpoint / "run.json")
    (checkpoint / "token-0.json").write_bytes(b"\x00 not a token")
    obj, graph = walk_setup
    ref = run_sa_srrw(obj, graph, steps=600, alpha=5.0, seed=6, tokens=2)
    resumed = _resume(walk_setup, checkpoint)
    for got, want in zip(resumed.tokens, ref.tokens):
        np.testing.assert_array_equal(got.theta, want.theta)
    assert (checkpoint / RUN_META).is_file()


def test_an_edited_token_node_is_refused(walk_setup: tuple, checkpoint: Path) -> None:
    """Changing `"node"` in a token's JSON used to resume (and commit) a different walk with exit 0."""
    path = checkpoint / "token-0.json"
    meta = json.loads(path.read_text())
    path.write_text(path.read_text().replace(f'"node": {meta["node"]}', f'"node": {meta["node"] + 1}'))
    with pytest.raises(CorruptArtifactError, match="token-0.json: token checkpoint does not match its checksum"):
        _resume(walk_setup, checkpoint)


# ----------------------------------------------------------------------------- a corrupted cached stage output


def test_corrupted_cached_output_is_rerun_or_refused(ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A flipped byte inside a committed stage output must not be served silently on the next run."""
    from shardwalk.core.storage.files import verify_dir
    from shardwalk.pipelines.cli import main

    runs = tmp_path / "runs"
    args = ["run", "ingest", "--runs-dir", str(runs), "--set", "source=builtin:digits", "--set", "shards=2"]
    assert main(args) == 0
    (stage,) = [p for p in (runs / "cache").glob("ingest-*") if (p / MANIFEST).is_file()]
    part = sorted(stage.glob("part-*.parquet"))[0]
    pristine = part.read_bytes()
    raw = bytearray(pristine)
    raw[len(raw) // 2] ^= 0x01  # same size: only the checksum can tell
    part.write_bytes(bytes(raw))
    code = main(args)
    err = capsys.readouterr().err
    if code == 2:
        assert part.name in err
    else:
        assert code == 0
        verify_dir(stage)  # the rerun recomputed the stage: its files match their manifest again
        assert part.read_bytes() == pristine
