"""The Ray side of running a pipeline: connecting, and submitting stages as Ray tasks."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
from collections.abc import Callable
from typing import Any

import ray

from core.dag import StageOptions

log = logging.getLogger("shardwalk")


def connect(address: str | None = None, *, num_cpus: int | None = None) -> dict[str, Any]:
    """Join a cluster (`address`, or RAY_ADDRESS) or start an embedded local Ray without the dashboard.

    Ray maps 127.0.0.1 to the node's routable address on purpose (services.resolve_ip_for_localhost), so
    the embedded instance cannot be confined to loopback; it relies on Ray's token authentication instead.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return ray.cluster_resources()
    address = address or os.environ.get("RAY_ADDRESS") or None
    common: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(
            address="local",  # always a fresh embedded instance, even if `ray start` ran on this machine
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            configure_logging=True,
            **common,
        )
    return ray.cluster_resources()


# A stage whose own worker or node dies is retried by Ray; one whose actors died on a lost node sees one of
# these and is retried too (its temporary output is discarded, so a retry starts clean). Errors of the
# stage's own logic are not retried.
RETRIED_ERRORS = [ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.NodeDiedError,
                  ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError]


def ray_submit(fn: Callable[..., Any], args: tuple[Any, ...], options: StageOptions) -> cf.Future:
    """Run `fn(*args)` as a Ray task, retried when a worker, node or actor it depends on is lost."""
    remote = ray.remote(fn).options(
        num_cpus=options.num_cpus, max_retries=options.max_retries, retry_exceptions=RETRIED_ERRORS,
        name=f"stage:{options.name}",
    )
    return remote.remote(*args).future()
