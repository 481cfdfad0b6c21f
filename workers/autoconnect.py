"""Auto-connect for the public Python API: join RAY_ADDRESS or start an embedded Ray on first use, as Ray's own APIs do."""

from __future__ import annotations

import ray


def ensure_ray() -> None:
    """Connect with the CLI's safe defaults (no dashboard, RAY_ADDRESS honoured) unless Ray already runs here."""
    if ray.is_initialized():
        return
    from shardwalk.pipelines.runtime import connect  # the one place the connection defaults live

    connect()
