"""The `shardwalk` command line: run pipelines, list and show runs, query an index.

Exit codes: 0 success, 2 bad input or config (one line on stderr, no traceback), 1 internal error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from core.errors import InputError, one_line
from core.store import StoreUnavailableError, check_runs_dir
from pipelines import PIPELINES

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_RUNS_DIR = "runs"

EPILOG = """examples:
  shardwalk run ingest --set source=builtin:mnist5k --set shards=4
  shardwalk run index --config examples/index.toml --address auto
  shardwalk runs
  shardwalk show 20261128-120000-index-ab12cd
  shardwalk query runs/cache/build-<key> --queries q.parquet -k 10 --out hits.parquet

Every run writes runs/runs/<run id>/run.json; stage outputs live under runs/cache/ and are reused by any
later run whose stage key (name, version, parameters, upstream keys) matches. RAY_ADDRESS or --address
joins a Ray cluster; otherwise an embedded local Ray starts (no dashboard, loopback only)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardwalk",
        description="Distributed batch pipelines on Ray: sharded HNSW indexing, coreset selection, SRRW training.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    runs_dir = argparse.ArgumentParser(add_help=False)
    runs_dir.add_argument(
        "--runs-dir",
        default=os.environ.get("SHARDWALK_RUNS_DIR", DEFAULT_RUNS_DIR),
        help="where run records and cached stage outputs live (default: ./runs or $SHARDWALK_RUNS_DIR)",
    )

    run = sub.add_parser(
        "run",
        parents=[runs_dir],
        help="run a pipeline (committed stages are cache hits)",
        description="Run a pipeline. Stages whose key matches a committed output are skipped (cache hits).",
        epilog="pipelines: " + ", ".join(sorted(PIPELINES)) + "\nkeys for --set: the pipeline's config keys; "
        "`shardwalk run NAME --show-config` prints them with their defaults.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("pipeline", metavar="PIPELINE", help="one of: " + ", ".join(sorted(PIPELINES)))
    run.add_argument("--config", metavar="FILE.toml", help="TOML file of config keys (see examples/)")
    run.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key (repeatable); values are TOML literals: 4, 0.5, true, [0.1, 0.3], text",
    )
    run.add_argument("--address", help="Ray cluster address ('auto' joins the local cluster; default: $RAY_ADDRESS or embedded)")
    run.add_argument("--force", action="store_true", help="rerun every stage, ignoring cached outputs")
    run.add_argument("--show-config", action="store_true", help="print the resolved config (JSON) and exit")

    sub.add_parser("runs", parents=[runs_dir], help="list runs, newest first", description="List runs, newest first.")

    show = sub.add_parser("show", parents=[runs_dir], help="show one run's stages, timings, cache hits, outputs, metrics")
    show.add_argument("run_id", metavar="RUN_ID")
    show.add_argument("--json", action="store_true", help="print the raw run.json")

    gc = sub.add_parser(
        "gc", parents=[runs_dir], help="remove uncommitted attempts and outputs no run record references",
        description="Remove uncommitted attempts (killed writers) and cached outputs that no run record names. "
        "Committed output a run record references is never removed.",
    )
    gc.add_argument("--older-than", default="24h", metavar="DURATION",
                    help="only touch things older than this (e.g. 90s, 15m, 24h, 7d; default 24h: writers may still be uploading)")
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")

    query = sub.add_parser(
        "query", help="search a saved sharded HNSW index",
        description="Search a saved ShardedIndex with a Parquet file of query vectors (an `id` and a `vector` column).",
    )
    query.add_argument("index_dir", metavar="INDEX_DIR")
    query.add_argument("--queries", required=True, metavar="FILE.parquet")
    query.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    query.add_argument("--ef", type=int, default=64, help="HNSW search breadth; higher = better recall, slower (default 64)")
    query.add_argument("--nprobe", type=int, default=None, help="k-means indexes: shards probed per query")
    query.add_argument("--out", metavar="FILE.parquet", help="write results here (default: print the first rows)")
    query.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or embedded)")
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from core.dag import Runner, run_path
    from pipelines.config import load_config, pipeline_module
    from pipelines.progress import make_reporter, print_run
    from pipelines.report import publish
    from pipelines.runtime import connect, ray_submit
    from pipelines.storage import is_remote, publish_remote

    module = pipeline_module(args.pipeline)
    config = load_config(module, args.config, args.overrides)
    if args.show_config:
        print(json.dumps(config, indent=2))
        return EXIT_OK
    pipeline = module.build(config)

    def submit(fn, fn_args, options):  # Ray starts only if some stage is not a cache hit
        connect(args.address)
        return ray_submit(fn, fn_args, options)

    with make_reporter(pipeline) as reporter:
        record = Runner(pipeline, args.runs_dir, submit, force=args.force, config=config, on_event=reporter).run()
    report = None
    if is_remote(args.runs_dir):
        report = publish_remote(record, args.runs_dir)
    else:
        run_dir = run_path(args.runs_dir, record.run_id).parent
        for stage in record.stages.values():
            if stage.status in ("done", "cached"):
                publish(Path(stage.output), run_dir)
    print_run(record.to_json(), args.runs_dir)
    if report:
        print(f"report: {report}")
    failed = record.failed_stage()
    if failed is None:
        return EXIT_OK
    print(f"shardwalk: stage '{failed.name}' failed: {failed.error.splitlines()[0]}", file=sys.stderr)
    return EXIT_BAD_INPUT if failed.bad_input else EXIT_INTERNAL


