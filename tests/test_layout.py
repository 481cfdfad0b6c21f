"""The layout docs/design.md describes is the layout on disk: one import name, every module listed."""

from __future__ import annotations

import re
from pathlib import Path

import shardwalk

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "workers", "pipelines")


def _layout_section() -> str:
    design = (ROOT / "docs" / "design.md").read_text()
    return design[design.index("## Layout\n"):design.index("## Data contracts")]


def test_the_package_links_to_the_top_level_folders() -> None:
    for layer in LAYERS:
        link = ROOT / "shardwalk" / layer
        assert link.is_symlink() and link.resolve() == (ROOT / layer).resolve(), layer


def test_every_module_is_in_the_design_layout_under_its_package() -> None:
    section = _layout_section()
    listed: dict[str, set[str]] = {}
    for package, body in re.findall(r"^`([\w/]+)/` — [^\n]*\n```\n(.*?)```", section, re.S | re.M):
        listed[package] = {line.split()[0] for line in body.splitlines() if line.strip()}
    on_disk: dict[str, set[str]] = {}
    for layer in LAYERS:
        for path in (ROOT / layer).rglob("*.py"):
            if "__pycache__" in path.parts or (path.name == "__init__.py" and not path.read_text().strip()):
                continue
            on_disk.setdefault(str(path.parent.relative_to(ROOT)), set()).add(path.name)
    assert listed == on_disk


def test_the_public_api_resolves_every_name_it_promises() -> None:
    for name in shardwalk.__all__:
        assert getattr(shardwalk, name) is not None, name
    assert "ShardedIndex" in dir(shardwalk)
