"""Typed errors: every bad input is one of these, with a one-line message naming what and where."""

from __future__ import annotations


class ShardwalkError(Exception):
    """Base class of every error shardwalk raises on purpose."""


class InputError(ShardwalkError, ValueError):
    """The user's input or configuration is wrong; the CLI exits 2 on these."""


class DataError(InputError):
    """A table, array or file does not meet its data contract (see core/schema.py)."""


class ConfigError(InputError):
    """A configuration value, parameter or CLI argument is invalid."""


class GraphError(DataError):
    """An agent graph is unusable for a random walk (disconnected, self-loops, directed, ...)."""


class CorruptArtifactError(InputError):
    """A persisted artifact fails its checksum, is truncated, or is not what its manifest says."""


class DivergenceError(ShardwalkError):
    """An iterative method diverged (non-finite parameters); nothing is written."""


class ClusterUnreachableError(ShardwalkError):
    """The Ray cluster named by --address / RAY_ADDRESS could not be joined (exit 1: not the data's fault)."""


class ShardUnavailableError(ShardwalkError):
    """A shard or replica could not answer and partial results were not allowed."""


def one_line(exc: BaseException) -> str:
    """Render an exception as the single line the CLI prints."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ShardStateError(ShardwalkError, RuntimeError):
    """A shard actor was asked for a step before the one it depends on (a driver bug, not bad input)."""
