"""Run one of the SDK's helper loops with its waits observed.

The loops sleep between steps (`anyio.sleep`, `anyio.move_on_after`). Replacing the module's
`anyio` with `AnyioWaits` records each wait the loop asked for and returns at once, so a loop
that would take minutes runs in milliseconds, and what it waited is observed rather than
re-derived here.
"""

from __future__ import annotations

import time
import asyncio
import logging
from typing import Any, Callable, Optional

import anyio
import anthropic
from anthropic.lib.environments import _worker

from _common import ENV_ID, WORK_ID, SESSIONS_TOKEN, patched
from _server import Reply, LoopbackServer


class AnyioWaits:
    """`anyio` with `sleep` and `move_on_after` recorded and immediate; the rest is real."""

    def __init__(self, on_sleep: Optional[Callable[["AnyioWaits"], None]] = None) -> None:
        self.sleeps: list[float] = []
        self.move_on: list[float] = []
        self.fail_after_bounds: list[float] = []
        self._on_sleep = on_sleep

    def __getattr__(self, name: str) -> Any:
        return getattr(anyio, name)

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        if self._on_sleep is not None:
            self._on_sleep(self)
        await anyio.sleep(0)

    def move_on_after(self, delay: float, *args: Any, **kwargs: Any) -> Any:
        self.move_on.append(delay)
        return anyio.move_on_after(0)

    def fail_after(self, delay: float, *args: Any, **kwargs: Any) -> Any:
        self.fail_after_bounds.append(delay)
        return anyio.fail_after(delay, *args, **kwargs)


class Clock:
    """`time` for a loop under observation: `monotonic()` advances only by the loop's waits."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def heartbeat_loop(replies: list[Reply], clock: Optional[Clock] = None) -> dict[str, Any]:
    """Run the worker's lease heartbeat loop against `replies` (the last one repeats).

    Returns the queries it sent, the waits it asked for, the bound it put on each request, how
    the lease ended and what it logged.
    """
    queue = list(replies)
    logs: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logs.append(f"{record.levelname} {record.getMessage()}")

    class Waits(AnyioWaits):
        def move_on_after(self, delay: float, *args: Any, **kwargs: Any) -> Any:
            if clock is not None:
                clock.now += delay
            return super().move_on_after(delay)

    handler = Capture(level=logging.INFO)
    waits = Waits()
    with LoopbackServer(lambda req: queue.pop(0) if len(queue) > 1 else queue[0]) as server:
        client = anthropic.AsyncAnthropic(base_url=server.base_url, auth_token=SESSIONS_TOKEN, max_retries=0)
        lease = _worker._Lease()

        async def run() -> None:
            await _worker._heartbeat_loop(
                client.beta.environments.work, work_id=WORK_ID, environment_id=ENV_ID, lease=lease
            )
            await client.close()

        _worker.log.addHandler(handler)
        try:
            with patched(_worker, "anyio", waits), patched(_worker, "time", clock or time):
                asyncio.run(run())
        finally:
            _worker.log.removeHandler(handler)
        queries = [r.query for r in server.requests]
    reason = lease._end_reason
    return {
        "heartbeat_queries": queries,
        "waits": waits.move_on,
        "request_bounds": waits.fail_after_bounds,
        "lease_end": reason.value if reason else None,
        "logs": logs,
    }
