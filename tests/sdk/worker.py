#!/usr/bin/env python3
"""Run the official `anthropic` SDK's `EnvironmentWorker` against a local CMA emulator.

This is the conformance driver used by `tests/tests/sdk_conformance.rs`. It builds an
`AsyncAnthropic` client for a loopback base URL, creates the SDK's real worker with its
default tools (the `agent_toolset_20260401` set bound to a working directory) and lets it
poll, ack, heartbeat, stream events, run tools and force-stop work items exactly as it would
against the hosted service. Nothing of the worker is patched or replaced.

The worker loops forever by design, so the driver runs it as a task and cancels it once a
stop condition holds:

* `--until-stopped N`: the environment's work list (`GET .../work`, environment key) shows
  at least N items and every one of them is `stopped`;
* `--until-unreachable`: the emulator stopped accepting connections (it was started with
  `--exit-when-done` and finished its scenario).

Exit codes: 0 = stop condition reached with no failed work item; 1 = the worker died or a
work item failed; 2 = bad arguments; 3 = timeout. Every failure prints one line starting
with `sdk-worker: error:` on stderr.
"""

from __future__ import annotations

import os
import sys
import time
import asyncio
import logging
import argparse
import tempfile
from urllib.parse import urlsplit

PREFIX = "sdk-worker"
LOOPBACK = "127.0.0.1"
POLL_INTERVAL_S = 0.2
PROBE_TIMEOUT_S = 1.0
STARTUP_WAIT_S = 10.0


