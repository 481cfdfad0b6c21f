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
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from shardwalk.core.dag.run_records import RunRecord
from shardwalk.core.errors import ConfigError, InputError, ShardwalkError, one_line
from shardwalk.core.storage import node_cache, store
from shardwalk.core.storage.store import check_runs_dir
from shardwalk.pipelines import PIPELINES

# Each command imports the rest when it runs, on purpose: Ray, torch and matplotlib take seconds to import,
# and `--help`, `runs`, `show`, `diff` and bad input answer without them.

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2
EXIT_CLOSED_PIPE = 1  # Python's docs (signal: "Note on SIGPIPE") and rich's Console exit 1, quietly
PREVIEW_QUERIES = 1000  # `shardwalk query` without --out answers at most this many (in memory)
DEFAULT_RUNS_DIR = "runs"
CONFIG_HELP = "TOML file of config keys, or example:NAME for a sample shipped in the package (NAME: a pipeline)"

EPILOG = """examples:
  shardwalk run ingest --set source=builtin:mnist5k --set shards=4
  shardwalk run index --config example:index --address auto
  shardwalk runs
  shardwalk show 20261128-120000-index-ab12cd     (or a unique prefix, or: shardwalk show latest)
  shardwalk diff 20261128-120000 latest
  shardwalk report 20261128-120000 latest --out compare.html
  shardwalk query runs/cache/build-<key> --queries q.parquet -k 10 --out hits.parquet
  shardwalk plan index --rows 100000000 --dim 768 --node-shape r5.8xlarge

Every run writes runs/runs/<run id>/run.json; stage outputs live under runs/cache/ and are reused by any
later run whose stage key (name, version, parameters, upstream keys) matches. RAY_ADDRESS or --address
joins a Ray cluster; otherwise an embedded local Ray starts (no dashboard, loopback only)."""


VERBOSE_HELP = "also print Ray's and Ray Data's own logs (token-auth notice, execution plans, progress lines)"
EXPORT_HELP = ("also write the results under stable names (index/, knn_graph/, coresets/, srrw/, report.html) "
               "to this directory or URI")


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

    _run_parser(sub, runs_dir)
    _records_parsers(sub, runs_dir)
    _query_parser(sub, runs_dir)
    _plan_parser(sub)
    return parser


def _run_parser(sub: argparse._SubParsersAction, runs_dir: argparse.ArgumentParser) -> None:
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
    run.add_argument("--config", metavar="FILE.toml", help=CONFIG_HELP)
    run.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key (repeatable); values are TOML literals: 4, 0.5, true, [0.1, 0.3], text",
    )
    run.add_argument("--address", help="Ray cluster address ('auto' joins the local cluster; default: $RAY_ADDRESS or embedded)")
    run.add_argument("--force", action="store_true", help="rerun every stage, ignoring cached outputs")
    run.add_argument("--show-config", action="store_true", help="print the resolved config (JSON) and exit")
    run.add_argument("--export", metavar="DIR_OR_URI", help=EXPORT_HELP)
    run.add_argument("--overwrite", action="store_true", help="--export may replace a previous export there")
    run.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)


