"""Issue 24 items 3, 4 and 7: the cache never serves a stale result, and a half-written output is never committed.

    scenarios(work, quick) -> list[dict]   (run by `python -m benchmarks.bench_faults`, group "safety")

  edited_stage_code          a custom pipeline's stage body is edited under the same name between two runs: the
                             stage reruns; its output equals a clean run of the new code (not the old output).
  edited_edge_list           `shardwalk run srrw` on an edge list (karate), then the file is rewritten in place
                             (a 10-node ring, same path): every stage that reads it reruns; every committed
                             output equals a clean run on the ring (10 agents, 10 edges).
  deleted_temp_dir_mid_stage a stage's temporary directory is deleted between two of its parts (an overeager
                             cleanup): refused, exit 1 (CommitRefusedError), nothing committed; a rerun then
                             finishes identical to a clean run.
  vanished_upstream_output   an upstream output the runner counted as a cache hit is deleted before its
                             downstream stage reads it: recomputed with a warning, identical to a clean run.

The custom-pipeline scenarios run the real runner, writers and commit on a thread pool (no Ray); the SRRW one
runs the CLI in this process (an embedded local Ray on 127.0.0.1).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import importlib
import io
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from benchmarks.faultkit import refusal_result, scenario_result

POOL = cf.ThreadPoolExecutor(max_workers=2)
EXIT_INTERNAL, EXIT_BAD_INPUT = 1, 2


def _submit(fn: Any, args: tuple, options: Any) -> cf.Future:
    return POOL.submit(fn, *args)


def _outputs(record: Any, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """stage -> {file: sha256} of every committed output of a run (manifests hold timings: compared by content)."""
    from shardwalk.core.storage.files import read_manifest

    stages = record["stages"] if isinstance(record, dict) else {n: vars(s) for n, s in record.stages.items()}
    return {name: {rel: e.get("sha256") for rel, e in read_manifest(s["output"])["files"].items()}
            for name, s in stages.items() if name not in skip and s["status"] in ("done", "cached")}


def _exit_code(record: Any) -> int:
    failed = record.failed_stage()
    return 0 if failed is None else (EXIT_BAD_INPUT if failed.bad_input else EXIT_INTERNAL)


# ----------------------------------------------------------------------------- edited stage code


STAGE_CODE = '''from pathlib import Path
import pyarrow as pa
from shardwalk.core.storage.files import write_parquet


def scale(out: Path, *, n: int) -> dict:
    """The stage whose body the user edits (same name, same parameters)."""
    write_parquet(pa.table({{"v": [i * {factor} for i in range(n)]}}), out / "part-0.parquet")
    return {{"rows": n}}
'''


def _custom_run(folder: Path, runs: Path, factor: int) -> Any:
    """Write the user's module with this body, import it afresh and run its one-stage pipeline."""
    from shardwalk.core.dag.runner import Pipeline, Runner

    (folder / "faults_cache_userstage.py").write_text(STAGE_CODE.format(factor=factor))
    sys.modules.pop("faults_cache_userstage", None)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    module = importlib.import_module("faults_cache_userstage")
    p = Pipeline("custom")
    p.stage("scale", module.scale, params={"n": 100})
    return Runner(p, runs, _submit).run()


def edited_stage_code(work: Path) -> dict[str, Any]:
    code = work / "code"
    code.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    clean = _custom_run(code, work / "clean", factor=3)
    clean_s = time.perf_counter() - began
    began = time.perf_counter()
    _custom_run(code, work / "edited", factor=2)
    rerun = _custom_run(code, work / "edited", factor=3)  # same stage name, edited body
    faulted_s = time.perf_counter() - began
    sys.modules.pop("faults_cache_userstage", None)
    hit = rerun.stages["scale"].cache_hit
    same = not hit and _outputs(rerun) == _outputs(clean)
    note = "stale cache hit on the old code" if hit else "the edited stage reran (its key holds its module's source)"
    return scenario_result("edited_stage_code", rerun.status == "succeeded", same, faulted_s, clean_s, note)


# ----------------------------------------------------------------------------- edited edge list (srrw)


