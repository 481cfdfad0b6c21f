"""Trust boundaries (issue 25): what a shared bucket, a planted file or someone else's index can make shardwalk do.

Where a store is needed the tests use the local moto server (`s3_bucket`) plus a second one on 127.0.0.1 that a
hostile name would redirect requests to: it must see no request at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from benchmarks.faultkit import CountingServer
from shardwalk.core.errors import CorruptArtifactError
from shardwalk.core.srrw import SRRW, Schedule, load_token, make_tokens, save_token
from shardwalk.core.storage import store
from shardwalk.core.storage.files import MANIFEST
from shardwalk.core.storage.names import artifact_name
from shardwalk.core.storage.store import read_json_sealed, write_json_sealed
from shardwalk.pipelines import cli
from shardwalk.pipelines.cli import main


def _s3(s3_server: str) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(endpoint_override=s3_server, scheme="http", region="us-east-1")


def _put(fs: pafs.FileSystem, path: str, body: bytes) -> dict[str, Any]:
    with fs.open_output_stream(path) as out:
        out.write(body)
    return {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}


# ----------------------------------------------------------------------------- item 1: one name grammar


@pytest.mark.parametrize("rel", ["part-0.parquet", "shard-00001.json", "coresets/el2n-keep0.5/part-00000.parquet", "_labels.json"])
def test_artifact_names_accept_plain_relative_names(rel: str) -> None:
    assert artifact_name(rel, "m") == rel


@pytest.mark.parametrize("rel", [
    "", "/etc/passwd", "a//b", "./a", "a/..", "..", "%2e%2e/x.json", "evil?scheme=http&endpoint_override=127.0.0.1:1",
    "a#b", "a\\b", "s3://other/x", "file:x", "a b", "x" * 2000, None, 7,
])
def test_artifact_names_refuse_everything_else(rel: Any) -> None:
    with pytest.raises(CorruptArtifactError, match=r"^where/_SUCCESS: names an unsafe path"):
        artifact_name(rel, "where/_SUCCESS")


HOSTILE = {
    "redirect": "evil?scheme=http&endpoint_override=127.0.0.1:{port}&tls_ca_file_path=/x.json",
    "escape": "%2e%2e/%2e%2e/%2e%2e/hidx/secret.json",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_manifest_on_a_store_is_refused_before_any_request_leaves(
        kind: str, s3_server: str, s3_bucket: str, second_server: CountingServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """`shardwalk query s3://bkt/hidx` on an index whose manifest names a redirecting or escaping entry."""
    fs, bucket = _s3(s3_server), s3_bucket.removeprefix("s3://")
    attempt = f"{bucket}/hidx/attempts/20260101T000000-a"
    secret = _put(fs, f"{bucket}/hidx/secret.json", b'{"secret": 1}')  # outside the attempt
    files = {"index.json": _put(fs, f"{attempt}/index.json", b'{"format": 1}'),
             HOSTILE[kind].format(port=second_server.port): secret}
    _put(fs, f"{attempt}/{MANIFEST}", json.dumps({"rows": 0, "schemas": [], "files": files, "kind": "index"}).encode())
    queries = tmp_path / "q.parquet"
    pq.write_table(pa.table({"id": [0], "vector": pa.array([[0.0, 1.0]], pa.list_(pa.float32(), 2))}), queries)
    monkeypatch.setenv("SHARDWALK_LOCAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, "_connect", lambda address: {})  # refused before any actor would start

    assert main(["query", f"{s3_bucket}/hidx", "--queries", str(queries), "-k", "1"]) == 2
    err = capsys.readouterr().err
    assert "CorruptArtifactError" in err and "names an unsafe path" in err and err.count("\n") == 1
    assert second_server.requests == []
    assert not list((tmp_path / "cache").rglob("secret.json"))


def test_names_listed_from_a_store_are_never_parsed_as_uris(s3_server: str, s3_bucket: str, second_server: CountingServer,
                                                            capsys: pytest.CaptureFixture) -> None:
    """A planted `runs/<name>/` or `attempts/<name>/` whose name carries a query string redirects nothing."""
    fs, bucket = _s3(s3_server), s3_bucket.removeprefix("s3://")
    planted = f"x?scheme=http&endpoint_override=127.0.0.1:{second_server.port}"
    _put(fs, f"{bucket}/runs/runs/{planted}/run.json", b"{}")
    _put(fs, f"{bucket}/out/attempts/{planted}/{MANIFEST}", b"{}")

    assert main(["runs", "--runs-dir", f"{s3_bucket}/runs"]) == 0
    assert "is not a run id" in capsys.readouterr().out
    assert store.find_committed(f"{s3_bucket}/out") is None
    assert second_server.requests == []


# ----------------------------------------------------------------------------- item 4: records are data


PLANTED = """
from pathlib import Path
Path({marker!r}).write_text("imported")
DEFAULTS = {{}}
def validate(config): return config
def build(config): raise ValueError("never built")
"""


def _record(run_id: str, pipeline: str, stages: dict[str, dict[str, Any]], started: float) -> dict[str, Any]:
    return {"run_id": run_id, "pipeline": pipeline, "config": {}, "status": "succeeded", "started": started,
            "finished": started + 1, "stages": stages}


def test_show_diff_export_query_never_import_the_record_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "ran.txt"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "planted_pipeline_mod.py").write_text(PLANTED.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    runs = tmp_path / "runs"
    stage = {"name": "ingest", "key": "k" * 24, "output": "/etc", "status": "skipped"}
    for i, run_id in enumerate(("20260101-000000-a", "20260101-000001-b")):
        path = runs / "runs" / run_id / "run.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(_record(run_id, "planted_pipeline_mod", {"ingest": stage}, 1000.0 + i)))

    assert main(["show", "latest", "--runs-dir", str(runs)]) == 0
    assert main(["diff", "20260101-000000-a", "latest", "--runs-dir", str(runs)]) == 0
    assert main(["export", "latest", str(tmp_path / "out"), "--runs-dir", str(runs)]) == 0
    assert main(["query", "latest", "--runs-dir", str(runs), "--queries", str(tmp_path / "q.parquet")]) == 2  # no index
    assert not marker.exists() and "planted_pipeline_mod" not in sys.modules
    assert json.loads((tmp_path / "out" / "run.json").read_text())["stages"]["ingest"]["output"] == str(runs / "cache" / f"ingest-{'k' * 24}")


def test_a_record_cannot_point_a_stage_at_another_server(s3_bucket: str, second_server: CountingServer, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A run record on a shared bucket whose `attempt` names another endpoint: refused, nothing read elsewhere."""
    runs = f"{s3_bucket}/runs"
    hostile = f"{s3_bucket}/elsewhere?scheme=http&endpoint_override=127.0.0.1:{second_server.port}"
    stage = {"name": "ingest", "key": "k" * 24, "output": hostile, "attempt": hostile, "status": "done"}
    store.write_json(f"{runs}/runs/20260101-000000-a/run.json", _record("20260101-000000-a", "index", {"ingest": stage}, 1.0))
    monkeypatch.setenv("SHARDWALK_LOCAL_CACHE", str(tmp_path / "cache"))

    assert main(["export", "latest", str(tmp_path / "out"), "--runs-dir", runs]) == 2
    # only the attempt's id is taken from the record: it is looked for under the runs dir the user gave
    assert f"{runs}/cache/ingest-{'k' * 24}/attempts/elsewhere: no committed output there" in capsys.readouterr().err
    assert second_server.requests == []