def _records_parsers(sub: argparse._SubParsersAction, runs_dir: argparse.ArgumentParser) -> None:
    """export, runs, show, diff, gc: the commands that read or tidy what runs left."""
    export_help = EXPORT_HELP
    export = sub.add_parser("export", parents=[runs_dir], help="export a finished run's results under stable names",
                            description="Export a run's results: " + export_help.split("results ", 1)[1] + ".")
    export.add_argument("run_id", metavar="RUN_ID", help="a run id, unique prefix or 'latest'")
    export.add_argument("target", metavar="DIR_OR_URI")
    export.add_argument("--overwrite", action="store_true", help="replace a previous export there (nothing else)")

    runs = sub.add_parser("runs", parents=[runs_dir], help="list runs, newest first",
                          description="List runs, newest first (whole ids; tab-separated when piped).")
    runs.add_argument("--json", action="store_true", help="print the list as JSON")

    show = sub.add_parser("show", parents=[runs_dir], help="show one run's stages, timings, cache hits, outputs, metrics")
    show.add_argument("run_id", metavar="RUN_ID", help="a run id, any unique prefix of one, or 'latest'")
    show.add_argument("--json", action="store_true", help="print the raw run.json")

    diff = sub.add_parser("diff", parents=[runs_dir], help="the settings, stage keys and metrics that differ between two runs")
    diff.add_argument("run_a", metavar="RUN_A", help="a run id, unique prefix or 'latest'")
    diff.add_argument("run_b", metavar="RUN_B", help="a run id, unique prefix or 'latest'")
    diff.add_argument("--json", action="store_true", help="print the differences as JSON")

    report = sub.add_parser(
        "report", parents=[runs_dir], help="runs of one pipeline side by side in one HTML file",
        description="Compare runs of one pipeline (alpha = 0 against alpha = 10, two coreset settings, two index "
        "layouts): curves overlaid, every metric in one table, the settings that differ highlighted.",
    )
    report.add_argument("run_ids", nargs="+", metavar="RUN", help="run ids, unique prefixes or 'latest'")
    report.add_argument("--out", required=True, metavar="FILE.html", help="where to write the page")

    gc = sub.add_parser(
        "gc", parents=[runs_dir], help="remove uncommitted attempts and outputs no run record references",
        description="Remove uncommitted attempts (killed writers) and cached outputs that no run record names. "
        "Committed output a run record references is never removed, nor anything a running stage holds a live "
        "lease on; a runs dir other than the one the runs were recorded under is refused.",
    )
    gc.add_argument("--older-than", default="24h", metavar="DURATION",
                    help="only touch things older than this (e.g. 90s, 15m, 24h, 7d; default 24h: writers may still be uploading)")
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed and why, remove nothing")


def _query_parser(sub: argparse._SubParsersAction, runs_dir: argparse.ArgumentParser) -> None:
    query = sub.add_parser(
        "query", parents=[runs_dir], help="search a saved sharded HNSW index",
        description="Search a saved ShardedIndex with Parquet query vectors (an `id` and a `vector` column, or "
        "those named by --id-column / --vector-column): a file, "
        "a directory or a URI of any size, streamed in blocks through the shard actors (Ray Data) with --out. "
        "Distances are squared L2 (space l2), 1 - inner product (ip) or 1 - cosine similarity (cosine).",
    )
    query.add_argument("index_dir", metavar="INDEX",
                       help="an index directory or URI (e.g. an export's index/), or a run id, unique prefix or 'latest'")
    query.add_argument("--queries", required=True, metavar="PARQUET", help="a Parquet file, directory or URI")
    query.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    query.add_argument("--ef", type=int, default=None,
                       help="HNSW search breadth; higher = better recall, slower (default: the index's stored ef, else 64)")
    query.add_argument("--nprobe", type=int, default=None, help="k-means indexes: shards probed per query (default: stored)")
    query.add_argument("--out", metavar="DIR_OR_URI", help="write every answer here as Parquet parts, streamed in blocks "
                       "and published in one step; a non-empty --out needs --overwrite (README \"Reading query answers\") "
                       f"(default: answer the first {PREVIEW_QUERIES} queries, print 20 rows and the latency)")
    query.add_argument("--overwrite", action="store_true", help="--out may replace an earlier query's answers there")
    query.add_argument("--block-size", type=int, default=8192, help="queries per streamed block with --out (default 8192)")
    query.add_argument("--batch-size", type=int, default=256,
                       help="queries per search call without --out (latency percentiles are per batch; default 256)")
    query.add_argument("--id-column", default="id", metavar="NAME",
                       help="the queries' id column (like a pipeline's id_column; default: id)")
    query.add_argument("--vector-column", default="vector", metavar="NAME",
                       help="the queries' vector column (like a pipeline's vector_column; default: vector)")
    query.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or embedded)")
    query.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)


