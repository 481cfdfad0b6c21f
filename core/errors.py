"""Typed errors: every bad input is one of these, with a one-line message naming what and where."""

from __future__ import annotations


class ShardwalkError(Exception):
    """Base class of every error shardwalk raises on purpose."""


class InputError(ShardwalkError, ValueError):
    """The user's input or configuration is wrong; the CLI exits 2 on these."""


class DataError(InputError):
    """A table, array or file does not meet its data contract (see core/data/schema.py)."""


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


class InvariantError(ShardwalkError):
    """An internal guarantee broke (a bug, not the input): raised where an `assert` would vanish under -O."""


def one_line(exc: BaseException) -> str:
    """Render an exception as the single line the CLI prints."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ShardStateError(ShardwalkError, RuntimeError):
    """A shard actor was asked for a step before the one it depends on (a driver bug, not bad input)."""


class CommitRefusedError(ShardwalkError):
    """A stage's output failed its commit checks (its temporary directory was removed or replaced while it ran,
    or it holds other row counts than the stage declared): nothing is committed (exit 1: not the input's fault)."""


class UpstreamVanishedError(ShardwalkError):
    """A committed upstream output disappeared before a stage read it (deleted from the store or disk): the
    runner recomputes it; exit 1 if it keeps vanishing (not the input's fault)."""
