"""Fan-out results without Ray's noise: once the first failure is known, its siblings' errors are not news."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import ray

QUIET = "RAY_IGNORE_UNHANDLED_ERRORS"  # read by Ray each time it would log an uncollected task error


def get_all(refs: list[Any]) -> list[Any]:
    """`ray.get(refs)`; on the first error, stop this process logging the other refs' errors as 'Unhandled'.

    Ray logs every failed result that is dropped without being fetched, with its whole traceback: a
    validation error on one of 8 shards printed 7 more. The raised error is the one the user needs.
    """
    try:
        return ray.get(refs)
    except Exception:
        os.environ[QUIET] = "1"
        raise


VERBOSE = "SHARDWALK_VERBOSE"  # set (to anything but "" or "0") by `--verbose`: leave Ray's logs as Ray sets them
TOKEN_AUTH_NOTICE = "Token authentication is enabled for this Ray cluster"  # how Ray 2.60's every-run notice starts
DATA_PROGRESS_LOGGER = "ray.data._internal.progress"  # says, at WARNING, that the progress bars are off


def verbose() -> bool:
    """Whether the user asked for Ray's and Ray Data's own logs (`--verbose` or SHARDWALK_VERBOSE=1)."""
    return os.environ.get(VERBOSE, "") not in ("", "0")


class _DropNotice(logging.Filter):
    """Drops one notice by its text (Ray logs it from a module of its own internals, not a public logger)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def quiet_ray_driver() -> None:
    """Ray's every-run notice that token authentication is on is not news: drop it from the `ray` logger's
    handlers (where Ray's own records end up)."""
    if verbose():
        return
    for handler in logging.getLogger("ray").handlers:
        if not any(isinstance(f, _DropNotice) for f in handler.filters):
            handler.addFilter(_DropNotice(TOKEN_AUTH_NOTICE))


def quiet_ray_data() -> None:
    """Ray Data's execution plans, progress lines and pool-size warnings stay in its log file unless verbose."""
    if verbose():
        return
    from ray.data import DataContext  # Ray Data (~1 s): only where a Dataset is used

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger(DATA_PROGRESS_LOGGER).setLevel(logging.ERROR)  # "Progress bars disabled. To enable, ..."
    warnings.filterwarnings("ignore", category=UserWarning, module=r"ray\.data")
