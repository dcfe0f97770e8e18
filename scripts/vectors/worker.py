"""Section `worker`: the requests the SDK's `EnvironmentWorker.run()` makes for one work item,
in order, for a set of scenarios (happy path, lease answers, terminated session, history
reconciliation, permission gating, calls it does not own, session end).

Each scenario runs the real worker (its default toolset in a temporary working directory)
against the loopback service until the worker polls again after the item; that poll is the
last step recorded. The worker sends the session fetch and the first heartbeat together; the
service holds each until the other has arrived (a worker that sent them one after the other
would stall there and fail the run), and the two are listed as one `concurrent` step, sorted,
since which one left first is chance. Everything else is in arrival order, which the worker's
own sequencing fixes.
"""

from __future__ import annotations

import asyncio
import tempfile
import contextlib
from typing import Any, Callable

import anthropic
from anthropic.lib.tools import agent_toolset
from anthropic.lib.tools import _beta_session_runner as runner_mod
from anthropic.lib.tools._beta_functions import BetaAsyncBuiltinFunctionTool
from anthropic.lib.environments import EnvironmentWorker

from _common import ENV_ID, ENV_KEY, WORKER_ID, SESSIONS_TOKEN, bearer, work_item, secret_for
from client import PRECONDITION_BODY
from _server import Reply, Request
from _service import (
    Close,
    Scenario,
    WaitPosts,
    event,
    serve,
    arrived,
    kind_of,
    tool_use,
    default_heartbeat,
)

PARENT_API_KEY = "sk-ant-parent"
SECRET = secret_for({"sessions_token": SESSIONS_TOKEN}, padded=False)
SESSION_ITEM = work_item(secret=SECRET)

RUNNING = event("session.status_running", "sevt_running")
IDLE_END_TURN = event("session.status_idle", "sevt_idle", stop_reason={"type": "end_turn"})
TERMINATED = event("session.status_terminated", "sevt_terminated")
FENCE = tool_use("sevt_fence", "bash", {"command": "echo fence"})


def _bash(event_id: str, command: str, **fields: Any) -> dict[str, Any]:
    return tool_use(event_id, "bash", {"command": command}, **fields)


def _confirm(event_id: str, tool_use_id: str, result: str, **fields: Any) -> dict[str, Any]:
    return event("user.tool_confirmation", event_id, tool_use_id=tool_use_id, result=result, **fields)


def _both_in_flight() -> dict[str, Callable[[list[Request]], bool]]:
    """Answer neither the session fetch nor the heartbeat before both have arrived.

    The worker starts them together; holding both makes them overlap on every run, so the
    recorded steps do not depend on which one the scheduler happened to send first.
    """
    return {"session_get": arrived("heartbeat"), "heartbeat": arrived("session_get")}


def _heartbeat_decides(then: str) -> dict[str, Callable[[list[Request]], bool]]:
    """Both in flight; the heartbeat is answered, and the session fetch only once the worker
    has acted on that answer (its request of kind `then` arrived), so nothing else can."""
    if then == "poll":
        return {"heartbeat": arrived("session_get"), "session_get": lambda rs: _polls(rs) >= 2}
    return {"heartbeat": arrived("session_get"), "session_get": arrived(then)}


class _LookupCustomer(BetaAsyncBuiltinFunctionTool):
    """A custom tool the worker is given in W8b."""

    def to_dict(self) -> Any:
        return {"name": "lookup_customer", "description": "look up", "input_schema": {"type": "object"}}

    async def call(self, input: object) -> Any:  # noqa: A002
        return "customer 42"


def _with_custom_tool(ctx: agent_toolset.AgentToolContext) -> list[Any]:
    return [*agent_toolset.beta_agent_toolset_20260401(ctx), _LookupCustomer()]


