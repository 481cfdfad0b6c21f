"""The `shardwalk` command line: run pipelines, list and show runs, query an index.

Exit codes: 0 success, 2 bad input or config (one line on stderr, no traceback), 1 internal error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from core.errors import InputError, ShardwalkError, one_line
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

    query = sub.add_parser(
        "query", help="search a saved sharded HNSW index",
        description="Search a saved ShardedIndex with Parquet query vectors (an `id` and a `vector` column): a file, "
        "a directory or a URI of any size, streamed in blocks through the shard actors (Ray Data).",
    )
    query.add_argument("index_dir", metavar="INDEX_DIR")
    query.add_argument("--queries", required=True, metavar="PARQUET", help="a Parquet file, directory or URI")
    query.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    query.add_argument("--ef", type=int, default=64, help="HNSW search breadth; higher = better recall, slower (default 64)")
    query.add_argument("--nprobe", type=int, default=None, help="k-means indexes: shards probed per query")
    query.add_argument("--out", metavar="DIR", help="write every answer here as Parquet parts, streamed in blocks "
                       "(default: print the answers to the first 20 queries)")
    query.add_argument("--block-size", type=int, default=8192, help="queries per streamed block (default 8192)")
    query.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or embedded)")
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from core.dag import Runner, run_path
    from core.limits import actor_bound, actors_requested, check_actors
    from pipelines.config import load_config, pipeline_module
    from pipelines.progress import make_reporter, print_run
    from pipelines.report import publish
    from pipelines.runtime import connect, ray_submit

    module = pipeline_module(args.pipeline)
    config = load_config(module, args.config, args.overrides)
    if args.show_config:
        print(json.dumps(config, indent=2))
        return EXIT_OK
    pipeline = module.build(config)

    def submit(fn, fn_args, options):
        connect(args.address)
        return ray_submit(fn, fn_args, options)

    def start() -> None:  # before the first stage that must run: nothing committed is retired if this fails
        resources = _connect(args.address)
        requested = module.actors(config) if hasattr(module, "actors") else actors_requested(config)
        check_actors(requested, actor_bound(resources.get("CPU", 1), resources.get("memory", 0)), pipeline.name)

    with make_reporter(pipeline) as reporter:  # Ray starts (on_start) only if some stage is not a cache hit
        record = Runner(pipeline, args.runs_dir, submit, force=args.force, config=config, on_event=reporter,
                        on_start=start).run()
    run_dir = run_path(args.runs_dir, record.run_id).parent
    for stage in record.stages.values():
        if stage.status in ("done", "cached"):
            publish(Path(stage.output), run_dir)
    print_run(record.to_json(), args.runs_dir)
    for stage in record.stages.values():
        if stage.warning:
            print(f"shardwalk: warning: stage '{stage.name}': {stage.warning}", file=sys.stderr)
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
    from pipelines.index import preview_query, stream_query

    _connect(args.address)
    search = {"k": args.k, "ef": args.ef, "nprobe": args.nprobe}
    if args.out is None:
        print(preview_query(args.index_dir, args.queries, 20, **search).to_pandas().to_string())
        return EXIT_OK
    done = stream_query(args.index_dir, args.queries, args.out, block_size=args.block_size, **search)
    print(f"wrote {done['rows']} answers in {done['parts']} Parquet parts to {Path(done['out'])} "
          f"({done['queries_per_second']:.0f} queries/s over {done['seconds']:.1f} s)")
    return EXIT_OK


COMMANDS = {"run": _cmd_run, "runs": _cmd_runs, "show": _cmd_show, "query": _cmd_query}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _connect(address: str | None) -> dict:
    """Connect to Ray, then take SIGTERM back: `ray.init` installs its own handlers (a `sys.exit` in Python,
    a crash reporter in its C++ core that aborted the driver), and a stop must unwind like Ctrl-C."""
    from pipelines.runtime import connect

    resources = connect(address)
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        signal.signal(signal.SIGTERM, _interrupt)
    return resources


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a scheduler's stop, `kill`) unwinds like Ctrl-C: the run record ends `interrupted`."""
    try:
        previous = signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_ray() -> None:
    """Shut the embedded Ray down now, while the interpreter is whole (at exit its core worker aborts)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; maps typed errors to exit codes."""
    args = _parser().parse_args(argv)
    try:
        with _sigterm_interrupts():
            return COMMANDS[args.command](args)
    except InputError as exc:
        print(f"shardwalk: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ShardwalkError, OSError) as exc:  # an unreachable cluster, a full disk: one line, not a traceback
        print(f"shardwalk: {one_line(exc)}", file=sys.stderr)
        return EXIT_INTERNAL
    except KeyboardInterrupt as exc:
        _stop_ray()
        if exc.args == ("SIGTERM",):
            print("shardwalk: terminated (SIGTERM); committed stages are kept and a rerun resumes from them", file=sys.stderr)
            return 128 + signal.SIGTERM
        print("shardwalk: interrupted; committed stages are kept and a rerun resumes from them", file=sys.stderr)
        return 130
    except SystemExit as exc:  # ray.init replaces our SIGTERM handler with one that calls sys.exit(SIGTERM)
        if exc.code != signal.SIGTERM:
            raise
        _stop_ray()
        print("shardwalk: terminated (SIGTERM); committed stages are kept and a rerun resumes from them", file=sys.stderr)
        return 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main())
