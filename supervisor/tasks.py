"""The tasks an owner spawns: held while they run, cancelled together when it closes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any


class TaskSet:
    """Spawned tasks, referenced until done (the loop itself keeps only weak references, so an
    unreferenced task can vanish mid-flight)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[Any]] = set()

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancel what still runs and wait for it to end."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