SCENARIOS: list[tuple[str, str, Scenario, dict[str, Any]]] = [
    (
        "W1",
        "A session item whose secret carries a sessions token; three tool calls, then the session ends.",
        Scenario(
            item=SESSION_ITEM,
            streams=[
                [
                    RUNNING,
                    _bash("sevt_tu01", "echo one"),
                    tool_use("sevt_tu02", "write", {"file_path": "a.txt", "content": "alpha"}),
                    tool_use("sevt_tu03", "read", {"file_path": "a.txt"}),
                    WaitPosts(3),
                    IDLE_END_TURN,
                    TERMINATED,
                ]
            ],
        ),
        {},
    ),
    (
        "W1_no_secret",
        "As W1 with no secret on the item (one tool call).",
        Scenario(
            item=work_item(secret=None),
            streams=[[RUNNING, _bash("sevt_tu01", "echo one"), WaitPosts(1), TERMINATED]],
        ),
        {},
    ),
    (
        "W2",
        "The first heartbeat answers state `stopping`; the session fetch is answered after the stop.",
        Scenario(
            item=SESSION_ITEM,
            heartbeats=[Reply.json(default_heartbeat(state="stopping"))],
            hold=_heartbeat_decides("stop"),
        ),
        {},
    ),
    (
        "W2_lease_not_extended",
        "As W2 with `lease_extended: false` and state `active`.",
        Scenario(
            item=SESSION_ITEM,
            heartbeats=[Reply.json(default_heartbeat(lease_extended=False))],
            hold=_heartbeat_decides("stop"),
        ),
        {},
    ),
    (
        "W3",
        "The first heartbeat answers 412 (another holder); the session fetch is answered after the next poll.",
        Scenario(
            item=SESSION_ITEM,
            heartbeats=[Reply.json(PRECONDITION_BODY, 412)],
            hold=_heartbeat_decides("poll"),
        ),
        {},
    ),
    (
        "W4",
        "A work item that is not a session (`healthcheck`), with no secret.",
        Scenario(item=work_item(secret=None, data={"type": "healthcheck", "id": "hc_test"})),
        {},
    ),
    (
        "W5",
        "The session is already `terminated`.",
        Scenario(item=SESSION_ITEM, session_status="terminated"),
        {},
    ),
    (
        "W6",
        "History holds tu01 (answered) and tu02 (not); the stream repeats tu02, then a fence call.",
        Scenario(
            item=SESSION_ITEM,
            history=[
                _bash("sevt_tu01", "echo one"),
                event(
                    "user.tool_result",
                    "sevt_tr01",
                    tool_use_id="sevt_tu01",
                    is_error=False,
                    content=[{"type": "text", "text": "one"}],
                ),
                _bash("sevt_tu02", "echo two"),
            ],
            streams=[[RUNNING, _bash("sevt_tu02", "echo two"), FENCE, WaitPosts(2), TERMINATED]],
        ),
        {},
    ),
    (
        "W7",
        (
            "Permission gating: tu01 `ask` then allowed; tu02 `ask` then denied; tu03 evaluated "
            "`deny` then allowed; tu04 an unknown permission value; tu05 `allow`; then a fence call."
        ),
        Scenario(
            item=SESSION_ITEM,
            streams=[
                [
                    RUNNING,
                    _bash("sevt_tu01", "echo allowed", evaluated_permission="ask"),
                    _confirm("sevt_c01", "sevt_tu01", "allow"),
                    _bash("sevt_tu02", "echo denied", evaluated_permission="ask"),
                    _confirm("sevt_c02", "sevt_tu02", "deny", deny_message="no"),
                    _bash("sevt_tu03", "echo evaluated-deny", evaluated_permission="deny"),
                    _confirm("sevt_c03", "sevt_tu03", "allow"),
                    _bash("sevt_tu04", "echo unknown", evaluated_permission="maybe"),
                    _bash("sevt_tu05", "echo pre-allowed", evaluated_permission="allow"),
                    FENCE,
                    WaitPosts(3),
                    TERMINATED,
                ]
            ],
        ),
        {},
    ),
    (
        "W8",
        (
            "Calls of tools the worker does not have (`web_fetch`, a custom `lookup_customer`), "
            "then a fence call."
        ),
        Scenario(
            item=SESSION_ITEM,
            streams=[
                [
                    RUNNING,
                    tool_use("sevt_tu01", "web_fetch", {"url": "https://example.invalid/"}),
                    event("agent.custom_tool_use", "sevt_ct01", name="lookup_customer", input={"id": 42}),
                    FENCE,
                    WaitPosts(1),
                    TERMINATED,
                ]
            ],
        ),
        {},
    ),
    (
        "W8_custom_tool",
        "As W8 with a local custom tool `lookup_customer` (returns `customer 42`) added to the toolset.",
        Scenario(
            item=SESSION_ITEM,
            streams=[
                [
                    RUNNING,
                    event("agent.custom_tool_use", "sevt_ct01", name="lookup_customer", input={"id": 42}),
                    WaitPosts(1),
                    TERMINATED,
                ]
            ],
        ),
        {"tools": _with_custom_tool},
    ),
    (
        "W9_deleted",
        "The stream reports `session.deleted`.",
        Scenario(item=SESSION_ITEM, streams=[[RUNNING, event("session.deleted", "sevt_deleted")]]),
        {},
    ),
    (
        "W9_idle",
        "The session goes idle with `end_turn` and nothing follows; the worker runs with max_idle 0.2 s.",
        Scenario(item=SESSION_ITEM, streams=[[RUNNING, IDLE_END_TURN]]),
        {"max_idle": 0.2},
    ),
    (
        "W9_thread_terminated",
        (
            "tu01 of thread sthr_X waits for confirmation; the thread terminates; then tu01 is "
            "allowed; then a fence call."
        ),
        Scenario(
            item=SESSION_ITEM,
            streams=[
                [
                    RUNNING,
                    _bash("sevt_tu01", "echo never", evaluated_permission="ask", session_thread_id="sthr_X"),
                    event(
                        "session.thread_status_terminated",
                        "sevt_thr",
                        session_thread_id="sthr_X",
                        agent_name="sub",
                    ),
                    _confirm("sevt_c01", "sevt_tu01", "allow", session_thread_id="sthr_X"),
                    FENCE,
                    WaitPosts(1),
                    TERMINATED,
                ]
            ],
        ),
        {},
    ),
]


