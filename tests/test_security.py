"""Security defaults: no pickle on disk, no escaping the runs directory, a quiet loopback-only local Ray."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("core", "workers", "pipelines") for p in (ROOT / d).rglob("*.py")]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_unpickles_or_pickles_artifacts(path: Path) -> None:
    """Artifacts are hnswlib files, Parquet and JSON; pickle, joblib, np.load(allow_pickle) are banned."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not {"pickle", "dill", "joblib", "cloudpickle", "shelve"} & set(names), f"{path}: imports {names}"
        if isinstance(node, ast.Call) and any(k.arg == "allow_pickle" and getattr(k.value, "value", False) for k in node.keywords):
            raise AssertionError(f"{path}:{node.lineno}: allow_pickle=True")
        if isinstance(node, ast.Attribute) and node.attr in {"torch_load"}:
            raise AssertionError(f"{path}:{node.lineno}: {node.attr}")
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load" and getattr(node.func.value, "id", "") == "torch":
            weights_only = [k for k in node.keywords if k.arg == "weights_only"]
            assert weights_only and weights_only[0].value.value is True, f"{path}:{node.lineno}: torch.load without weights_only"


@pytest.mark.ray
def test_local_ray_runs_without_dashboard_or_usage_stats(ray_local) -> None:
    """Ray refuses a loopback node IP (it resolves 127.0.0.1 to the routable one), so we test what it lets us choose."""
    import os

    from ray._private.worker import global_worker

    assert not global_worker.node.address_info.get("webui_url")
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
