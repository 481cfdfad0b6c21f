"""The README's Python snippets run as written, in a fresh process with no Ray started (auto-connect)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
# What a reader has before the snippet: `embeddings/` and `queries/` Parquet directories, a `queries` array
# and `more_vectors` to add.
PRELUDE = ("import numpy as np\nqueries = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)\n"
           "more_vectors = np.random.default_rng(2).standard_normal((7, 8)).astype(np.float32)\n")


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_has_python_snippets() -> None:
    assert snippets() and all("import" in s for s in snippets())


@pytest.mark.slow
@pytest.mark.parametrize("number", range(len(snippets())))
def test_readme_snippet_runs_as_written(number: int, tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
    (tmp_path / "embeddings").mkdir()
    table = pa.table({"id": np.arange(200), "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 8)})
    pq.write_table(table, tmp_path / "embeddings" / "part-0.parquet")
    (tmp_path / "queries").mkdir()
    pq.write_table(table.slice(0, 20), tmp_path / "queries" / "part-0.parquet")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    checks = ("\nimport ray\nassert ray.is_initialized()\n"
              "import os, pyarrow.parquet as pq\n"
              "if os.path.isdir('answers'):\n    assert pq.read_table('answers').num_rows == 20\n"
              "if 'new_ids' in dir():\n    assert len(set(new_ids.tolist()) - set(range(200))) == 7\n")
    code = PRELUDE + snippets()[number] + checks
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
