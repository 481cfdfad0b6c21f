"""What a pip user installs is what the suite tests: the wheel, in a fresh environment, used from another folder.

The wheel is built from a copy of the sources and installed with `--no-deps` into a new virtual environment
whose only view of the third-party dependencies is a `.pth` line naming this environment's site-packages
(reinstalling Ray and torch would take minutes). The checkout is on no path: the fresh interpreter finds
shardwalk only in its own site-packages, which the first test checks.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.faultkit import free_port, poll
from shardwalk import LOOPBACK_SWITCH
from shardwalk.pipelines import PIPELINES

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("shardwalk", "core", "workers", "pipelines", "pyproject.toml", "README.md")
TINY_RUNS = {
    "index": ["source=builtin:digits", "shards=2", "recall_sample=50"],
    "coreset": ["source=builtin:digits", "actors=2", "proxy.epochs=2", "proxy.models=1", "select.keep=[0.5]",
                'select.methods=["ccs-aum", "random"]', "evaluate.steps=50", "evaluate.seeds=1",
                "select.beta=0.1"],  # what is installed is the point: β tuning's modules are in the wheel (first test)
    "srrw": ["steps=500", "record_every=250"],
}


class Installed:
    """A fresh virtual environment holding the built wheel; `run` executes in a folder outside the checkout."""

    def __init__(self, venv: Path, wheel: Path, workdir: Path) -> None:
        self.venv, self.wheel, self.workdir = venv, wheel, workdir
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS", "VIRTUAL_ENV")}

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        program = str(self.venv / "bin" / args[0]) if args[0] in ("python", "shardwalk") else args[0]
        return subprocess.run([program, *args[1:]], cwd=cwd or self.workdir, env=self.env, capture_output=True,
                              text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    source.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__"), "symlinks": True}
                                           if (ROOT / name).is_dir() else {}))
    dist = base / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("shardwalk-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    fresh_site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     check=True, capture_output=True, text=True).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (fresh_site / "_shardwalk_test_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    work = base / "elsewhere"
    work.mkdir()
    env = Installed(venv, wheel, work)
    # --force-reinstall: this environment's editable shardwalk is visible through the .pth; pip must still
    # install the wheel into the fresh environment (it leaves the other one alone: outside the environment).
    done = env.run("python", "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--force-reinstall",
                   str(wheel))
    assert done.returncode == 0, done.stderr[-2000:]
    return env


@pytest.fixture(scope="module")
def joined(installed: Installed) -> Iterator[Installed]:
    """The fresh environment with RAY_ADDRESS naming one `ray start --head` of its own (its workers import the
    wheel): runs that are not about starting Ray join it, and reuse its warm workers, rather than each starting
    an embedded Ray. Explicit addresses never send the token unasked (Ray 2.60), hence RAY_AUTH_MODE=token; the
    cluster's token is its own (RAY_AUTH_TOKEN): with the mode set, `ray start` refuses to run on a machine that
    has no ~/.ray/auth_token yet rather than create one, and the suite must not depend on what an earlier run left."""
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="rw", dir="/tmp"))  # short: Ray's socket paths live under it
    # Ray 2.60's `ray start --block` drains its node for up to 30 s on SIGTERM (for Serve); nothing here to drain
    env = {**installed.env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), LOOPBACK_SWITCH: "0",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    head = subprocess.Popen([str(installed.venv / "bin" / "python"), "-m", "ray.scripts.scripts", "start", "--head",
                             "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                             "--disable-usage-stats", f"--temp-dir={temp}", "--block"],
                            cwd=installed.workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        poll("the wheel environment's Ray head", lambda: head.poll() is not None or _listening(port), 120)
        assert head.poll() is None, head.stderr.read().decode()[-2000:]
        joined = Installed(installed.venv, installed.wheel, installed.workdir)
        joined.env = {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
        yield joined
    finally:
        head.terminate()  # `ray start --block` stops the processes it started on SIGTERM
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_wheel_holds_every_subpackage_and_the_files_the_cli_reads(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    sources = {f"shardwalk/{p.relative_to(ROOT)}" for d in ("core", "workers", "pipelines")
               for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts}
    assert sources - names == set()
    assert {"shardwalk/__init__.py", "shardwalk/core/plan/calibration.json",
            *(f"shardwalk/pipelines/examples/{p}.toml" for p in PIPELINES)} <= names
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"shardwalk"}


def test_the_fresh_environment_has_one_import_name_from_its_own_site_packages(installed: Installed) -> None:
    tops = ("import importlib.metadata as m, json; "
            "print(json.dumps(sorted({f.parts[0] for f in m.distribution('shardwalk').files} - {'..'})))")
    done = installed.run("python", "-c", tops)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [t for t in json.loads(done.stdout) if not t.endswith(".dist-info")] == ["shardwalk"]
    done = installed.run("python", "-c", "import shardwalk.core.srrw; print(shardwalk.core.srrw.__file__)")
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip()).is_relative_to(installed.venv)
    for generic in ("core", "workers", "pipelines", "benchmarks"):
        done = installed.run("python", "-c", f"import {generic}")
        assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, generic


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_show_config_of_every_pipeline_from_another_folder(installed: Installed, pipeline: str) -> None:
    plain = installed.run("shardwalk", "run", pipeline, "--show-config")
    shipped = installed.run("shardwalk", "run", pipeline, "--config", f"example:{pipeline}", "--show-config")
    for done in (plain, shipped):
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout).keys()


def test_unknown_example_is_bad_input_naming_the_known_ones(installed: Installed) -> None:
    done = installed.run("shardwalk", "run", "index", "--config", "example:nope", "--show-config")
    assert done.returncode == 2
    assert "example:nope: no such example (known: coreset, demo" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", sorted(TINY_RUNS))
def test_a_small_run_of_each_pipeline_from_the_installed_wheel(joined: Installed, pipeline: str) -> None:
    """On a cluster started from the fresh environment (first_day runs with an embedded Ray)."""
    installed = joined
    sets = [a for s in TINY_RUNS[pipeline] for a in ("--set", s)]
    done = installed.run("shardwalk", "run", pipeline, "--runs-dir", "runs", *sets)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    (record,) = (installed.workdir / "runs" / "runs").glob(f"*-{pipeline}-*/run.json")
    assert json.loads(record.read_text())["status"] == "succeeded"


# What a reader has before a snippet: `embeddings/` and `queries/` Parquet directories, a `queries` array and
# `more_vectors` to add; after it, checks that it did what it says.
PRELUDE = ("import numpy as np\nqueries = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)\n"
           "more_vectors = np.random.default_rng(2).standard_normal((7, 8)).astype(np.float32)\n")
CHECKS = ("\nimport ray\nassert ray.is_initialized()\n"
          "import os, pyarrow.parquet as pq\n"
          "if os.path.isdir('answers'):\n    assert pq.read_table('answers').num_rows == 20\n"
          "if 'new_ids' in dir():\n    assert len(set(new_ids.tolist()) - set(range(200))) == 7\n")


def readme_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_has_python_snippets() -> None:
    assert readme_snippets() and all("import" in s for s in readme_snippets())


@pytest.mark.slow
@pytest.mark.parametrize("number", range(len(readme_snippets())))
def test_readme_snippet_runs_as_written_against_the_wheel(installed: Installed, number: int, tmp_path: Path) -> None:
    """In a fresh process with no Ray started (the snippet auto-connects), in a folder of its own."""
    vectors = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
    table = pa.table({"id": np.arange(200), "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 8)})
    for name, rows in (("embeddings", table), ("queries", table.slice(0, 20))):
        (tmp_path / name).mkdir()
        pq.write_table(rows, tmp_path / name / "part-0.parquet")
    script = tmp_path / "snippet.py"
    script.write_text(PRELUDE + readme_snippets()[number] + CHECKS)
    done = installed.run("python", str(script), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_first_day_round_two_from_the_installed_wheel(installed: Installed, joined: Installed, tmp_path: Path) -> None:
    """Issue 27 replayed from the pip install, outside the checkout: own column names on every command, the
    query file checked before Ray, throughput lines that say what they include, no Ray notices, reports
    with a header, `show` with settings, two runs side by side, a closed pipe ending quietly."""
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    table = pa.table({"doc_id": np.arange(300) * 3, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 8)})
    pq.write_table(table, tmp_path / "emb.parquet")
    pq.write_table(table.slice(0, 50), tmp_path / "q.parquet")
    base = ["shardwalk", "run", "index", "--runs-dir", "runs", "--set", "source=emb.parquet", "--set", "id_column=doc_id",
            "--set", "vector_column=embedding", "--set", "shards=1", "--set", "knn_graph=false", "--set", "recall_sample=50"]
    done = installed.run(*base, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Token authentication" not in done.stderr
    query = ["shardwalk", "query", "latest", "--runs-dir", "runs", "--queries", "q.parquet"]
    wrong = installed.run(*query, cwd=tmp_path)
    assert wrong.returncode == 2 and "--id-column" in wrong.stderr and "Token authentication" not in wrong.stderr
    cols = ["--id-column", "doc_id", "--vector-column", "embedding"]
    done = installed.run(*query, *cols, "--out", "answers", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "including Ray start-up" in done.stdout and "too few queries to stream" in done.stdout
    assert "Running Dataset" not in done.stderr and "Token authentication" not in done.stderr
    assert "core_worker.cc" not in done.stderr  # Ray's core ERROR line about restarting Ray Data's pool actors
    assert joined.run(*base, "--set", "ef=32", cwd=tmp_path).returncode == 0  # a second run to compare: no new Ray
    # relative paths from a folder other than the cluster's (its workers run there)
    done = joined.run(*query, *cols, "--out", "answers-joined", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert pq.read_table(tmp_path / "answers-joined").num_rows == 50
    show = installed.run("shardwalk", "show", "latest", "--runs-dir", "runs", cwd=tmp_path)
    assert show.returncode == 0 and "differs from the default" in show.stdout
    (latest,) = [p for p in (tmp_path / "runs" / "runs").iterdir() if "ef = 32" in (p / "report.html").read_text()]
    page = (latest / "report.html").read_text()
    assert "<section class='run'>" in page and latest.name in page and "emb.parquet" in page
    ids = sorted(p.name for p in (tmp_path / "runs" / "runs").iterdir())
    done = installed.run("shardwalk", "report", *ids, "--runs-dir", "runs", "--out", "compare.html", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "<tr class=differs><th>ef</th>" in (tmp_path / "compare.html").read_text()
    closed = subprocess.Popen([str(installed.venv / "bin" / "shardwalk"), "runs", "--runs-dir", "runs"], cwd=tmp_path,
                              env=installed.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    closed.stdout.close()  # the reader is gone before the first line: `shardwalk runs | head`
    assert closed.wait(timeout=120) in (0, 1) and closed.stderr.read() == b""