def _plan_parser(sub: argparse._SubParsersAction) -> None:
    plan = sub.add_parser(
        "plan", help="predict shards, actors, memory per node and wall time per stage; the smallest cluster that fits",
        description="Predict a job before running it: shards and actors, memory per node (with headroom), whether "
        "it fits, wall time per stage and the bottleneck. Without --nodes: the smallest cluster of --node-shape "
        "that fits. Constants come from a calibration file (`python -m benchmarks.calibrate`).",
    )
    plan.add_argument("pipeline", metavar="PIPELINE", help="index, coreset or srrw")
    plan.add_argument("--config", metavar="FILE.toml", help=CONFIG_HELP)
    plan.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override one config key (repeatable), as for `shardwalk run`")
    plan.add_argument("--rows", type=int, help="rows of the data (default: read from the source's Parquet footers)")
    plan.add_argument("--dim", type=int, help="vector dimension (default: from the source's schema)")
    plan.add_argument("--classes", type=int, help="coreset: label classes (default: the source's, else 10)")
    plan.add_argument("--agents", type=int, help="srrw: agents (default: the configured graph's)")
    plan.add_argument("--edges", type=int, help="srrw: edges of the agent graph (default: the configured graph's)")
    plan.add_argument("--cut-fraction", type=float, help="srrw: share of edges between partitions (default: measured)")
    plan.add_argument("--nodes", type=int, help="cluster size (default: the smallest that fits)")
    plan.add_argument("--cpus-per-node", type=int, help="CPUs per node (default: the node shape's)")
    plan.add_argument("--memory-per-node", metavar="SIZE", help="physical memory per node, e.g. 64GiB (default: the shape's)")
    plan.add_argument("--node-shape", metavar="NAME", help="a node shape of the calibration or a cloud type (e.g. r5.8xlarge)")
    plan.add_argument("--calibration", metavar="FILE", help="calibration JSON (default: $SHARDWALK_CALIBRATION or the shipped one)")
    plan.add_argument("--sample", nargs="?", const="config", metavar="SOURCE",
                      help="learn the data's costs: build and graph a sample of SOURCE (Parquet path/URI or builtin:) "
                      "in this process, one core, a few seconds, and price the HNSW build and every kNN-graph method "
                      "from it instead of the calibration's generated data; without a value, the config's source. "
                      "Not automatic: it reads the data and takes seconds, while a plan without it is instant")
    plan.add_argument("--sample-rows", type=int, metavar="N",
                      help="rows the sample reads, from 8 evenly spaced row ranges (default: 30000)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")