def _cmd_runs(args: argparse.Namespace) -> int:
    from pipelines.progress import print_runs

    print_runs(args.runs_dir)
    return EXIT_OK


def _cmd_show(args: argparse.Namespace) -> int:
    from core.dag import load_run
    from pipelines.progress import print_run

    record = load_run(args.runs_dir, args.run_id)
    if args.json:
        print(json.dumps(record, indent=1))
    else:
        print_run(record, args.runs_dir)
    return EXIT_OK


def _cmd_query(args: argparse.Namespace) -> int:
    from pipelines.index import query_index
    from pipelines.runtime import connect

    connect(args.address)
    table = query_index(args.index_dir, args.queries, k=args.k, ef=args.ef, nprobe=args.nprobe, out_path=args.out)
    if args.out is None:
        print(table.slice(0, 20).to_pandas().to_string())
    else:
        print(f"wrote {table.num_rows} rows to {Path(args.out)}")
    return EXIT_OK


def _checked_runs_dir(runs_dir: str) -> str:
    """Validate --runs-dir before anything is written: the normalised URI, or the local path as given."""
    checked = check_runs_dir(runs_dir)
    return checked if "://" in checked else runs_dir


def _cmd_gc(args: argparse.Namespace) -> int:
    from core.gc import collect, parse_duration

    garbage = collect(args.runs_dir, parse_duration(args.older_than), dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for g in garbage:
        print(f"{verb} {g.reason}: {g.location}")
    print(f"{verb} {len(garbage)} item(s) under {args.runs_dir}")
    return EXIT_OK


COMMANDS = {"gc": _cmd_gc, "run": _cmd_run, "runs": _cmd_runs, "show": _cmd_show, "query": _cmd_query}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; maps typed errors to exit codes."""
    args = _parser().parse_args(argv)
    try:
        if getattr(args, "runs_dir", None) is not None:
            args.runs_dir = _checked_runs_dir(args.runs_dir)
        return COMMANDS[args.command](args)
    except InputError as exc:
        print(f"shardwalk: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StoreUnavailableError as exc:  # the object store went away: an internal failure, not bad input
        print(f"shardwalk: {one_line(exc)}", file=sys.stderr)
        return EXIT_INTERNAL
    except KeyboardInterrupt:
        print("shardwalk: interrupted; committed stages are kept and a rerun resumes from them", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
