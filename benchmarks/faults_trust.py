"""bench_faults safety scenarios of issue 25 (trust boundaries), each run as the user would, in its own process.

  hostile_manifest_on_store   a saved index on S3 whose manifest names `evil?scheme=http&endpoint_override=
                              127.0.0.1:<second>&…` and `%2e%2e/…/secret.json`: `shardwalk query s3://…/hidx`
                              is refused (exit 2, CorruptArtifactError) and a second S3 server on 127.0.0.1
                              receives no request.
  record_names_pipeline       run records whose `pipeline` field names a module on the path (one that writes
                              a file when imported): `show`, `diff` and `export` print and export the records
                              exactly as for `"pipeline": "index"`, and never import it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from benchmarks.faultkit import CountingServer, refusal_result, run_cli, scenario_result

ROOT = Path(__file__).resolve().parents[1]


def _put(fs: Any, path: str, body: bytes) -> dict[str, Any]:
    with fs.open_output_stream(path) as out:
        out.write(body)
    return {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def hostile_manifest_on_store(work: Path) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    with CountingServer() as primary, CountingServer() as second:
        fs = pafs.S3FileSystem(endpoint_override=primary.endpoint, scheme="http", allow_bucket_creation=True,
                               region="us-east-1", access_key="bench", secret_key="bench")
        fs.create_dir("trust")
        attempt = "trust/hidx/attempts/20260101T000000-a"
        secret = _put(fs, "trust/hidx/secret.json", b'{"secret": 1}')
        files = {"index.json": _put(fs, f"{attempt}/index.json", b'{"format": 1}'),
                 f"evil?scheme=http&endpoint_override=127.0.0.1:{second.port}&tls_ca_file_path=/x.json": secret,
                 "%2e%2e/%2e%2e/%2e%2e/hidx/secret.json": secret}
        _put(fs, f"{attempt}/_SUCCESS", json.dumps({"rows": 0, "schemas": [], "files": files, "kind": "index"}).encode())
        queries = work / "q.parquet"
        pq.write_table(pa.table({"id": [0], "vector": pa.array([[0.0, 1.0]], pa.list_(pa.float32(), 2))}), queries)
        env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ENDPOINT_URL": primary.endpoint, "AWS_EC2_METADATA_DISABLED": "true",
               "SHARDWALK_LOCAL_CACHE": str(work / "cache")}
        code, message, _, seconds = run_cli(["query", "s3://trust/hidx", "--queries", str(queries), "-k", "1"], env)
        leaked = list(second.requests)
    ok = "CorruptArtifactError" in message and "unsafe path" in message and not leaked
    return refusal_result("hostile_manifest_on_store", code, 2, message, ok, seconds,
                          f"requests the second server received: {leaked or 'none'}")


PLANTED = """
from pathlib import Path
Path({marker!r}).write_text("imported")
DEFAULTS = {{}}
def validate(config): return config
def build(config): raise ValueError("never built")
"""


def _records(runs: Path, pipeline: str) -> None:
    stages = {name: {"name": name, "key": f"{name}-{'k' * 24}", "output": "/etc", "status": "done", "cache_hit": False,
                     "metrics": {"rows": 1}} for name in ("ingest", "build")}
    for i, run_id in enumerate(("20260101-000000-a", "20260101-000001-b")):
        path = runs / "runs" / run_id / "run.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        stages = {**stages, "build": {**stages["build"], "status": "skipped"}}  # nothing to export but run.json
        record = {"run_id": run_id, "pipeline": pipeline, "config": {"ef": 10 + i}, "status": "succeeded",
                  "started": 1000.0 + i, "finished": 1001.0 + i, "stages": stages, "stage_order": ["ingest", "build"]}
        path.write_text(json.dumps(record, sort_keys=True))


def _views(runs: Path, out: Path, env: dict[str, str]) -> tuple[bool, list[str], float]:
    """show --json, diff --json and export of the two records: all exit 0?, their outputs, seconds."""
    began, outputs, codes = time.perf_counter(), [], []
    for args in (["show", "latest", "--json"], ["diff", "20260101-000000-a", "latest", "--json"], ["export", "latest", str(out)]):
        code, _, stdout, _ = run_cli([*args, "--runs-dir", str(runs)], env)
        codes.append(code)
        outputs.append(stdout.replace(str(runs), "RUNS").replace(str(out), "OUT"))
    outputs.append((out / "run.json").read_text().replace(str(runs), "RUNS") if (out / "run.json").is_file() else "")
    return all(c == 0 for c in codes), outputs, time.perf_counter() - began


def record_names_pipeline(work: Path) -> dict[str, Any]:
    marker, mods = work / "imported.txt", work / "mods"
    mods.mkdir(parents=True, exist_ok=True)
    (mods / "planted_pipeline_mod.py").write_text(PLANTED.format(marker=str(marker)))
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(mods)])}
    _records(work / "clean", "index")
    _records(work / "hostile", "planted_pipeline_mod")
    _, clean, clean_s = _views(work / "clean", work / "out-clean", env)
    finished, hostile, hostile_s = _views(work / "hostile", work / "out-hostile", env)
    same = [h.replace("planted_pipeline_mod", "index") for h in hostile] == clean
    return scenario_result("record_names_pipeline", finished, same and not marker.exists(), hostile_s, clean_s,
                           f"planted module imported: {marker.exists()}; show/diff/export outputs equal to a benign record's: {same}")


def scenarios(work: Path, quick: bool) -> list[dict[str, Any]]:
    """The issue-25 trust scenarios of this module (tiny either way: `quick` changes nothing)."""
    (work / "manifest").mkdir(parents=True, exist_ok=True)
    (work / "record").mkdir(parents=True, exist_ok=True)
    return [hostile_manifest_on_store(work / "manifest"), record_names_pipeline(work / "record")]
