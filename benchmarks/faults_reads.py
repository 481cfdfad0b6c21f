"""bench_faults scenarios of issue 24 items 5-6 and issue 25 items 2-3: pinned reads and the node cache.

Everything runs against moto's S3 server on 127.0.0.1 started here (a second one, for planted `.origin`
files, must receive no request). Scenarios:
  concurrent_save_during_open  a save commits between the driver reading index.json and the shard loading:
                               the answers are those of the attempt the driver opened (in-process shard);
  tiny_node_cache_budget       an index run with a bucket runs dir and a tiny SHARDWALK_LOCAL_CACHE_BYTES
                               finishes, its rerun and export are identical and complete (labels.json too);
  planted_origin               `.origin` files in the runs dir's ancestors and inside an exported index: the
                               run and the query are those without them, the second server gets no request;
  symlinked_cache_root         SHARDWALK_LOCAL_CACHE symlinked to a "home" folder: refused (exit 2), the
                               folder untouched.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.faultkit import CountingServer, refusal_result, run_cli, scenario_result

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900
EXPORT_DATA = ("index", "knn_graph", "labels.json")  # what an export must hold (report.html holds timings)


# ----------------------------------------------------------------------------- local S3 servers


@contextlib.contextmanager
def _moto() -> Iterator[tuple[str, list[str]]]:
    """A request-counting moto S3 server on 127.0.0.1 with a bucket `bench`; yields its endpoint and requests."""
    import pyarrow.fs as pafs

    with CountingServer() as server:
        pafs.S3FileSystem(endpoint_override=server.endpoint, scheme="http", allow_bucket_creation=True,
                          region="us-east-1").create_dir("bench")
        server.requests.clear()  # count only what others send
        yield server.endpoint, server.requests


def _aws(endpoint: str) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true"}


def _shardwalk(args: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    """`shardwalk ARGS` as its own process: exit code, its `shardwalk:` lines, seconds."""
    code, lines, _, seconds = run_cli(args, env)
    return code, lines, seconds


def _files(folder: Path) -> dict[str, bytes]:
    """Every data file under `folder` (not the report: it holds timings)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).parts[0] in EXPORT_DATA}


# ----------------------------------------------------------------------------- concurrent save during open


def concurrent_save_during_open(work: Path, endpoint: str) -> dict[str, Any]:
    """Driver resolves the attempt, another save commits, the shard loads: answers of the opened version."""
    os.environ.update(_aws(endpoint))
    os.environ["SHARDWALK_LOCAL_CACHE"] = str(work / "cache-open")
    from shardwalk.core.index import hnsw, index_store

    uri = "s3://bench/concurrent/idx"
    rng = np.random.default_rng(3)
    xa, xb = rng.normal(size=(500, 16)).astype(np.float32), rng.normal(size=(400, 16)).astype(np.float32)
    _save_one_shard(work / "a", uri, np.arange(500), xa, "l2")
    began = time.perf_counter()
    clean = _open_and_search(work / "clean", uri, xa[:50])
    clean_s = time.perf_counter() - began
    began = time.perf_counter()
    attempt, local = index_store.open_attempt(uri)  # the driver
    space = hnsw.read_index_manifest(local)["space"]
    newer = _save_one_shard(work / "b", uri, np.arange(10_000, 10_400), xb, "ip")  # commits meanwhile
    faulted = _load_and_search(work / "faulted", attempt, xa[:50])
    faulted_s = time.perf_counter() - began
    same = space == "l2" and np.array_equal(faulted, clean)
    return scenario_result("concurrent_save_during_open", True, same, faulted_s, clean_s,
                           f"a save committed {newer.rsplit('/', 1)[-1]} between open and load; the shard answered "
                           "from the attempt the driver opened (in-process shard, moto S3)")


