"""The index pipeline with its runs dir on local disk vs on a local S3-compatible server, same run otherwise.

    python -m benchmarks.bench_storage --quick --json /tmp/bench_storage.json
    python -m benchmarks.bench_storage --json benchmarks/results/storage_synthetic200k.json

Each configuration runs `shardwalk run index` twice in its own driver process (a fresh embedded Ray each
time): a cold run into an empty runs dir (and an empty node-local download cache), then a rerun that is all
cache hits. The S3 side talks HTTP to moto's server on 127.0.0.1, as to AWS. Reported: wall-clock ratios
S3/local (cold run and cache-hit rerun), each driver's peak RSS (data must not pass through the driver),
the bytes the driver read from the store on the cache-hit rerun (`driver_bytes_read_cache_hit`: manifests,
run records and the report it republishes; a hit compares sizes and ETags, it reads no object back) beside
the bytes the committed outputs hold, and bytes uploaded / downloaded per stage from the S3 run's record. Absolute times on a shared machine are
noise; read the ratios, with the load average recorded beside them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.faultkit import free_port

ROOT = Path(__file__).resolve().parents[1]
DRIVER = """
import json, resource, sys, time
from shardwalk.core.storage import store
from shardwalk.pipelines.cli import main
started = time.perf_counter()
code = main(sys.argv[1:])
print("BENCH " + json.dumps({"exit": code, "seconds": time.perf_counter() - started,
                             "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                             "driver_bytes_read": store.bytes_read()}))
"""


def _drive(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """One `shardwalk` invocation in a fresh driver process; its exit code, wall seconds and peak RSS."""
    done = subprocess.run([sys.executable, "-c", DRIVER, *argv], env=env, capture_output=True, text=True, cwd=ROOT)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if line is None or json.loads(line[6:])["exit"] != 0:
        raise SystemExit(f"bench_storage: `shardwalk {' '.join(argv)}` failed:\n{done.stderr[-3000:]}")
    return json.loads(line[6:])


def _config(runs_dir: str, source: str, shards: int, env: dict[str, str]) -> dict[str, Any]:
    argv = ["run", "index", "--runs-dir", runs_dir, "--set", f"source={source}", "--set", f"shards={shards}"]
    cold = _drive(argv, env)
    rerun = _drive(argv, env)
    return {"cold": cold, "rerun": rerun}


def _transfer(runs_dir: str, env: dict[str, str]) -> dict[str, dict[str, int]]:
    """Bytes uploaded / downloaded per stage, from the cold run's record in the bucket."""
    os.environ.update(env)
    from shardwalk.core.dag.runner import list_runs

    cold = list_runs(runs_dir)[-1]  # newest first: the last is the cold run
    return {name: {"bytes_uploaded": s.get("bytes_uploaded", 0), "bytes_downloaded": s.get("bytes_downloaded", 0)}
            for name, s in cold["stages"].items()}


def run(n: int, d: int, shards: int) -> dict[str, Any]:
    """Both configurations side by side; the result dict written as JSON."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True,
                          region="us-east-1").create_dir("bench")
        source = f"builtin:synthetic?n={n}&d={d}"
        with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
            env = {**os.environ, "PYTHONPATH": str(ROOT), "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true"}
            env.pop("RAY_ADDRESS", None)
            local = _config(str(Path(tmp) / "runs"), source, shards, {**env, "SHARDWALK_LOCAL_CACHE": f"{tmp}/cache-l"})
            s3_runs = "s3://bench/shardwalk"
            s3 = _config(s3_runs, source, shards, {**env, "SHARDWALK_LOCAL_CACHE": f"{tmp}/cache-s"})
            transfer = _transfer(s3_runs, env)
    finally:
        server.stop()
    return {
        "benchmark": "bench_storage", "source": source, "shards": shards, "load_average": os.getloadavg(),
        "wall_ratio_s3_vs_local": s3["cold"]["seconds"] / local["cold"]["seconds"],
        "cache_hit_rerun_ratio_s3_vs_local": s3["rerun"]["seconds"] / local["rerun"]["seconds"],
        "driver_peak_rss_mb": {"local": local["cold"]["driver_peak_rss_mb"], "s3": s3["cold"]["driver_peak_rss_mb"],
                               "s3_vs_local": s3["cold"]["driver_peak_rss_mb"] / local["cold"]["driver_peak_rss_mb"]},
        "driver_bytes_read_cache_hit": s3["rerun"]["driver_bytes_read"],
        "committed_output_bytes": sum(v["bytes_uploaded"] for v in transfer.values()),
        "bytes_uploaded": {k: v["bytes_uploaded"] for k, v in transfer.items()},
        "bytes_downloaded": {k: v["bytes_downloaded"] for k, v in transfer.items()},
        "seconds": {"local": {k: v["seconds"] for k, v in local.items()}, "s3": {k: v["seconds"] for k, v in s3.items()}},
        "targets": {"wall_ratio_s3_vs_local": "<= 1.3", "cache_hit_rerun_ratio_s3_vs_local": "<= 2",
                    "driver_peak_rss_mb.s3_vs_local": "<= 1.2"},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_storage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=None, help="vectors (default 200,000; --quick 2,000)")
    parser.add_argument("--d", type=int, default=64, help="dimension (default 64; --quick 16)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="a tiny size: checks the script, measures nothing")
    parser.add_argument("--json", required=True, metavar="OUT.json")
    args = parser.parse_args()
    n = args.n or (2_000 if args.quick else 200_000)
    d = 16 if args.quick and args.d == 64 else args.d
    result = run(n, d, 2 if args.quick else args.shards)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"{'':<36}{'s3 / local':>12}")
    for key in ("wall_ratio_s3_vs_local", "cache_hit_rerun_ratio_s3_vs_local"):
        print(f"{key:<36}{result[key]:>12.2f}")
    print(f"{'driver_peak_rss_mb (s3 / local)':<36}{result['driver_peak_rss_mb']['s3_vs_local']:>12.2f}")
    print(f"driver read {result['driver_bytes_read_cache_hit']:,} bytes on the cache-hit rerun "
          f"(committed outputs: {result['committed_output_bytes']:,} bytes)")
    print(f"load average {result['load_average']}; JSON: {args.json}")


if __name__ == "__main__":
    main()
