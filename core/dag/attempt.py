"""What one running attempt of a stage sees: where its resumable state lives, and its commit check.

Shared by the local runner (core/dag/runner.py) and the object-store executor (core/dag/stage_store.py).
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from shardwalk.core.storage.files import check_declared_rows

STATE_DIR: contextvars.ContextVar[Path | str | None] = contextvars.ContextVar("stage_state_dir", default=None)


def state_dir(final: str | os.PathLike) -> Path:
    """Where a stage keeps resumable state (checkpoints) between attempts: beside its output, same key.

    Keyed like the output, so state of other code versions or settings is never resumed from; removed
    once the output is committed, and retired by `--force` before the stage starts again.
    """
    final = Path(final)
    return final.parent / f".state-{final.name}"


def stage_state_dir() -> Path | str | None:
    """The state directory (a URI on an object-store runs dir) of the stage running in this worker, if any."""
    return STATE_DIR.get()



def commit_check(extra: Mapping[str, Any], declares_rows: bool, where: str,
                 seen: dict[str, Any] | None = None) -> Callable[[dict[str, Any]], None]:
    """The check a stage's manifest passes before it is committed (its declared rows), keeping a copy in `seen`."""
    def check(manifest: dict[str, Any]) -> None:
        if declares_rows:
            check_declared_rows(manifest, extra.get("metrics", {}).get("rows"), where)
        if seen is not None:
            seen.update(manifest)
    return check
