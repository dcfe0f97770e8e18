"""Section `retry`: the SDK's waits and retry decisions.

The core client's arithmetic comes from calling its own methods (`_calculate_retry_timeout`,
`_should_retry`) with the random source and wall clock fixed; the helpers' loops (the work
poller, the session runner's result send and stream reconnect, the worker's heartbeat) are run
against the loopback server with their random and sleep functions replaced by recorders, so
each wait they asked for is observed rather than re-derived here.
"""

from __future__ import annotations

import time
import asyncio
import email.utils
from typing import Any, Optional

import httpx2
import anthropic
from anthropic import _constants, _base_client
from anthropic.lib import _retry
from anthropic.lib.tools import _beta_session_runner as runner_mod
from anthropic.lib.environments import _poller, _worker

from _common import ENV_ID, ENV_KEY, WORKER_ID, SESSIONS_TOKEN, Recorder, patched
from _server import Reply, Request, LoopbackServer
from _observe import Clock, AnyioWaits, heartbeat_loop
from _service import Close, WaitPosts, Scenario, event, serve, kind_of, tool_use, default_heartbeat

BUSY = {"type": "error", "error": {"type": "api_error", "message": "busy"}}
FIXED_NOW = 1_700_000_000.0


class _Stop(Exception):
    """Ends a scenario from inside a patched wait, once what it shows has been seen."""


# ------------------------------------------------------------------------------ core client


def _core() -> dict[str, Any]:
    client = anthropic.Anthropic(base_url="http://127.0.0.1:9", api_key="unused")
    options = _base_client.FinalRequestOptions.construct(method="get", url="/x")
    max_retries = client.max_retries

    def delay(retries_taken: int, headers: Optional[dict[str, str]] = None, rand: float = 0.0) -> float:
        hs = httpx2.Headers(headers) if headers is not None else None
        with patched(_base_client, "random", lambda: rand):
            return client._calculate_retry_timeout(max_retries - retries_taken, options, hs)

    taken = list(range(6))
    http_date = email.utils.formatdate(FIXED_NOW + 7, usegmt=True)

    class WallClock:
        @staticmethod
        def time() -> float:
            return FIXED_NOW

        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

    with patched(_base_client, "time", WallClock()):
        date_wait = delay(0, {"retry-after": http_date})

    def should(status: int, header: Optional[str] = None) -> bool:
        headers = {"x-should-retry": header} if header is not None else {}
        response = httpx2.Response(
            status, headers=headers, request=httpx2.Request("GET", "http://127.0.0.1:9/")
        )
        return client._should_retry(response)

    statuses = [400, 401, 403, 404, 408, 409, 412, 422, 429, 500, 502, 503, 529]
    client.close()
    return {
        "default_max_retries": _constants.DEFAULT_MAX_RETRIES,
        "initial_retry_delay": _constants.INITIAL_RETRY_DELAY,
        "max_retry_delay": _constants.MAX_RETRY_DELAY,
        "backoff": {
            "retries_taken": taken,
            "delay_random_0": [delay(n, rand=0.0) for n in taken],
            "delay_random_1": [delay(n, rand=1.0) for n in taken],
        },
        "retry_after": [
            {
                "headers": {"retry-after-ms": "1500", "retry-after": "99"},
                "wait": delay(3, {"retry-after-ms": "1500", "retry-after": "99"}),
            },
            {"headers": {"retry-after": "3"}, "wait": delay(0, {"retry-after": "3"})},
            {"headers": {"retry-after": http_date}, "now": FIXED_NOW, "wait": date_wait},
        ],
        "should_retry": [{"status": s, "x_should_retry": None, "retried": should(s)} for s in statuses]
        + [
            {"status": 500, "x_should_retry": "false", "retried": should(500, "false")},
            {"status": 400, "x_should_retry": "true", "retried": should(400, "true")},
        ],
        "attempts_on_529": _attempts_on(529),
    }


