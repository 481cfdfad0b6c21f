"""Public Ray only: no Ray internals in product code, and the embedded Ray kept on loopback through Ray's own switch."""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from shardwalk import LOOPBACK_SWITCH
from shardwalk.core.errors import ClusterUnreachableError
from shardwalk.workers.autoconnect import auto_address, probe

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("shardwalk", "core", "workers", "pipelines")


def _private_ray_uses(tree: ast.AST) -> list[str]:
    """Imports of `ray._x` modules, `._private` attributes, `_x=` keywords to ray calls, assignments to ray objects."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"import {n}" for n in names if n.startswith("ray.") and any(p.startswith("_") for p in n.split(".")[1:])]
        elif isinstance(node, ast.Attribute) and node.attr in {"_private", "_raylet", "ray_constants"}:
            found.append(f".{node.attr}")
        elif isinstance(node, ast.Call) and ast.unparse(node.func).startswith("ray."):
            found += [f"{ast.unparse(node.func)}({k.arg}=)" for k in node.keywords if k.arg and k.arg.startswith("_")]
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found += [f"{ast.unparse(t)} =" for t in targets if isinstance(t, ast.Attribute) and ast.unparse(t).startswith("ray.")]
    return found


def test_the_checker_sees_private_imports_keywords_and_patches() -> None:
    code = ("from ray._private import services\nimport ray._raylet\nray.init(_node_ip_address='127.0.0.1')\n"
            "x = ray._private.worker\nray.util.get_node_ip_address = lambda: 1\nray.init(address='local')\n")
    assert sorted(_private_ray_uses(ast.parse(code))) == [
        "._private", "import ray._private", "import ray._raylet", "ray.init(_node_ip_address=)", "ray.util.get_node_ip_address =",
    ]


def test_product_code_uses_public_ray_only() -> None:
    offenders = []
    for folder in PRODUCT:
        for path in sorted((ROOT / folder).rglob("*.py")):
            offenders += [f"{path.relative_to(ROOT)}: {use}" for use in _private_ray_uses(ast.parse(path.read_text()))]
    assert offenders == []


@pytest.mark.parametrize("package", ["shardwalk", "shardwalk.workers", "shardwalk.pipelines", "benchmarks"])
def test_importing_shardwalk_before_ray_puts_a_new_ray_node_on_loopback(package: str) -> None:
    """Ray reads its cluster switch once, at import: our packages set it first (Ray would pick the routable IP)."""
    env = {k: v for k, v in os.environ.items() if k != LOOPBACK_SWITCH}
    code = f"import {package}, ray; from ray.util import get_node_ip_address; print(get_node_ip_address())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "127.0.0.1"


def test_an_embedded_ray_that_would_bind_a_routable_address_is_refused_before_it_starts() -> None:
    code = ("import ray\nfrom ray.util import get_node_ip_address\nif get_node_ip_address() == '127.0.0.1':\n"
            "    raise SystemExit(3)\n"
            "from shardwalk.core.errors import ConfigError\nfrom shardwalk.workers.autoconnect import connect\n"
            "try:\n    connect(num_cpus=1)\nexcept ConfigError as exc:\n    print('refused:', exc)\n"
            "print('started' if ray.is_initialized() else 'nothing started')\n")
    env = {**os.environ, LOOPBACK_SWITCH: "1", "PYTHONPATH": str(ROOT)}  # as if ray had been imported first
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if out.returncode == 3:
        pytest.skip("this host has no routable address: Ray picks 127.0.0.1 whatever the switch")
    assert out.returncode == 0, out.stderr
    refused, started = out.stdout.strip().splitlines()
    assert refused.startswith("refused: the embedded Ray would listen on ") and f"{LOOPBACK_SWITCH}=0" in refused
    assert started == "nothing started"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_address_auto_is_probed_at_ray_address_then_at_the_last_ray_start_record(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert auto_address() is None
    probe("auto", timeout=1)  # nothing recorded: left to `ray.init`, which fails at once if no cluster runs here

    recorded, exported = _closed_port(), _closed_port()
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{recorded}\n")
    assert auto_address() == f"127.0.0.1:{recorded}"
    with pytest.raises(ClusterUnreachableError, match=f"127.0.0.1:{recorded}"):
        probe("auto", timeout=5)

    monkeypatch.setenv("RAY_ADDRESS", f"ray://127.0.0.1:{exported}")
    with pytest.raises(ClusterUnreachableError, match=f"127.0.0.1:{exported}"):
        probe("auto", timeout=5)


def test_a_refused_join_says_how_to_send_the_token(monkeypatch) -> None:
    """Joining `ray start`'s cluster by its address fails auth unless RAY_AUTH_MODE=token (Ray 2.60 keeps the token
    from explicit addresses); the one line says so. Ray itself is stubbed: the message is the point."""
    import ray

    from shardwalk.workers import autoconnect

    def refused(**kwargs: object) -> None:
        raise ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:6379")

    monkeypatch.setattr(autoconnect, "probe", lambda address, timeout: None)
    monkeypatch.setattr(ray, "init", refused)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with pytest.raises(ClusterUnreachableError, match="127.0.0.1:6379.*export RAY_AUTH_MODE=token") as err:
        autoconnect.connect("127.0.0.1:6379")
    assert "\n" not in str(err.value)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    with pytest.raises(ClusterUnreachableError) as err:
        autoconnect.connect("127.0.0.1:6379")
    assert "RAY_AUTH_MODE" not in str(err.value)
