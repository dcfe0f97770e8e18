"""Sections `requests` (what the SDK's client puts on the wire for each call) and `decoding`
(what it makes of each response), observed through the synchronous `Anthropic` client against
the loopback server.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional
from dataclasses import dataclass

import anthropic
from anthropic import _exceptions
from anthropic.lib.environments import _worker

from _common import (
    ENV_ID,
    API_KEY,
    ENV_KEY,
    WORK_ID,
    CREATED_AT,
    SESSION_ID,
    RECORDED_HEADERS,
    SESSIONS_TOKEN,
    work_item,
    secret_for,
    recorded_headers,
)
from _server import Reply, Request, LoopbackServer
from _observe import heartbeat_loop

# ------------------------------------------------------------------------------ fixtures

# Response bodies the server answers with (inputs of the decoding vectors, reused so every
# request vector's call decodes).
WORK_BODY = work_item(secret=secret_for({"sessions_token": SESSIONS_TOKEN}, padded=False))
HEARTBEAT_BODY = {
    "type": "work_heartbeat",
    "last_heartbeat": "2026-05-01T00:00:01Z",
    "lease_extended": True,
    "state": "active",
    "ttl_seconds": 4,
}
PRECONDITION_BODY = {
    "type": "error",
    "error": {
        "type": "invalid_request_error",
        "message": "heartbeat precondition failed",
        "details": {
            "error_code": "heartbeat_precondition_failed",
            "current_state": {
                "state": "active",
                "last_heartbeat": "2026-05-01T00:00:09Z",
                "lease_extended": False,
                "ttl_seconds": 60,
            },
        },
    },
    "request_id": "req_mock",
}
STATS_BODY = {
    "type": "work_queue_stats",
    "depth": 0,
    "pending": 0,
    "oldest_queued_at": None,
    "workers_polling": 1,
}
ENVIRONMENT_BODY = {
    "id": ENV_ID,
    "type": "environment",
    "name": "n",
    "description": None,
    "metadata": {},
    "config": {"type": "self_hosted"},
    "scope": None,
    "created_at": CREATED_AT,
    "updated_at": CREATED_AT,
    "archived_at": None,
}


def _error_body(code: Optional[str]) -> dict[str, Any]:
    details = {"error_code": code} if code is not None else None
    return {"type": "error", "error": {"type": "invalid_request_error", "message": "m", "details": details}}


def _fixture_reply(req: Request) -> Reply:
    """Answer any call of the request vectors with a body its SDK method decodes."""
    p, m = req.path, req.method
    if p.endswith("/work/poll"):
        return Reply.json(WORK_BODY)
    if p.endswith("/heartbeat"):
        return Reply.json(HEARTBEAT_BODY)
    if p.endswith("/work/stats"):
        return Reply.json(STATS_BODY)
    if p.endswith("/work") and m == "GET":
        return Reply.json({"data": [WORK_BODY], "next_page": None})
    if "/work/" in p:
        return Reply.json(WORK_BODY)
    if p == "/v1/environments" and m == "GET":
        return Reply.json({"data": [ENVIRONMENT_BODY], "next_page": None})
    if p.startswith("/v1/environments") and m == "DELETE":
        return Reply.json({"id": ENV_ID, "type": "environment_deleted"})
    if p.startswith("/v1/environments"):
        return Reply.json(ENVIRONMENT_BODY)
    if p.endswith("/events/stream"):
        return Reply.sse([b": nothing\n\n"])
    if p.endswith("/events") and m == "GET":
        return Reply.json({"data": [], "next_page": None})
    if p.endswith("/events"):
        return Reply.json({"data": []})
    if p.startswith("/v1/sessions/"):
        return Reply.json({"type": "session", "id": SESSION_ID, "status": "idle"})
    return Reply.json({"type": "error", "error": {"type": "not_found_error", "message": "no route"}}, 404)


# ------------------------------------------------------------------------------ requests


@dataclass
class Call:
    """One SDK method call: `path` below `client.beta` (`work.` is short for `environments.work.`)."""

    path: str
    args: tuple[Any, ...] = ()
    kwargs: Optional[dict[str, Any]] = None

    def render(self) -> str:
        parts = [repr(a) for a in self.args]
        parts += [f"{k}={v!r}" for k, v in (self.kwargs or {}).items()]
        return f"{self.path}({', '.join(parts)})"

    def run(self, client: anthropic.Anthropic) -> Any:
        target: Any = client.beta
        path = "environments." + self.path if self.path.startswith("work.") else self.path
        for part in path.split("."):
            target = getattr(target, part)
        result = target(*self.args, **(self.kwargs or {}))
        if path.endswith("events.stream"):
            for _ in result:  # read the stream to its end, so the request completes
                pass
        return result


W = {"environment_id": ENV_ID}
TOOL_RESULT = {
    "type": "user.tool_result",
    "tool_use_id": "sevt_1",
    "is_error": False,
    "content": [{"type": "text", "text": "hi"}],
}

# (id, credential parameter, credential value, calls). The credential follows the endpoint:
# work-queue calls carry the environment key, management calls the API key, session calls the
# sessions token (R9–R11 show the API key on work endpoints).
REQUEST_CASES: list[tuple[str, str, str, list[Call]]] = [
    (
        "R1",
        "auth_token",
        ENV_KEY,
        [
            Call(
                "work.poll",
                (ENV_ID,),
                {"block_ms": 999, "reclaim_older_than_ms": 5000, "anthropic_worker_id": "host-abc123def456"},
            )
        ],
    ),
    ("R2", "auth_token", ENV_KEY, [Call("work.poll", (ENV_ID,))]),
    ("R3", "auth_token", ENV_KEY, [Call("work.ack", (WORK_ID,), W)]),
    (
        "R4",
        "auth_token",
        ENV_KEY,
        [
            Call(
                "work.heartbeat",
                (WORK_ID,),
                {**W, "expected_last_heartbeat": "NO_HEARTBEAT", "desired_ttl_seconds": 60},
            )
        ],
    ),
    (
        "R5",
        "auth_token",
        ENV_KEY,
        [Call("work.heartbeat", (WORK_ID,), {**W, "expected_last_heartbeat": "2026-05-01T00:00:01Z"})],
    ),
    ("R6", "auth_token", ENV_KEY, [Call("work.stop", (WORK_ID,), W)]),
    ("R7", "auth_token", ENV_KEY, [Call("work.stop", (WORK_ID,), {**W, "force": True})]),
    ("R8", "auth_token", ENV_KEY, [Call("work.list", (ENV_ID,), {"limit": 10})]),
    ("R9", "api_key", API_KEY, [Call("work.retrieve", (WORK_ID,), W)]),
    (
        "R10",
        "api_key",
        API_KEY,
        [Call("work.update", (WORK_ID,), {**W, "metadata": {"k": "v", "gone": None}})],
    ),
    ("R11", "api_key", API_KEY, [Call("work.stats", (ENV_ID,))]),
    ("R12", "auth_token", SESSIONS_TOKEN, [Call("sessions.retrieve", (SESSION_ID,))]),
    (
        "R13",
        "auth_token",
        SESSIONS_TOKEN,
        [Call("sessions.events.send", (SESSION_ID,), {"events": [TOOL_RESULT]})],
    ),
    (
        "R14",
        "auth_token",
        SESSIONS_TOKEN,
        [
            Call(
                "sessions.events.list",
                (SESSION_ID,),
                {
                    "types": ["agent.tool_use", "user.tool_result"],
                    "created_at_gt": "2026-05-01T00:00:00Z",
                    "order": "asc",
                    "limit": 50,
                },
            )
        ],
    ),
    (
        "R15",
        "auth_token",
        SESSIONS_TOKEN,
        [Call("sessions.events.stream", (SESSION_ID,), {"event_deltas": ["agent.message"]})],
    ),
    (
        "R16",
        "api_key",
        API_KEY,
        [
            Call(
                "environments.create",
                (),
                {"name": "n", "config": {"type": "self_hosted"}, "metadata": {"a": "b"}},
            )
        ],
    ),
    (
        "R17",
        "api_key",
        API_KEY,
        [
            Call(
                "environments.create",
                (),
                {
                    "name": "n",
                    "config": {
                        "type": "cloud",
                        "networking": {
                            "type": "limited",
                            "allowed_hosts": ["example.com"],
                            "allow_mcp_servers": True,
                            "allow_package_managers": False,
                        },
                        "packages": {"pip": ["requests"]},
                    },
                },
            )
        ],
    ),
    (
        "R18",
        "api_key",
        API_KEY,
        [Call("environments.update", (ENV_ID,), {"description": None, "metadata": {"a": None}})],
    ),
    ("R19", "api_key", API_KEY, [Call("environments.list", (), {"include_archived": True, "limit": 5})]),
    (
        "R20",
        "api_key",
        API_KEY,
        [Call("environments.archive", (ENV_ID,)), Call("environments.delete", (ENV_ID,))],
    ),
    (
        "R21",
        "auth_token",
        SESSIONS_TOKEN,
        [Call("sessions.events.send", (SESSION_ID,), {"events": [{"type": "user.interrupt"}]})],
    ),
    (
        "R22",
        "auth_token",
        SESSIONS_TOKEN,
        [
            Call(
                "sessions.events.send",
                (SESSION_ID,),
                {
                    "events": [
                        {
                            "type": "user.custom_tool_result",
                            "custom_tool_use_id": "sevt_ct01",
                            "content": [{"type": "text", "text": "42"}],
                        }
                    ]
                },
            )
        ],
    ),
    (
        "R23",
        "auth_token",
        SESSIONS_TOKEN,
        [
            Call(
                "sessions.events.send",
                (SESSION_ID,),
                {
                    "events": [
                        {
                            "type": "user.tool_confirmation",
                            "tool_use_id": "sevt_tu01",
                            "result": "deny",
                            "deny_message": "no",
                        }
                    ]
                },
            )
        ],
    ),
    ("R24", "auth_token", ENV_KEY, [Call("work.poll", (ENV_ID,), {"betas": ["foo-2026-01-01"]})]),
]


def _wire(req: Request) -> dict[str, Any]:
    body: Optional[str]
    if req.body or req.header("content-length") is not None:
        body = req.body.decode()
    else:
        body = None
    return {
        "method": req.method,
        "path": req.path,
        "query": req.query,
        "headers": recorded_headers(req.headers),
        "body": body,
    }


def request_vectors() -> dict[str, Any]:
    cases = []
    every: Optional[set[tuple[str, str]]] = None
    with LoopbackServer(_fixture_reply) as server:
        for case_id, param, value, calls in REQUEST_CASES:
            client = anthropic.Anthropic(base_url=server.base_url, max_retries=0, **{param: value})
            for call in calls:
                call.run(client)
            client.close()
            wire = [_wire(r) for r in server.take()]
            for w in wire:
                pairs = set(w["headers"].items())
                every = pairs if every is None else every & pairs
            cases.append(
                {
                    "id": case_id,
                    "calls": [c.render() for c in calls],
                    "credential": {"parameter": param, "value": value},
                    "requests": wire,
                }
            )
    assert every is not None
    return {
        "about": (
            "Each case is one or more calls of the SDK's synchronous client; `requests` lists what "
            "reached the server, in order. `headers` holds the recorded header names "
            "(`recorded_headers`) that the request carried, names lower-cased; a recorded name "
            "absent from a request was not sent. `query` is the raw query string as sent; `body` "
            'is the exact body text, "" for an empty body sent with a content-length, null for '
            "no body at all."
        ),
        "recorded_headers": list(RECORDED_HEADERS),
        "headers_on_every_request": dict(sorted(every)),
        "cases": cases,
    }


# ------------------------------------------------------------------------------ decoding


def _outcome(call: Callable[[], Any]) -> dict[str, Any]:
    try:
        value = call()
    except _exceptions.APIStatusError as e:
        details = getattr(e, "details", None)
        return {
            "outcome": "error",
            "class": type(e).__name__,
            "status": e.status_code,
            "error_code": e.error_code,
            "details": details.model_dump(mode="json") if hasattr(details, "model_dump") else None,
            "request_id": e.request_id,
        }
    if value is None:
        return {"outcome": "none"}
    if hasattr(value, "model_dump"):
        return {"outcome": "parsed", "value": value.model_dump(mode="json")}
    return {"outcome": "value", "python_type": type(value).__name__, "value": value}


class _Answers:
    """The decoding server's handler: answers each request with the next reply given to it."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []

    def __call__(self, req: Request) -> Reply:
        return self.replies.pop(0)


