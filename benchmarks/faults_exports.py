"""bench_faults safety scenarios for user-facing outputs (issue 24 items 1 and 7): exports and `query --out`.

  query_out_twice                  `query --out s3://…` twice: the second without --overwrite is refused (exit 2),
                                   with it the prefix reads back as exactly one result, equal to a clean query's.
  export_overwrite_foreign_folder  `export latest DIR --overwrite` onto a folder of notes.txt and data/:
                                   refused (exit 2, one line naming DIR), the folder untouched.
  export_overwrite_runs_parent     the same onto the folder holding the runs dir: refused, nothing touched.
  export_overwrite_bucket_root     `export latest s3://BUCKET --overwrite`: refused, every object kept.
  export_interrupted_s3_overwrite  Ctrl-C during an S3 `--overwrite` (after the new files are up, before the
                                   pointer flips): the previous export is still complete where readers look;
                                   the rerun finishes with an export identical to a clean one.

Everything runs in this process against a local S3 server (moto on 127.0.0.1) and an embedded local Ray.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from benchmarks.faultkit import refusal_result, scenario_result
from shardwalk.core.storage import store


def _index_sets(quick: bool) -> list[str]:
    rows = 400 if quick else 2000
    sets = [f"source=builtin:synthetic?n={rows}&d=8", "shards=2", "M=8", "ef_construction=40", "recall_sample=50", "k=5"]
    return [a for s in sets for a in ("--set", s)]


def _cli(*args: str) -> tuple[int, str]:
    """`shardwalk ARGS` in this process: (exit code, what it printed on stderr)."""
    from shardwalk.pipelines.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, err.getvalue().strip()


@contextlib.contextmanager
def _s3() -> Iterator[Callable[[], str]]:
    """A local S3 server with the AWS variables pointing at it (set before Ray starts); yields a bucket maker."""
    import logging
    import socket

    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true"}

    def bucket() -> str:
        name = f"faults-{uuid.uuid4().hex[:10]}"  # fresh names: shardwalk.core.storage.store caches filesystems by URI
        pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True).create_dir(name)
        return f"s3://{name}"

    try:
        with mock.patch.dict(os.environ, env):
            os.environ.pop("RAY_ADDRESS", None)
            yield bucket
    finally:
        server.stop()


def _objects(uri: str) -> dict[str, str]:
    """Every object under a store prefix (or bucket) and the sha256 of its bytes."""
    import pyarrow.fs as pafs

    from shardwalk.core.storage import store

    fs, root = store.resolve(uri)
    root = root.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return {i.path[len(root) + 1:]: hashlib.sha256(store.read_bytes(f"{uri.rstrip('/')}/{i.path[len(root) + 1:]}")).hexdigest()
            for i in infos if i.type == pafs.FileType.File}


def _local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _readable_export(target: str) -> dict[str, Any] | None:
    """The export's pointer when the documented reader gets a complete export there (every file matches), else None."""
    from shardwalk.core.errors import ShardwalkError
    from shardwalk.pipelines.export import MARKER, export_location

    try:
        where = export_location(target)
    except ShardwalkError:
        return None
    pointer = store.read_json(f"{target}/{MARKER}")
    for rel, entry in pointer["files"].items():
        data = store.read_bytes(f"{where}/{rel}")
        if data is None or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            return None
    return pointer


def _query_out_twice(work: Path, runs: Path, bucket: str) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from shardwalk.core.data.builtin import load_arrays
    from shardwalk.core.data.schema import from_numpy

    x, _ = load_arrays("builtin:synthetic?n=400&d=8")
    queries = work / "queries.parquet"
    pq.write_table(from_numpy(x[:200], ids=list(range(1000, 1200))), queries)
    query = ["query", "latest", "--runs-dir", runs, "--queries", queries, "-k", "3"]
    started = time.perf_counter()
    clean_code, _ = _cli(*query, "--out", work / "clean-answers")
    clean_s = time.perf_counter() - started
    out = f"{bucket}/ans/q"
    started = time.perf_counter()
    codes = [_cli(*query, "--out", out)[0]]
    refused, message = _cli(*query, "--out", out)
    codes.append(_cli(*query, "--out", out, "--overwrite")[0])
    faulted_s = time.perf_counter() - started
    fs, path = store.resolve(out)
    got, clean = (t.sort_by("id") for t in (pq.read_table(path, filesystem=fs), pq.read_table(work / "clean-answers")))
    finished = clean_code == 0 and codes == [0, 0] and refused == 2 and "pass --overwrite" in message
    return scenario_result("query_out_twice", finished, got.num_rows == 200 and got.equals(clean), faulted_s, clean_s,
                           f"second --out without --overwrite: exit {refused}; after --overwrite {out} reads "
                           f"{got.num_rows} rows for 200 queries")