def _cmd_run(args: argparse.Namespace) -> int:
    from shardwalk.core.dag.runner import Runner, run_path
    from shardwalk.core.plan.limits import actor_bound, actors_requested, check_actors
    from shardwalk.pipelines.common import check_source_columns
    from shardwalk.pipelines.config import load_config, pipeline_module
    from shardwalk.pipelines.progress import make_reporter, print_run
    from shardwalk.pipelines.reports.render import publish
    from shardwalk.pipelines.runtime import connect, ray_submit
    from shardwalk.pipelines.storage import is_remote, publish_remote
    from shardwalk.workers.progress_channel import driver_host, listening

    module = pipeline_module(args.pipeline)
    config = load_config(module, args.config, args.overrides)
    if args.show_config:
        print(json.dumps(config, indent=2))
        return EXIT_OK
    check_source_columns(config)  # the source's footer: a mistyped column exits 2 before Ray starts
    if args.export:
        from shardwalk.pipelines.export import check_target

        check_target(args.export, args.overwrite, args.runs_dir)  # refuse before hours of work, not after
    pipeline = module.build(config)

    channel: dict = {}  # the progress listener, opened once Ray is up (its address is the node's)

    def submit(fn, fn_args, options):
        connect(args.address)
        if "listener" not in channel:
            channel["listener"] = stack.enter_context(listening(driver_host(), display.progress))
        return ray_submit(fn, fn_args, options, channel["listener"])

    def start() -> None:  # before the first stage that must run: nothing committed is retired if this fails
        resources = _connect(args.address)
        requested = module.actors(config) if hasattr(module, "actors") else actors_requested(config)
        check_actors(requested, actor_bound(resources.get("CPU", 1), resources.get("memory", 0)), pipeline.name)
        _refuse_unfit(pipeline.name, config)

    with make_reporter(pipeline) as display, contextlib.ExitStack() as stack:  # Ray starts (on_start) only
        record = Runner(pipeline, args.runs_dir, submit, force=args.force, config=config,  # if a stage must run
                        on_event=display, on_start=start).run()
    report, run_dir = None, None
    if is_remote(args.runs_dir):
        report = publish_remote(record, args.runs_dir)
    else:
        run_dir = run_path(args.runs_dir, record.run_id).parent
        for stage in record.stages.values():
            if stage.status in ("done", "cached"):
                publish(Path(stage.output), run_dir, record.to_json())
    print_run(record.to_json(), args.runs_dir)
    if report:
        print(f"report: {report}")
    _print_warnings(record)
    failed = record.failed_stage()
    if failed is None:
        if args.export:
            from shardwalk.pipelines.export import export_run

            where = run_dir if run_dir is not None else store.join(args.runs_dir, "runs", record.run_id)
            written = export_run(record.to_json(), where, args.export, overwrite=args.overwrite, runs_dir=args.runs_dir)
            print(f"exported {len(written)} results to {args.export}: {', '.join(written)}")
        return EXIT_OK
    print(f"shardwalk: stage '{failed.name}' failed: {failed.error.splitlines()[0]}", file=sys.stderr)
    return EXIT_BAD_INPUT if failed.bad_input else EXIT_INTERNAL


def _print_warnings(record: RunRecord) -> None:
    """A stage's own warning, then results that finished but should not be trusted as they are."""
    for stage in record.stages.values():
        if stage.warning:
            print(f"shardwalk: warning: stage '{stage.name}': {stage.warning}", file=sys.stderr)
    for stage in record.stages.values():
        if (stage.metrics or {}).get("warning"):
            print(f"shardwalk: warning: stage '{stage.name}': {stage.metrics['warning']}", file=sys.stderr)


def _refuse_unfit(pipeline: str, config: dict) -> None:
    """Exit 2 before any actor starts when the plan says the job does not fit the connected cluster."""
    from shardwalk.core.plan.calibration import load
    from shardwalk.pipelines.plan import check_fits
    from shardwalk.workers.cluster import cluster_nodes

    if pipeline in ("index", "coreset", "srrw"):
        check_fits(pipeline, config, cluster_nodes(), load())


def _cmd_plan(args: argparse.Namespace) -> int:
    from shardwalk.pipelines.plan import run_plan

    return run_plan(args)


def _cmd_runs(args: argparse.Namespace) -> int:
    from shardwalk.pipelines.runs_view import print_runs

    print_runs(args.runs_dir, as_json=args.json)
    return EXIT_OK


def _cmd_diff(args: argparse.Namespace) -> int:
    from shardwalk.pipelines.runs_view import print_diff

    print_diff(args.runs_dir, args.run_a, args.run_b, as_json=args.json)
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from shardwalk.pipelines.reports.compare import compare_runs

    done = compare_runs(args.runs_dir, args.run_ids, args.out)
    print(f"wrote {done['out']}: {len(done['runs'])} runs, {done['figures']} figure(s), "
          f"{done['settings_differ']} setting(s) that differ")
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from shardwalk.core.dag.runner import run_path
    from shardwalk.pipelines.export import export_run
    from shardwalk.pipelines.runs_view import load_run_ref

    record = load_run_ref(args.runs_dir, args.run_id)
    if record.get("status") != "succeeded":
        raise ConfigError(f"run {record['run_id']} is {record.get('status')}; only a succeeded run is exported")
    remote = store.is_remote(args.runs_dir)  # then the report and stage outputs are read from the store
    run_dir = store.join(args.runs_dir, "runs", record["run_id"]) if remote else run_path(args.runs_dir, record["run_id"]).parent
    written = export_run(record, run_dir, args.target, overwrite=args.overwrite, runs_dir=args.runs_dir)
    print(f"exported {len(written)} results to {args.target}: {', '.join(written)}")
    return EXIT_OK