def _srrw(runs: Path, edges: Path, quick: bool) -> dict[str, Any]:
    from shardwalk.core.dag.run_records import list_runs
    from shardwalk.pipelines.cli import main

    sets = ["graph.name=file", f"graph.edges={edges}", f"steps={2000 if quick else 10000}", "record_every=500",
            "checkpoint_every=1000"]
    with contextlib.redirect_stdout(io.StringIO()):  # the run's table: this benchmark reports its own rows
        code = main(["run", "srrw", "--runs-dir", str(runs), *[a for s in sets for a in ("--set", s)]])
    record = list_runs(runs)[0]
    record["exit_code"] = code
    return record


def _write_graph(path: Path, name: str, **params: int) -> None:
    import pyarrow.parquet as pq

    from shardwalk.core.srrw.agents import edges_table, standard_graph

    pq.write_table(edges_table(standard_graph(name, **params)), path)


def edited_edge_list(work: Path, quick: bool) -> dict[str, Any]:
    import ray

    ring, edges = work / "ring.parquet", work / "edges.parquet"
    _write_graph(ring, "ring", n=10)
    began = time.perf_counter()
    clean = _srrw(work / "clean", ring, quick)
    clean_s = time.perf_counter() - began
    _write_graph(edges, "karate")
    began = time.perf_counter()
    first = _srrw(work / "edited", edges, quick)
    _write_graph(edges, "ring", n=10)  # edited in place: same path, other graph
    rerun = _srrw(work / "edited", edges, quick)
    faulted_s = time.perf_counter() - began
    ray.shutdown()
    if clean["exit_code"] or first["exit_code"] or rerun["exit_code"]:
        return scenario_result("edited_edge_list", False, False, faulted_s, clean_s,
                               f"exit codes clean/first/rerun {clean['exit_code']}/{first['exit_code']}/{rerun['exit_code']}")
    agents = rerun["stages"]["agents"]
    hits = [n for n, s in rerun["stages"].items() if s.get("cache_hit")]
    same = _outputs(rerun, skip=("report",)) == _outputs(clean, skip=("report",))
    note = (f"rerun: cache hits {hits or 'none'}; agents={agents['metrics'].get('agents')}, "
            f"edges={agents['metrics'].get('edges')} (clean ring: {clean['stages']['agents']['metrics'].get('agents')})")
    return scenario_result("edited_edge_list", not agents.get("cache_hit"), same, faulted_s, clean_s, note)


# ----------------------------------------------------------------------------- deleted temporary directory


CLEANUP_AFTER = [-1]  # the injected fault (not a parameter: the faulted run and the rerun share one key)


def parts_with_cleanup(out: Path, *, parts: int) -> dict[str, Any]:
    """Writes `parts` Parquet parts as helpers do (shardwalk.core.storage.sink.put_parquet); an overeager cleanup deletes the
    stage's temporary directory after part CLEANUP_AFTER (-1: never)."""
    from shardwalk.core.storage import sink

    rows = 0
    for i in range(parts):
        table = pa.table({"id": pa.array(range(i * 1000, (i + 1) * 1000), pa.int64())})
        sink.put_parquet(table, sink.destination(out), f"part-{i:03d}.parquet")
        rows += table.num_rows
        if i == CLEANUP_AFTER[0]:
            shutil.rmtree(out)
    return {"rows": rows}


def _parts_run(runs: Path, cleanup_after: int) -> Any:
    from shardwalk.core.dag.runner import Pipeline, Runner

    p = Pipeline("parts")
    p.stage("parts", parts_with_cleanup, params={"parts": 4}, declares_rows=True)
    CLEANUP_AFTER[0] = cleanup_after
    try:
        return Runner(p, runs, _submit).run()
    finally:
        CLEANUP_AFTER[0] = -1


