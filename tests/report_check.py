"""Count the figures a report.html really embeds: <img> tags whose data: URI decodes to a PNG."""

from __future__ import annotations

import base64
from html.parser import HTMLParser
from pathlib import Path

PNG = b"\x89PNG\r\n\x1a\n"


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources.append(dict(attrs).get("src") or "")


def embedded_pngs(report: Path) -> int:
    """How many images are embedded PNGs; any image that would need a file or the network fails the check."""
    parser = _Images()
    parser.feed(Path(report).read_text())
    count = 0
    for src in parser.sources:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix), f"{report}: image not embedded: {src[:60]}"
        assert base64.b64decode(src[len(prefix):]).startswith(PNG), f"{report}: embedded image is not a PNG"
        count += 1
    return count
