"""Tests and benchmarks reach loopback only: no literal IPv4 address outside 127.0.0.0/8 (or 0.0.0.0) in them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = {".py", ".json", ".toml", ".yaml", ".yml", ".md", ".txt", ".sh", ".cfg", ".ini"}
IPV4 = re.compile(r"(?<![\w.])(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?![\w.])")
VERSION_BEFORE = re.compile(r"(version|==|>=|<=|~=|!=|\^|@)\s*[\"']?$", re.IGNORECASE)  # `pkg==1.2.3.4`


def non_loopback_addresses(text: str) -> list[str]:
    """Literal IPv4 addresses in `text` other than 127.x.x.x and 0.0.0.0 (version strings left alone)."""
    found = []
    for match in IPV4.finditer(text):
        octets = [int(o) for o in match.groups()]
        if max(octets) > 255 or octets[0] == 127 or octets == [0, 0, 0, 0]:
            continue
        if VERSION_BEFORE.search(text[max(0, match.start() - 12):match.start()]):
            continue
        found.append(match.group(0))
    return found


def test_the_address_finder_tells_addresses_from_loopback_and_versions() -> None:
    remote = ".".join(["10", "255", "255", "1"])  # built, so this file holds no such literal itself
    text = f"connect {remote}:6379; also 127.0.0.1:80, 0.0.0.0, ray==2.4.0.1, v1.2.3.4, 1.2.3.4.5, 300.1.1.1"
    assert non_loopback_addresses(text) == [remote]


def test_tests_and_benchmarks_name_only_loopback_addresses() -> None:
    offenders = []
    for folder in ("tests", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in SUFFIXES and path.is_file():
                offenders += [f"{path.relative_to(ROOT)}: {a}" for a in non_loopback_addresses(path.read_text(errors="replace"))]
    assert offenders == []
