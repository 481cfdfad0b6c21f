"""Where a distributed walk's finished tokens land: the driver holds one `wait(key)` ObjectRef per token.

Its own module, importing nothing of shardwalk: a sink is one more actor process per walk, and the walker
module's imports (numba, networkx, the kernels) would cost it ~0.6 CPU-s for nothing. Tokens arrive as
`Token.plain()` tuples, so keeping them imports no shardwalk code either.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray


@ray.remote(num_cpus=0)
class TokenSink:
    """Finished tokens by key, each handed to the one `wait(key)` call that asks for it."""

    def __init__(self) -> None:
        self._results: dict[int, tuple[Any, BaseException | None]] = {}
        self._events: dict[int, asyncio.Event] = {}

    def _event(self, key: int) -> asyncio.Event:
        return self._events.setdefault(key, asyncio.Event())

    async def deliver(self, key: int, plain: tuple[Any, ...] | None, error: BaseException | None) -> None:
        self._results[key] = (plain, error)
        self._event(key).set()

    async def wait(self, key: int) -> tuple[tuple[Any, ...] | None, BaseException | None]:
        await self._event(key).wait()
        return self._results.pop(key)