def deleted_temp_dir_mid_stage(work: Path) -> dict[str, Any]:
    from shardwalk.core.storage.files import TEMP_PREFIX, is_committed

    began = time.perf_counter()
    faulted = _parts_run(work / "faulted", cleanup_after=1)
    seconds = time.perf_counter() - began
    stage = faulted.stages["parts"]
    leftovers = list((work / "faulted" / "cache").glob(f"{TEMP_PREFIX}*"))
    committed = is_committed(stage.output)
    clean, rerun = _parts_run(work / "clean", cleanup_after=-1), _parts_run(work / "faulted", cleanup_after=-1)
    ok = (stage.error_type == "CommitRefusedError" and not committed and not leftovers
          and rerun.status == "succeeded" and not rerun.stages["parts"].cache_hit and _outputs(rerun) == _outputs(clean))
    message = (stage.error or "").splitlines()[0] if stage.error else f"stage {stage.status}"
    return refusal_result("deleted_temp_dir_mid_stage", _exit_code(faulted), EXIT_INTERNAL, message, ok, seconds,
                          "nothing committed; the rerun finished identical to a clean run" if ok else
                          f"committed={committed}, temporaries left={len(leftovers)}, rerun {rerun.status}")


# ----------------------------------------------------------------------------- vanished upstream output


def numbers(out: Path, *, n: int) -> dict[str, Any]:
    from shardwalk.core.storage.files import write_parquet

    write_parquet(pa.table({"v": pa.array(range(n), pa.int64())}), out / "part-0.parquet")
    return {"rows": n}


def scaled(out: Path, numbers: Path, *, factor: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from shardwalk.core.storage.files import write_parquet

    v = pq.read_table(numbers / "part-0.parquet").column("v").to_pylist()
    write_parquet(pa.table({"v": pa.array([x * factor for x in v], pa.int64())}), out / "part-0.parquet")
    return {"rows": len(v)}


def _chain_run(runs: Path, factor: int, lose_upstream: bool = False) -> Any:
    """numbers → scaled; with `lose_upstream`, `numbers`' committed output is deleted right before `scaled` starts."""
    from shardwalk.core.dag.runner import Pipeline, Runner

    p = Pipeline("chain")
    p.stage("numbers", numbers, params={"n": 500})
    p.stage("scaled", scaled, inputs=["numbers"], params={"factor": factor})
    lost = [False]

    def submit(fn: Any, args: tuple, options: Any) -> cf.Future:
        if lose_upstream and not lost[0] and options.name == "scaled":
            shutil.rmtree(args[2]["numbers"])  # deleted after the runner counted it a cache hit
            lost[0] = True
        return POOL.submit(fn, *args)

    return Runner(p, runs, submit).run()


def vanished_upstream_output(work: Path) -> dict[str, Any]:
    began = time.perf_counter()
    clean = _chain_run(work / "clean", factor=7)
    clean_s = time.perf_counter() - began
    _chain_run(work / "faulted", factor=3)
    began = time.perf_counter()
    rerun = _chain_run(work / "faulted", factor=7, lose_upstream=True)
    faulted_s = time.perf_counter() - began
    warning = rerun.stages["numbers"].warning or ""
    failed = rerun.failed_stage()
    note = (f"recomputed with a warning: {warning}" if "vanished" in warning else
            f"no warning; {failed.name} failed: {failed.error.splitlines()[0]}" if failed else "no warning")
    return scenario_result("vanished_upstream_output", rerun.status == "succeeded" and "vanished" in warning,
                           _outputs(rerun) == _outputs(clean), faulted_s, clean_s, note)


def scenarios(work: Path, quick: bool) -> list[dict[str, Any]]:
    """Every scenario of this module, each in a folder of its own under `work`."""
    out = []
    for name, run in (("edited_stage_code", edited_stage_code), ("deleted_temp_dir_mid_stage", deleted_temp_dir_mid_stage),
                      ("vanished_upstream_output", vanished_upstream_output),
                      ("edited_edge_list", lambda w: edited_edge_list(w, quick))):
        (work / name).mkdir(parents=True, exist_ok=True)
        out.append(run(work / name))
    return out


if __name__ == "__main__":  # python -m benchmarks.faults_cache [--quick]: this group alone
    import tempfile

    with tempfile.TemporaryDirectory(prefix="faults-cache-") as tmp:
        print(json.dumps(scenarios(Path(tmp), "--quick" in sys.argv), indent=1))