def _cmd_show(args: argparse.Namespace) -> int:
    from shardwalk.pipelines.progress import print_run
    from shardwalk.pipelines.runs_view import load_run_ref, print_cache_misses

    record = load_run_ref(args.runs_dir, args.run_id)
    if args.json:
        print(json.dumps(record, indent=1))
    else:
        print_run(record, args.runs_dir)
        print_cache_misses(args.runs_dir, record)
    return EXIT_OK


def _cmd_query(args: argparse.Namespace) -> int:
    from shardwalk.core.data.schema import Columns
    from shardwalk.pipelines.export import export_index
    from shardwalk.pipelines.index import DISTANCES, preview_query, resolve_index, stream_query
    from shardwalk.workers.query_stream import check_query_source

    began = time.perf_counter()
    exported = export_index(args.index_dir)  # a store export's index is in its current version
    index_dir, stored = exported if exported is not None else resolve_index(args.index_dir, args.runs_dir)
    ef = args.ef or stored.get("ef") or 64
    nprobe = args.nprobe if args.nprobe is not None else (stored.get("nprobe") or None)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    columns = Columns(args.id_column, args.vector_column)
    check_query_source(args.queries, columns, _index_dim(index_dir))  # the query file's columns: before Ray starts
    if args.out is not None:  # a bad URI, a missing bucket, an occupied --out: exit 2 before any work
        from shardwalk.workers.query_stream import check_out

        check_out(args.out, args.overwrite)
    started = time.perf_counter()
    _connect(args.address)
    ray_start = time.perf_counter() - started
    search = {"k": args.k, "ef": ef, "nprobe": nprobe}
    index_dir, queries = _absolute(index_dir), _absolute(args.queries)  # read by Ray workers, in their own folder
    timings: dict = {}
    if args.out is not None:
        with _query_progress() as report_to:
            done = stream_query(index_dir, queries, _absolute(args.out), block_size=args.block_size,
                                overwrite=args.overwrite, columns=columns, timings=timings, progress_to=report_to, **search)
        total = time.perf_counter() - began
        parts = f"{done['parts']} Parquet part{'' if done['parts'] == 1 else 's'}"
        print(f"wrote {done['rows']:,} answers in {parts} to {done['out']}: ef={ef}, "
              f"nprobe={nprobe or 'all'}; {done['rows']:,} queries in {total:.1f} s including Ray start-up "
              f"({ray_start:.1f} s) and opening the index ({timings['open_seconds']:.1f} s); {_answering(done)}: "
              f"{done['queries_per_second']:,.0f} queries/s over {done['seconds']:.{1 if done['seconds'] >= 1 else 2}f} s; "
              f"distances: {DISTANCES.get(done['space'], done['space'])}")
        return EXIT_OK
    table = preview_query(index_dir, queries, PREVIEW_QUERIES, batch_size=args.batch_size, timings=timings,
                          columns=columns, **search)
    total = time.perf_counter() - began
    print(table.slice(0, 20).to_pandas().to_string())
    print(f"{timings['queries']:,} queries (at most the first {PREVIEW_QUERIES:,}; --out DIR answers all), ef={ef}, "
          f"nprobe={nprobe or 'all'}: {timings['queries']:,} queries in {total:.1f} s including Ray start-up "
          f"({ray_start:.1f} s) and opening the index ({timings['open_seconds']:.1f} s); search alone "
          f"{timings['qps']:,.0f} queries/s; latency per batch of {timings['batch_size']}: "
          f"p50 {timings['latency_ms_p50']:.2f} ms, p95 {timings['latency_ms_p95']:.2f} ms, "
          f"p99 {timings['latency_ms_p99']:.2f} ms; distances: {DISTANCES.get(timings['space'], timings['space'])}")
    return EXIT_OK