class Failure(Exception):
    """A failure with its exit code and a message meant for a person."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class ItemFailures(logging.Handler):
    """Counts the worker's "work item failed" log records (the worker swallows those errors)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("work item failed"):
            self.messages.append(message)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="worker.py",
        description="Drive the anthropic SDK EnvironmentWorker against a loopback CMA emulator.",
    )
    parser.add_argument(
        "--base-url",
        default=os.environ.get("CMA_BASE_URL"),
        help="emulator base URL, http://127.0.0.1:PORT (env CMA_BASE_URL)",
    )
    parser.add_argument(
        "--environment-id", default=os.environ.get("CMA_ENVIRONMENT_ID"), help="env CMA_ENVIRONMENT_ID"
    )
    parser.add_argument(
        "--environment-key", default=os.environ.get("CMA_ENVIRONMENT_KEY"), help="env CMA_ENVIRONMENT_KEY"
    )
    parser.add_argument(
        "--workdir",
        default=None,
        help="tool working directory (must exist); default: a temporary directory removed at exit",
    )
    parser.add_argument(
        "--max-idle",
        type=float,
        default=1.0,
        help="seconds the runner waits after an end-of-turn idle before it ends the item (SDK default 60)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="overall deadline in seconds")
    parser.add_argument(
        "--until-stopped",
        type=int,
        default=None,
        metavar="N",
        help="stop once the work list shows at least N items, all stopped",
    )
    parser.add_argument(
        "--until-unreachable",
        action="store_true",
        help="stop once the emulator no longer accepts connections",
    )
    parser.add_argument(
        "--allow-item-errors",
        action="store_true",
        help="exit 0 even if the worker logged a failed work item",
    )
    args = parser.parse_args(argv)
    missing = [
        flag
        for flag, value in (
            ("--base-url", args.base_url),
            ("--environment-id", args.environment_id),
            ("--environment-key", args.environment_key),
        )
        if not value
    ]
    if missing:
        raise Failure(2, "missing " + ", ".join(missing))
    if args.until_stopped is None and not args.until_unreachable:
        raise Failure(2, "give a stop condition: --until-stopped N and/or --until-unreachable")
    if args.until_stopped is not None and args.until_stopped < 1:
        raise Failure(2, "--until-stopped must be at least 1")
    if args.timeout <= 0:
        raise Failure(2, "--timeout must be positive")
    return args


def loopback_port(base_url: str) -> int:
    """The port of `base_url`, which must be plain http on 127.0.0.1 (this driver never goes elsewhere)."""
    parts = urlsplit(base_url)
    if parts.scheme != "http" or parts.hostname != LOOPBACK or parts.port is None:
        raise Failure(2, f"base URL must be http://{LOOPBACK}:PORT, got {base_url!r}")
    if parts.path not in ("", "/"):
        raise Failure(2, f"base URL must have no path, got {base_url!r}")
    return parts.port


async def reachable(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), PROBE_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True


async def all_stopped(client: object, environment_id: str, at_least: int) -> bool:
    """True when the work list holds `at_least` items and every item is `stopped`."""
    states: list[str] = []
    async for item in client.beta.environments.work.list(environment_id=environment_id, limit=100):  # type: ignore[attr-defined]
        states.append(item.state)
    return len(states) >= at_least and all(state == "stopped" for state in states)


def scrub_anthropic_env() -> None:
    # The client reads ANTHROPIC_BASE_URL / _API_KEY / _CUSTOM_HEADERS from the environment;
    # the conformance run must depend on the command line only.
    for name in [n for n in os.environ if n.startswith("ANTHROPIC_")]:
        del os.environ[name]


async def run(args: argparse.Namespace, workdir: str, failures: ItemFailures) -> None:
    port = loopback_port(args.base_url)
    scrub_anthropic_env()
    from anthropic import AsyncAnthropic

    deadline = time.monotonic() + args.timeout
    start_by = time.monotonic() + min(STARTUP_WAIT_S, args.timeout)
    while not await reachable(port):
        if time.monotonic() > start_by:
            raise Failure(1, f"emulator not reachable at {args.base_url}")
        await asyncio.sleep(POLL_INTERVAL_S)

    # The worker authenticates with the environment key and the per-item sessions token
    # only; it never sends the parent client's credential, so that one is a placeholder.
    client = AsyncAnthropic(base_url=args.base_url, api_key="unused-by-the-worker")
    # The stop check lists work with the environment key, as a worker-side caller would.
    observer = AsyncAnthropic(base_url=args.base_url, api_key=None, auth_token=args.environment_key)
    worker = client.beta.environments.work.worker(
        environment_id=args.environment_id,
        environment_key=args.environment_key,
        workdir=workdir,
        max_idle=args.max_idle,
    )
    task = asyncio.create_task(worker.run(), name="environment-worker")
    reason = None
    try:
        while reason is None:
            await asyncio.wait({task}, timeout=POLL_INTERVAL_S)
            if task.done():
                exc = task.exception()
                if exc is not None:
                    raise Failure(1, f"EnvironmentWorker.run raised {exc!r}") from exc
                raise Failure(1, "EnvironmentWorker.run returned, but it should loop until cancelled")
            if time.monotonic() > deadline:
                raise Failure(3, f"timed out after {args.timeout:g}s before the stop condition held")
            if args.until_unreachable and not await reachable(port):
                reason = "emulator went away"
            elif args.until_stopped is not None:
                try:
                    if await all_stopped(observer, args.environment_id, args.until_stopped):
                        reason = f"{args.until_stopped}+ work item(s) stopped"
                except Exception as exc:  # noqa: BLE001 - a failed check is retried until the deadline
                    logging.getLogger(PREFIX).debug("work list check failed: %r", exc)
    finally:
        if not task.done():
            task.cancel()
        try:
            await task
        except BaseException:  # noqa: BLE001 - its outcome was handled above or is the cancel itself
            pass
        await client.close()
        await observer.close()
    logging.getLogger(PREFIX).info("stopping: %s", reason)
    if failures.messages and not args.allow_item_errors:
        raise Failure(1, f"{len(failures.messages)} work item(s) failed: " + " | ".join(failures.messages))


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The HTTP client logs one INFO line per request: kept, they are the transcript a failing
    # conformance test prints.
    failures = ItemFailures()
    logging.getLogger("anthropic").addHandler(failures)
    try:
        args = parse_args(argv)
        if args.workdir is not None:
            if not os.path.isdir(args.workdir):
                raise Failure(2, f"--workdir {args.workdir!r} is not a directory")
            asyncio.run(run(args, args.workdir, failures))
        else:
            with tempfile.TemporaryDirectory(prefix="cma-sdk-worker-") as workdir:
                asyncio.run(run(args, workdir, failures))
    except Failure as failure:
        print(f"{PREFIX}: error: {failure}", file=sys.stderr)
        return failure.code
    except KeyboardInterrupt:
        print(f"{PREFIX}: error: interrupted", file=sys.stderr)
        return 1
    print(f"{PREFIX}: ok", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
