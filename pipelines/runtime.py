"""The Ray side of running a pipeline: connecting (shardwalk.workers.autoconnect), and submitting stages as Ray tasks."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable
from typing import Any

import ray

from shardwalk.core.dag.runner import StageOptions
from shardwalk.workers.autoconnect import connect, probe
from shardwalk.workers.progress_channel import Channel, run_reporting

__all__ = ["RETRIED_ERRORS", "connect", "probe", "ray_submit"]

# A stage whose own worker or node dies is retried by Ray; one whose actors died on a lost node sees one of
# these and is retried too (its temporary output is discarded, so a retry starts clean). Errors of the
# stage's own logic are not retried.
RETRIED_ERRORS = [ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.NodeDiedError,
                  ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError]


def ray_submit(fn: Callable[..., Any], args: tuple[Any, ...], options: StageOptions,
               channel: Channel | None = None) -> cf.Future:
    """Run `fn(*args)` as a Ray task, retried when a worker, node or actor it depends on is lost.

    With a `channel`, the stage's progress reports (shardwalk.core.progress) go to the driver's listener.
    """
    remote = ray.remote(run_reporting).options(
        num_cpus=options.num_cpus, max_retries=options.max_retries, retry_exceptions=RETRIED_ERRORS,
        name=f"stage:{options.name}",
    )
    return remote.remote(channel, options.name, fn, *args).future()