def _save_one_shard(workdir: Path, uri: str, ids: np.ndarray, x: np.ndarray, space: str) -> str:
    from shardwalk.core.index import hnsw, index_store
    from shardwalk.core.index.index_meta import IndexMeta
    from shardwalk.workers.hnsw_actor import LocalHnswShard

    shard = LocalHnswShard(0, 0, str(workdir), 1.0)
    shard.begin_build(len(ids), asdict(hnsw.HnswParams(dim=x.shape[1], space=space, M=8, ef_construction=64)))
    shard.add_pieces((np.asarray(ids, np.int64), x))
    shard.finish_build("bench")
    meta = IndexMeta(1, 1, "hash", space=space, dim=x.shape[1], params=shard.params, shard_sizes=(len(ids),), live=len(ids))
    attempt = index_store.new_attempt(uri)
    return index_store.commit_index(attempt, meta.to_json(), [shard.upload_to(attempt)]).uri


def _load_and_search(workdir: Path, attempt: str, queries: np.ndarray) -> np.ndarray:
    from shardwalk.workers.hnsw_actor import LocalHnswShard

    shard = LocalHnswShard(0, 0, str(workdir), 1.0)
    shard.load_from(attempt)
    return shard.search(queries, 5, 64)[0]


def _open_and_search(workdir: Path, uri: str, queries: np.ndarray) -> np.ndarray:
    from shardwalk.core.index import index_store

    attempt, _ = index_store.open_attempt(uri)
    return _load_and_search(workdir, attempt, queries)


# ----------------------------------------------------------------------------- tiny node-cache budget


def _index_source(quick: bool) -> str:
    return "builtin:digits" if quick else "builtin:mnist5k"


def _index_sets(quick: bool) -> list[str]:
    sets = [f"source={_index_source(quick)}", "shards=2", "k=5", "recall_sample=100", "ef_construction=64"]
    return [a for s in sets for a in ("--set", s)]


def tiny_node_cache_budget(work: Path, endpoint: str, quick: bool) -> tuple[dict[str, Any], Path | None]:
    """Cold run + export with the default budget (clean), then with a tiny one: cold, rerun, each exported."""
    budget = str(200_000 if quick else 3_000_000)
    env = {**_aws(endpoint), "SHARDWALK_LOCAL_CACHE": str(work / "cache-clean")}
    code, msg, clean_s = _shardwalk(["run", "index", "--runs-dir", "s3://bench/clean", *_index_sets(quick),
                                     "--export", str(work / "export-clean")], env)
    if code != 0:
        return scenario_result("tiny_node_cache_budget", False, False, 0.0, clean_s, f"clean run exited {code}: {msg}"), None
    env = {**env, "SHARDWALK_LOCAL_CACHE": str(work / "cache-tiny"), "SHARDWALK_LOCAL_CACHE_BYTES": budget}
    runs = ["run", "index", "--runs-dir", "s3://bench/tiny", *_index_sets(quick)]
    code, msg, faulted_s = _shardwalk([*runs, "--export", str(work / "export-tiny")], env)
    again, msg2, _ = _shardwalk([*runs, "--export", str(work / "export-rerun")], env)
    cold, rerun, clean = (_files(work / f"export-{n}") for n in ("tiny", "rerun", "clean"))
    complete = all((work / "export-tiny" / name).exists() for name in EXPORT_DATA)
    same = bool(cold) and cold == rerun and sorted(cold) == sorted(clean)
    note = (f"budget {int(budget):,} B; cold exit {code}, rerun exit {again}; export complete: {complete} "
            f"({len(cold)} files){'; ' + msg if msg else ''}{'; ' + msg2 if msg2 else ''}")
    ok = code == 0 and again == 0 and complete
    return scenario_result("tiny_node_cache_budget", ok, same, faulted_s, clean_s, note), work / "export-tiny" / "index"


# ----------------------------------------------------------------------------- planted .origin


def _queries(path: Path, source: str) -> Path:
    """50 queries of the indexed data set's own dimension."""
    from shardwalk.core.data.builtin import load_builtin

    table = load_builtin(source).slice(0, 50)
    pq.write_table(pa.table({"id": table.column("id"), "vector": table.column("vector")}), path)
    return path


def _answers(out: Path) -> Any:
    return pq.read_table(out).sort_by("id").select(["id", "neighbors"]).to_pylist() if out.exists() else None