def _answering(done: dict) -> str:
    """How the answers were made: streamed by Ray Data, or (one block) searched from this process."""
    if done["streamed"]:
        return "streaming alone (read, search, write)"
    return "read, search and write alone (one block, from this process: too few queries to stream)"


def _absolute(path: str) -> str:
    """A local path made absolute here: Ray's workers resolve a relative one in their own folder, which on a joined
    cluster is where `ray start` ran."""
    return path if store.is_remote(path) else str(store.local_path(path))


@contextlib.contextmanager
def _query_progress() -> Iterator[object]:
    """The live display (or periodic lines) of queries answered; yields where the search tasks report."""
    from shardwalk.pipelines.progress import make_reporter
    from shardwalk.workers.progress_channel import driver_host, listening

    with make_reporter("query", stage_word="") as display, listening(driver_host(), display.progress) as channel:
        yield channel


def _index_dim(index_dir: str) -> int | None:
    """The dimension a local index was built with (its manifest), to check the queries against before Ray
    starts; None for an index on a store (its shards check each block)."""
    from shardwalk.core.index import hnsw

    if "://" in str(index_dir):
        return None
    dim = hnsw.read_index_manifest(Path(index_dir)).get("dim")
    return dim if isinstance(dim, int) else None


def _checked_runs_dir(runs_dir: str) -> str:
    """Validate --runs-dir before anything is written: the normalised URI, or the absolute local path (Ray's
    workers run in the folder the cluster was started in, not the driver's)."""
    checked = check_runs_dir(runs_dir)
    if store.is_remote(checked):  # inputs come through this node's cache: a symlinked or foreign root is refused now
        node_cache.cache_root()
    return checked


def _cmd_gc(args: argparse.Namespace) -> int:
    from shardwalk.core.dag.gc import collect, parse_duration

    garbage = collect(args.runs_dir, parse_duration(args.older_than), dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for g in garbage:
        print(f"{verb} {g.reason}: {g.location}" + (f" ({g.detail})" if g.detail else ""))
    print(f"{verb} {len(garbage)} item(s) under {args.runs_dir}")
    return EXIT_OK


COMMANDS = {"run": _cmd_run, "runs": _cmd_runs, "show": _cmd_show, "diff": _cmd_diff, "export": _cmd_export,
            "gc": _cmd_gc, "query": _cmd_query, "plan": _cmd_plan, "report": _cmd_report}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _connect(address: str | None) -> dict:
    """Connect to Ray, then take SIGTERM back: `ray.init` installs its own handlers (a `sys.exit` in Python,
    a crash reporter in its C++ core that aborted the driver), and a stop must unwind like Ctrl-C."""
    from shardwalk.pipelines.runtime import connect

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


def _closed_pipe() -> int:
    """The reader went away (`shardwalk runs | head`): stop quietly, as Python's docs advise for SIGPIPE —
    point stdout at devnull so the interpreter's final flush cannot raise again — and exit 1, as rich does."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return EXIT_CLOSED_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; maps typed errors to exit codes."""
    args = _parser().parse_args(argv)
    if getattr(args, "verbose", False):
        from shardwalk.workers.quiet import VERBOSE

        os.environ[VERBOSE] = "1"
    try:
        if getattr(args, "runs_dir", None) is not None:
            args.runs_dir = _checked_runs_dir(args.runs_dir)
        with _sigterm_interrupts():
            code = COMMANDS[args.command](args)
            sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at the interpreter's exit
            return code
    except BrokenPipeError:  # an OSError: caught before the one-line handler below
        return _closed_pipe()
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
