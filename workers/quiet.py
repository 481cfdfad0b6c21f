"""Fan-out results without Ray's noise: once the first failure is known, its siblings' errors are not news."""

from __future__ import annotations

import os
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