def _attempts_on(status: int) -> dict[str, Any]:
    """Every attempt the client makes when each answer is `status` (waits shortened by the server)."""
    with LoopbackServer(lambda req: Reply.json(BUSY, status, [("retry-after-ms", "1")])) as server:
        client = anthropic.Anthropic(base_url=server.base_url, auth_token=ENV_KEY)
        error = None
        try:
            client.beta.environments.work.poll(ENV_ID)
        except anthropic.APIStatusError as e:
            error = type(e).__name__
        client.close()
        counts = [r.header("x-stainless-retry-count") for r in server.requests]
    return {"status": status, "attempts": len(counts), "retry_count_headers": counts, "error": error}


def _fatal() -> list[dict[str, Any]]:
    request = httpx2.Request("GET", "http://127.0.0.1:9/")
    client = anthropic.Anthropic(base_url="http://127.0.0.1:9", api_key="unused")
    out = []
    for status in [400, 401, 403, 404, 408, 409, 412, 422, 429, 500, 503]:
        err = client._make_status_error("m", body=None, response=httpx2.Response(status, request=request))
        out.append({"status": status, "fatal": _retry.is_fatal_status_error(err)})
    client.close()
    return out


# ------------------------------------------------------------------------------ poller


def _poller_waits(failures: int) -> dict[str, Any]:
    """`failures` failed polls (503), then an empty one: what the poller waits after each."""

    def answer(req: Request) -> Reply:
        polls = sum(1 for r in server.requests if kind_of(r) == "poll")
        return Reply.json(BUSY, 503) if polls <= failures else Reply.json(None)

    jitter = Recorder(lambda low, high: low)

    def stop_after_empty(waits: AnyioWaits) -> None:
        if len(waits.sleeps) > failures:
            raise _Stop

    waits = AnyioWaits(stop_after_empty)
    with LoopbackServer(answer) as server:
        client = anthropic.AsyncAnthropic(base_url=server.base_url, auth_token=ENV_KEY, max_retries=0)

        async def run() -> None:
            try:
                async for _ in _poller.aiter_work(
                    client.beta.environments.work, environment_id=ENV_ID, worker_id=WORKER_ID
                ):
                    pass
            except _Stop:
                pass
            await client.close()

        with patched(_poller, "jitter", jitter), patched(_poller, "anyio", waits):
            asyncio.run(run())
        queries = [r.query for r in server.requests]
    return {
        "poll_block_ms": _poller.POLL_BLOCK_MS,
        "failed_polls": failures,
        "backoff_after_failure": [w - j[0] for w, j in zip(waits.sleeps[:failures], jitter.calls)],
        "jitter_after_failure": [list(j) for j in jitter.calls[:failures]],
        "jitter_after_empty_poll": list(jitter.calls[failures]),
        "poll_queries": queries,
    }


# ------------------------------------------------------------------------------ session runner


def _run_runner(scenario: Scenario, waits: AnyioWaits, jitter: Optional[Recorder] = None) -> list[Request]:
    server, _service = serve(scenario)
    with server:

        async def run() -> None:
            client = anthropic.AsyncAnthropic(
                base_url=server.base_url, auth_token=SESSIONS_TOKEN, max_retries=0
            )
            tools = [_echo_tool()]
            async for _ in client.beta.sessions.events.tool_runner("sesn_test", tools=tools, max_idle=None):
                pass
            await client.close()

        with patched(runner_mod, "anyio", waits):
            if jitter is not None:
                with patched(runner_mod, "jitter", jitter):
                    asyncio.run(run())
            else:
                asyncio.run(run())
        return list(server.requests)


def _echo_tool() -> Any:
    from anthropic.lib.tools._beta_functions import BetaAsyncBuiltinFunctionTool

    class Echo(BetaAsyncBuiltinFunctionTool):
        def to_dict(self) -> Any:
            return {"name": "echo", "description": "echo", "input_schema": {"type": "object"}}

        async def call(self, input: object) -> Any:  # noqa: A002
            return "ok"

    return Echo()


