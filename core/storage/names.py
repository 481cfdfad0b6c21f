"""The one grammar of a path read from an artifact (manifests, run records, exports, checkpoints).

Such a path is data from a stranger: it is joined under a trusted root with path operations, never parsed as
a URI. So it may hold only plain relative segments — no scheme, query (`?endpoint_override=`), fragment,
percent-escape (`%2e%2e`), backslash, empty, `.` or `..` segment — or it could name another server or
another folder once some layer decodes it.
"""

from __future__ import annotations

import re

from shardwalk.core.errors import CorruptArtifactError

SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
MAX_NAME = 1024  # characters in a whole relative name
MAX_SEGMENT = 255  # characters in one segment (a filesystem's limit on a file name)


def artifact_name(rel: object, where: str) -> str:
    """`rel` if it is a safe relative name; else CorruptArtifactError naming `where` (the artifact it came from)."""
    if not isinstance(rel, str) or not rel or len(rel) > MAX_NAME:
        raise CorruptArtifactError(f"{where}: names an unsafe path {str(rel)[:80]!r} (not a relative name of 1-{MAX_NAME} characters)")
    for part in rel.split("/"):
        if part in (".", "..") or len(part) > MAX_SEGMENT or not SEGMENT.fullmatch(part):
            raise CorruptArtifactError(
                f"{where}: names an unsafe path {rel[:200]!r} (segments of letters, digits, '.', '_', '-' only; "
                "no empty, '.' or '..' segment)")
    return rel


def is_artifact_name(rel: object) -> bool:
    """Whether `rel` passes `artifact_name` (for filters that skip rather than refuse)."""
    try:
        artifact_name(rel, "")
    except CorruptArtifactError:
        return False
    return True