# ----------------------------------------------------------------------------- item 5: checkpoints and listeners


def test_a_checkpoint_names_its_rng_from_an_allowlist(tmp_path: Path) -> None:
    chain = SRRW(nx.karate_club_graph(), 5.0, "mhrw")
    manifest = save_token(tmp_path, make_tokens(chain, 3, Schedule(), seed=1)[0])
    meta = read_json_sealed(manifest, "token checkpoint")
    meta["rng"]["bit_generator"] = "seed"  # np.random.seed(): reseeds the global RNG if looked up by getattr
    write_json_sealed(manifest, meta)  # the seal is unkeyed: anyone can reseal an edited checkpoint
    np.random.seed(5)
    expected = np.random.random()
    np.random.seed(5)
    with pytest.raises(CorruptArtifactError, match="unknown RNG bit generator 'seed'"):
        load_token(tmp_path, 0)
    assert np.random.random() == expected  # nothing in numpy was called


def test_a_checkpoint_on_a_store_cannot_name_an_array_on_another_server(s3_bucket: str, second_server: CountingServer) -> None:
    directory = f"{s3_bucket}/ckpt"
    manifest = save_token(directory, make_tokens(SRRW(nx.karate_club_graph(), 5.0, "mhrw"), 3, Schedule(), seed=1)[0])
    meta = read_json_sealed(manifest, "token checkpoint")
    meta["files"]["theta"]["file"] = f"t.npy?scheme=http&endpoint_override=127.0.0.1:{second_server.port}"
    write_json_sealed(manifest, meta)
    with pytest.raises(CorruptArtifactError, match="names an unsafe path.*to start the walk from scratch"):
        load_token(directory, 0)
    assert second_server.requests == []


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp* shows them) of the sockets listening on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                found.append(local.rsplit(":", 1)[0])
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="reads Linux's socket table")
def test_the_gloo_rendezvous_listens_on_the_node_address_only() -> None:
    from shardwalk.workers import gloo

    served = gloo.serve_store("127.0.0.1", 2)
    assert _listening(served.port) == ["0100007F"]  # 127.0.0.1, not 0.0.0.0 or ::
    client = gloo.join_store("127.0.0.1", served.port, 2)
    client.set("k", "v")
    assert served.get("k") == b"v"


@pytest.mark.ray
def test_the_embedded_ray_refuses_a_client_without_its_token(ray_local: None) -> None:
    """Ray 2.60 turns token auth on for the cluster `connect()` starts (RAY_AUTH_MODE unset): the GCS answers
    only a request carrying the token. A guard: main already behaves so (the issue's claim predates Ray 2.60)."""
    import grpc
    import ray
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    assert os.environ.get("RAY_AUTH_MODE") == "token"
    with grpc.insecure_channel(ray.get_runtime_context().gcs_address) as channel:
        nodes = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetAllNodeInfo
        for metadata in ((), (("authorization", "Bearer " + "x" * 64),)):
            with pytest.raises(grpc.RpcError) as refused:
                nodes(gcs_service_pb2.GetAllNodeInfoRequest(), metadata=metadata, timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