def _refused_export(name: str, target: str, runs: Path, snapshot: Callable[[], Any], expect: str, note: str) -> dict[str, Any]:
    before = snapshot()
    started = time.perf_counter()
    code, message = _cli("export", "latest", target, "--runs-dir", runs, "--overwrite")
    seconds = time.perf_counter() - started
    ok = message.count("\n") == 0 and f"--export {target}: {expect}" in message and snapshot() == before
    return refusal_result(name, code, 2, message, ok, seconds, note)


def _interrupted_s3_overwrite(work: Path, runs: Path, bucket: str) -> dict[str, Any]:
    import pyarrow.fs as pafs

    started = time.perf_counter()
    clean_code, _ = _cli("export", "latest", f"{bucket}/clean", "--runs-dir", runs)
    clean_s = time.perf_counter() - started
    clean = (_readable_export(f"{bucket}/clean") or {}).get("files")
    target = f"{bucket}/results"
    first = _cli("export", "latest", target, "--runs-dir", runs)[0]
    before = _readable_export(target)
    upload = pafs.copy_files

    def interrupted(*args: Any, **kwargs: Any) -> None:  # Ctrl-C once the new files are up, before the pointer flips
        upload(*args, **kwargs)
        raise KeyboardInterrupt

    started = time.perf_counter()
    with mock.patch.object(pafs, "copy_files", interrupted):
        stopped = _cli("export", "latest", target, "--runs-dir", runs, "--overwrite")[0]
    after_stop = _readable_export(target)
    rerun = _cli("export", "latest", target, "--runs-dir", runs, "--overwrite")[0]
    faulted_s = time.perf_counter() - started
    final = _readable_export(target)
    kept = before is not None and after_stop is not None and after_stop["current"] == before["current"]
    finished = clean_code == 0 and first == 0 and stopped == 130 and rerun == 0 and kept and final is not None
    return scenario_result("export_interrupted_s3_overwrite", finished, final is not None and final["files"] == clean,
                           faulted_s, clean_s, f"Ctrl-C (exit {stopped}) left the previous export complete: {kept}; "
                           "the rerun's files equal a clean export's")


def scenarios(work: Path, quick: bool) -> list[dict[str, Any]]:
    """The user-facing-output scenarios: refusals as documented, or finished and identical with nothing lost."""
    import ray


    out: list[dict[str, Any]] = []
    with _s3() as new_bucket:
        try:
            runs = work / "work" / "runs"
            code, message = _cli("run", "index", "--runs-dir", runs, *_index_sets(quick))
            if code != 0:
                raise RuntimeError(f"the index run every scenario exports failed: {message}")
            out.append(_query_out_twice(work, runs, new_bucket()))
            mine = work / "mine"
            (mine / "data").mkdir(parents=True)
            (mine / "notes.txt").write_text("mine")
            (mine / "data" / "table.csv").write_text("a,b\n1,2\n")
            out.append(_refused_export("export_overwrite_foreign_folder", str(mine), runs, lambda: _local_files(mine),
                                       "holds files that are not a shardwalk export", "notes.txt and data/ kept"))
            out.append(_refused_export("export_overwrite_runs_parent", str(runs.parent), runs,
                                       lambda: _local_files(runs.parent), "overlaps the runs dir", "the runs dir kept"))
            bucket = new_bucket()
            assert _cli("export", "latest", f"{bucket}/results", "--runs-dir", runs)[0] == 0
            store.write_bytes(f"{bucket}/theirs/notes.txt", b"mine")
            out.append(_refused_export("export_overwrite_bucket_root", bucket, runs, lambda: _objects(bucket),
                                       "a bucket root is never an export target", "every object in the bucket kept"))
            out.append(_interrupted_s3_overwrite(work, runs, new_bucket()))
        finally:
            ray.shutdown()
    return out