def _decode(server: LoopbackServer, answers: _Answers, reply: Reply, endpoint: str) -> dict[str, Any]:
    """What the SDK's `endpoint` call makes of `reply` (and, for a coded error, which class
    the same status has without the code)."""
    answers.replies = [reply]
    client = anthropic.Anthropic(base_url=server.base_url, max_retries=0, auth_token=ENV_KEY)
    work = client.beta.environments.work
    calls: dict[str, Callable[[], Any]] = {
        "poll": lambda: work.poll(ENV_ID),
        "heartbeat": lambda: work.heartbeat(
            WORK_ID, environment_id=ENV_ID, expected_last_heartbeat="NO_HEARTBEAT"
        ),
        "stats": lambda: work.stats(ENV_ID),
    }
    try:
        result = _outcome(calls[endpoint])
    finally:
        client.close()
        server.take()
    if result["outcome"] == "error" and result["error_code"] is not None:
        # The class the same status gets without an error code: the one this class refines.
        plain = _decode(server, answers, Reply.json(_error_body(None), result["status"]), endpoint)
        result["refines"] = plain["class"]
    return result


def decoding_vectors() -> dict[str, Any]:
    cases = []

    def case(case_id: str, endpoint: str, status: int, body: Any, **extra: Any) -> dict[str, Any]:
        text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
        reply = Reply(status, text.encode(), [("content-type", "application/json")] if text else [])
        c = {"id": case_id, "endpoint": endpoint, "response": {"status": status, "body": text}}
        c["result"] = _decode(server, answers, reply, endpoint)
        c.update(extra)
        cases.append(c)
        return c

    answers = _Answers()
    with LoopbackServer(answers) as server:
        case("D1", "poll", 200, "null")
        case("D2", "poll", 204, "")
        d3 = case("D3", "poll", 200, WORK_BODY)
        d3["sessions_token"] = _worker._sessions_token_from_secret(WORK_BODY["secret"])
        d4 = case("D4", "heartbeat", 200, HEARTBEAT_BODY)
        d5 = case("D5", "heartbeat", 412, PRECONDITION_BODY)
        statuses = []
        for status, code in [
            (400, "environment_archived"),
            (404, "environment_not_found"),
            (412, None),
            (412, "some_unknown_code"),
            (418, None),
            (500, None),
            (502, None),
            (503, None),
            (505, None),
            (520, None),
            (529, None),
            (599, None),
        ]:
            reply = Reply.json(_error_body(code), status)
            statuses.append({"status": status, "error_code": code, **_decode(server, answers, reply, "poll")})
        case("D10", "stats", 200, STATS_BODY)

    stopping = dict(HEARTBEAT_BODY, state="stopping")
    d4["next_heartbeat"] = heartbeat_loop([Reply.json(HEARTBEAT_BODY), Reply.json(stopping)])
    d5["heartbeat_loop"] = heartbeat_loop([Reply.json(PRECONDITION_BODY, 412)])
    return {
        "about": (
            "Each case is one response served to one SDK call (`endpoint`: poll, heartbeat or "
            "stats of the work resource; no retries). `result.outcome` is `none` (the call "
            "returned None), `parsed` (a model; `value` is its JSON dump), `value` (some other "
            "Python value) or `error` (the exception's class and fields; `refines` names the "
            "class the same status has without an error code, when there is one). D4 and D5 also "
            "show the worker's heartbeat loop fed the same response: the queries it sent next, "
            "its waits, and what it logged. `error_statuses` "
            "maps error responses (status, `error.details.error_code`) to the SDK's classes."
        ),
        "cases": cases,
        "error_statuses": statuses,
    }