def _send_retry(failures: int) -> dict[str, Any]:
    """A result post that fails `failures` times (503) before it lands: the runner's waits."""
    call = tool_use("sevt_call", "echo", {})
    stream = [call, WaitPosts(1), event("session.status_terminated", "sevt_end")]
    jitter = Recorder(lambda low, high: high)
    waits = AnyioWaits()
    requests = _run_runner(Scenario(streams=[stream], post_failures=failures), waits, jitter)
    posts = [r for r in requests if kind_of(r) == "events_post"]
    return {
        "failed_posts": failures,
        "attempts": len(posts),
        "jitter_ranges": [list(j) for j in jitter.calls],
        "window_seconds": runner_mod.SEND_RETRY_WINDOW,
        "backoff_cap_seconds": runner_mod.SEND_BACKOFF_CAP,
    }


def _stream_reconnect(failures: int) -> dict[str, Any]:
    """`failures` refused stream connections, then one that delivers an event and ends, then
    one that ends the session: the runner's waits before each reconnect."""
    streams = [
        [event("session.status_running", "sevt_one"), Close()],
        [event("session.status_terminated", "sevt_end")],
    ]
    waits = AnyioWaits()
    _run_runner(Scenario(streams=streams, stream_failures=failures), waits)
    return {
        "start_seconds": runner_mod.STREAM_BACKOFF_START,
        "cap_seconds": runner_mod.STREAM_BACKOFF_CAP,
        "refused_connections": failures,
        "waits_after_refusals": waits.move_on[:failures],
        "wait_after_a_stream_that_delivered_an_event": waits.move_on[failures],
    }


# ------------------------------------------------------------------------------ heartbeat


def _heartbeat_intervals(ttls: list[int]) -> dict[str, Any]:
    replies = [Reply.json(default_heartbeat(ttl_seconds=t)) for t in ttls]
    replies.append(Reply.json(default_heartbeat(state="stopping")))
    observed = heartbeat_loop(replies)
    return {"ttl_seconds": ttls, "first_wait": _worker._HEARTBEAT_DEFAULT, "waits_after": observed["waits"]}


def _heartbeat_gives_up() -> dict[str, Any]:
    """One good beat (TTL 60 s), then transient failures until the loop gives up."""
    clock = Clock()
    start = clock.now
    replies = [Reply.json(default_heartbeat(ttl_seconds=60)), Reply.json(BUSY, 503)]
    observed = heartbeat_loop(replies, clock)
    elapsed = []
    t = start
    for w in observed["waits"]:
        t += w
        elapsed.append(t - start)
    verdicts = [" assumed lost" in m for m in observed["logs"] if "heartbeat" in m]
    return {
        "ttl_seconds": 60,
        "failures_at_seconds_after_success": elapsed,
        "gave_up": verdicts,
        "lease_end": observed["lease_end"],
        "default_ttl_before_first_beat": _worker._HEARTBEAT_TTL_DEFAULT,
    }


def retry() -> dict[str, Any]:
    return {
        "about": (
            "`core`: the client's retry policy; `backoff` is its wait before the retry after "
            "`retries_taken` earlier attempts with the random source at 0 and at 1 (it draws from "
            "[0, 1)); `retry_after` waits the server asked for (`now`: the wall clock, epoch "
            "seconds); `should_retry` per status and `x-should-retry` header; `attempts_on_529` "
            "counts what the client sends when every answer is 529. `fatal_status` is the "
            "helpers' `is_fatal_status_error`. `poller`: a run of the work poller through failed "
            "polls and an empty one (its random draws replaced by the low end of their range, "
            "recorded). `result_send`: the session runner posting a result through failures (the "
            "draws recorded, each range [d/2, d]). `stream_reconnect`: the runner's waits before "
            "reconnecting its event stream. `heartbeat_interval`: the worker's waits between "
            "beats as answers report each TTL. `heartbeat_gives_up`: transient heartbeat failures "
            "after a good beat, with the loop's clock advanced only by its own waits."
        ),
        "core": _core(),
        "fatal_status": _fatal(),
        "poller": _poller_waits(7),
        "result_send": _send_retry(7),
        "stream_reconnect": _stream_reconnect(7),
        "heartbeat_interval": _heartbeat_intervals([60, 4, 1, 100, 0]),
        "heartbeat_gives_up": _heartbeat_gives_up(),
    }