def _polls(requests: list[Request]) -> int:
    return sum(1 for r in requests if kind_of(r) == "poll")


def _step(req: Request) -> dict[str, Any]:
    return {
        "kind": kind_of(req),
        "method": req.method,
        "target": req.target,
        "auth": bearer(req.headers),
        "helper": req.header("x-stainless-helper"),
        "worker_id": req.header("anthropic-worker-id"),
        "body": req.body.decode() if req.body else None,
    }


def _steps(requests: list[Request], held: frozenset[str]) -> list[dict[str, Any]]:
    """Requests as steps, in arrival order, except that the first request of each `held` kind
    forms one `concurrent` step (sorted; which of them the worker sent first is chance).

    The holds made them overlap; this checks they did: each arrived before any was answered
    (a worker that sent them one after the other would have stalled on its hold instead).
    """
    first: dict[str, Request] = {}
    for r in requests:
        if kind_of(r) in held:
            first.setdefault(kind_of(r), r)
    group = list(first.values())
    if len(group) > 1:
        answered_at = min(r.answered_seq or 1 << 62 for r in group)
        late = [f"{r.method} {r.target}" for r in group if r.seq > answered_at]
        if late:
            raise AssertionError(f"not in flight together: {late}")
    out: list[dict[str, Any]] = []
    for r in requests:
        if len(group) > 1 and any(r is g for g in group):
            if r is group[0]:
                steps = sorted((_step(g) for g in group), key=lambda s: (s["kind"], s["target"]))
                out.append({"concurrent": steps})
            continue
        out.append(_step(r))
    return out


def _describe(step: Any) -> Any:
    if isinstance(step, dict):
        return step
    if isinstance(step, WaitPosts):
        return {"wait_for_results": step.count}
    if isinstance(step, Close):
        return {"end_stream": True}
    raise TypeError(step)


def run_scenario(scenario: Scenario, worker_args: dict[str, Any]) -> list[Request]:
    is_session = (scenario.item or {}).get("data", {}).get("type") == "session"
    if is_session and not scenario.hold:
        scenario.hold = _both_in_flight()
    server, _service = serve(scenario)
    with server, tempfile.TemporaryDirectory(prefix="cma-vectors-") as workdir:

        async def run() -> None:
            client = anthropic.AsyncAnthropic(base_url=server.base_url, api_key=PARENT_API_KEY)
            worker = EnvironmentWorker(
                client,
                environment_id=ENV_ID,
                environment_key=ENV_KEY,
                worker_id=WORKER_ID,
                workdir=workdir,
                **worker_args,
            )
            task = asyncio.ensure_future(worker.run())
            done = await asyncio.to_thread(server.wait_for, lambda rs: _polls(rs) >= 2)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await client.close()
            if not done:
                raise AssertionError("the worker never polled again after the item")

        asyncio.run(run())
        requests = list(server.requests)
    last_poll = max(i for i, r in enumerate(requests) if kind_of(r) == "poll")
    return requests[: last_poll + 1]


def worker() -> dict[str, Any]:
    scenarios = []
    for sid, about, scenario, worker_args in SCENARIOS:
        requests = run_scenario(scenario, worker_args)
        stream = [[_describe(s) for s in steps] for steps in scenario.streams]
        scenarios.append(
            {
                "id": sid,
                "about": about,
                "item": scenario.item,
                "session_status": scenario.session_status,
                "history": scenario.history,
                "stream": stream[0] if stream else [],
                "worker_options": {k: v for k, v in worker_args.items() if k != "tools"},
                "steps": _steps(requests, frozenset(scenario.hold)),
            }
        )
    return {
        "about": (
            "`EnvironmentWorker(AsyncAnthropic(api_key=parent_api_key), environment_id, "
            "environment_key, worker_id)` run until it polls again after one work item. Every "
            "heartbeat answers TTL 60 s (one beat per run) unless the scenario says otherwise; "
            "the session fetch answers `session_status`; the history endpoint answers `history`; "
            "the first event stream plays `stream` (`wait_for_results`: held until that many "
            "results were posted; after its last entry the stream stays open). The session fetch "
            "and the first heartbeat are each held until the other has arrived (W2, W3: the "
            "fetch until the worker acted on the heartbeat's answer), which proves they are in "
            "flight together; `steps` lists them as one `concurrent` step (sorted) and every "
            "other request in arrival order, each with its kind, target (path and raw query), "
            "Bearer credential, `x-stainless-helper`, `anthropic-worker-id` and body."
        ),
        "setup": {
            "parent_api_key": PARENT_API_KEY,
            "environment_id": ENV_ID,
            "environment_key": ENV_KEY,
            "worker_id": WORKER_ID,
            "default_max_idle_seconds": runner_mod.DEFAULT_MAX_IDLE,
        },
        "scenarios": scenarios,
    }