def planted_origin(work: Path, endpoint: str, index_dir: Path | None, quick: bool) -> dict[str, Any]:
    """An ingest run under folders holding `.origin` (pointing at a second server), and a query of an exported
    index holding one: results equal those without, and the second server received nothing."""
    with _moto() as (second, seen):
        planted = f"s3://bench/planted?endpoint_override={second.split('//')[1]}&scheme=http"
        env = {**_aws(endpoint), "SHARDWALK_LOCAL_CACHE": str(work / "cache-origin")}
        sets = ["--set", "source=builtin:digits"]
        clean_code, _, clean_s = _shardwalk(["run", "ingest", "--runs-dir", str(work / "clean" / "runs"), *sets], env)
        team = work / "team"
        team.mkdir(parents=True, exist_ok=True)
        for folder in (work, team):
            (folder / ".origin").write_text(planted)
        code, msg, faulted_s = _shardwalk(["run", "ingest", "--runs-dir", str(team / "runs"), *sets], env)
        same = clean_code == code == 0 and _cache_files(work / "clean" / "runs") == _cache_files(team / "runs")
        note = f"runs dir's ancestors planted: run exit {code}"
        if index_dir is not None and index_dir.is_dir():
            queries = _queries(work / "queries.parquet", _index_source(quick))
            query = ["query", str(index_dir), "--queries", str(queries), "-k", "5"]
            _shardwalk([*query, "--out", str(work / "answers-clean")], env)
            (index_dir / ".origin").write_text(planted)
            qcode, qmsg, _ = _shardwalk([*query, "--out", str(work / "answers-planted")], env)
            answers = _answers(work / "answers-planted")
            same = same and qcode == 0 and answers is not None and answers == _answers(work / "answers-clean")
            note += f"; exported index planted: query exit {qcode}{'; ' + qmsg if qmsg else ''}"
        note += f"; requests to the second server: {len(seen)} {seen[:3] if seen else ''}"
        same = same and not seen
    return scenario_result("planted_origin", code == 0, same, faulted_s, clean_s, note + (f"; {msg}" if msg else ""))


def _cache_files(runs: Path) -> dict[str, bytes]:
    """The committed stage outputs' data files (not manifests: they hold timings)."""
    return {str(p.relative_to(runs / "cache")).split("/", 1)[-1]: p.read_bytes()
            for p in sorted((runs / "cache").rglob("*.parquet"))} if (runs / "cache").is_dir() else {}


# ----------------------------------------------------------------------------- symlinked cache root


def symlinked_cache_root(work: Path, endpoint: str) -> dict[str, Any]:
    """SHARDWALK_LOCAL_CACHE is a symlink to a folder holding a user's files, with a 1-byte budget."""
    home = work / "home"
    for name in ("Documents", "photos"):
        (home / name).mkdir(parents=True, exist_ok=True)
        (home / name / "keep.txt").write_text(f"{name} of the user")
    link = work / "cache-link"
    if not link.is_symlink():
        link.symlink_to(home, target_is_directory=True)
    before = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    env = {**_aws(endpoint), "SHARDWALK_LOCAL_CACHE": str(link), "SHARDWALK_LOCAL_CACHE_BYTES": "1"}
    code, msg, seconds = _shardwalk(["run", "index", "--runs-dir", "s3://bench/linked", *_index_sets(True)], env)
    untouched = sorted(str(p.relative_to(home)) for p in home.rglob("*")) == before
    ok = untouched and "symlink" in msg and str(link) in msg
    return refusal_result("symlinked_cache_root", code, 2, msg, ok, seconds,
                          f"link target untouched: {untouched} ({len(before)} entries)")


def scenarios(work: Path, quick: bool) -> list[dict[str, Any]]:
    """Every scenario of this module, against a local S3 server started here."""
    work.mkdir(parents=True, exist_ok=True)
    saved = dict(os.environ)
    try:
        with _moto() as (endpoint, _):
            out = [concurrent_save_during_open(work / "open", endpoint)]
            tiny, index_dir = tiny_node_cache_budget(work / "tiny", endpoint, quick)
            out += [tiny, planted_origin(work / "origin", endpoint, index_dir, quick), symlinked_cache_root(work / "link", endpoint)]
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return out
