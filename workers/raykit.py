"""Ray helpers every worker uses: fail-fast waiting with typed errors, quiet collection, cleanup."""

from __future__ import annotations

import contextlib
import shutil
import warnings
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError
from ray.util.placement_group import remove_placement_group

from shardwalk.core.errors import ConfigError, CorruptArtifactError, DataError, ShardUnavailableError


def wait_all(refs: list[Any], what: str, timeout: float | None = None) -> list[Any]:
    """ray.get that turns a dead actor into ShardUnavailableError and unwraps our typed errors."""
    try:
        return ray.get(refs, timeout=timeout)
    except RayActorError as exc:
        raise ShardUnavailableError(f"{what}: a shard actor died ({type(exc).__name__})") from None
    except GetTimeoutError:
        raise ShardUnavailableError(f"{what}: timed out after {timeout:.0f}s waiting for shard actors (cluster CPUs all taken?)") from None
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if hasattr(exc, "cause") else None
        if isinstance(cause, DataError | ConfigError | CorruptArtifactError | ShardUnavailableError):
            raise cause from None
        if isinstance(cause, ObjectLostError):  # e.g. a routed piece whose owner, a shard actor, died
            raise ShardUnavailableError(f"{what}: data held by a dead shard actor was lost ({type(cause).__name__})") from None
        raise
    except ObjectLostError as exc:
        raise ShardUnavailableError(f"{what}: data held by a dead shard actor was lost ({type(exc).__name__})") from None


def collect_quietly(refs: list[Any], timeout: float = 10.0) -> None:
    """Collect the outcomes of calls abandoned after a failure (Ray logs uncollected errors as unhandled)."""
    if not refs:
        return
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    for ref in ready:
        with contextlib.suppress(Exception):
            ray.get(ref)


def release(actors: list[Any], pgs: list[Any], workdir: str | None) -> None:
    """Kill actors (no restart), remove placement groups and a private working directory; never raises."""
    if ray.is_initialized():
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        for pg in pgs:
            with contextlib.suppress(Exception):
                remove_placement_group(pg)
    if workdir:
        shutil.rmtree(workdir, ignore_errors=True)


RAY_INTERNAL_DEPRECATION = r"(?s).*Use get_actor_id\(\) instead"  # what RuntimeContext.actor_id warns


def was_reconstructed() -> bool:
    """Whether Ray restarted the calling actor (`RuntimeContext.was_current_actor_reconstructed`, public API).

    Ray 2.60 offers no other public restart count without the dashboard (its state API needs it). The
    property itself is not deprecated, but its body reads the deprecated `RuntimeContext.actor_id`: only
    that one warning of Ray's own making is silenced.
    """
    context = ray.get_runtime_context() if ray.is_initialized() else None
    if context is None or context.get_actor_id() is None:
        return False  # an actor class used in-process (tests): never restarted
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=RAY_INTERNAL_DEPRECATION, category=DeprecationWarning)
        return bool(context.was_current_actor_reconstructed)
