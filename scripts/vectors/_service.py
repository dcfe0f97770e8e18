"""A scripted stand-in for the work queue and one session, served by `_server.LoopbackServer`.

A scenario says what each endpoint answers: the poll hands out one work item and then no work,
heartbeats answer from a list, the session's event stream plays a script of events and waits
(for results to be posted, for a request to arrive) between them, the history endpoint returns
a fixed list. The service never decides what the SDK should do; it only makes every answer the
same on every run, so the recorded requests are too.
"""

from __future__ import annotations

import threading
from typing import Any, Union, Callable, Iterator, Optional
from dataclasses import field, dataclass

from _common import ENV_ID, CREATED_AT, SESSION_ID, work_item
from _server import WAIT_S, Reply, Request, LoopbackServer, sse_frame

PROCESSED_AT = "2026-05-01T00:00:00Z"


def event(kind: str, event_id: str, **fields: Any) -> dict[str, Any]:
    """A session event with the fields every event carries."""
    return {"type": kind, "id": event_id, "processed_at": PROCESSED_AT, **fields}


def tool_use(event_id: str, name: str, tool_input: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return event("agent.tool_use", event_id, name=name, input=tool_input, **fields)


def session_body(status: str) -> dict[str, Any]:
    """A session as `GET /v1/sessions/{id}` returns it: no skills, no resources."""
    return {
        "type": "session",
        "id": SESSION_ID,
        "status": status,
        "environment_id": ENV_ID,
        "agent": {"type": "agent", "id": "agent_test", "name": "a", "skills": [], "tools": []},
        "resources": [],
        "metadata": {},
        "outcome_evaluations": [],
        "vault_ids": [],
        "stats": {},
        "usage": {},
        "title": None,
        "created_at": CREATED_AT,
        "updated_at": CREATED_AT,
        "archived_at": None,
    }


@dataclass
class WaitPosts:
    """Stream step: hold until `count` result events have been posted successfully."""

    count: int


@dataclass
class Close:
    """Stream step: end this stream response (the client sees the stream finish)."""


Step = Union[dict, WaitPosts, Close]


@dataclass
class Scenario:
    """What the service answers: `item` on the first poll (then no work), `heartbeats` in turn
    (the last repeats), `session_status` on the session fetch, `history` on the events list,
    `streams[n]` on the n-th stream connection that is not refused. Failures first where set."""

    item: Optional[dict[str, Any]] = None
    session_status: str = "idle"
    heartbeats: list[Reply] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    streams: list[list[Step]] = field(default_factory=list)
    stream_failures: int = 0
    post_failures: int = 0
    # Per request kind: answer only once this holds for the requests so far (e.g. hold the
    # session fetch until the heartbeat has arrived, to show the two are in flight together).
    hold: dict[str, Callable[[list[Request]], bool]] = field(default_factory=dict)


def arrived(kind: str) -> Callable[[list[Request]], bool]:
    return lambda requests: any(kind_of(r) == kind for r in requests)


def kind_of(req: Request) -> str:
    p, m = req.path, req.method
    if p.endswith("/work/poll"):
        return "poll"
    if p.endswith("/ack"):
        return "ack"
    if p.endswith("/heartbeat"):
        return "heartbeat"
    if p.endswith("/stop"):
        return "stop"
    if p.endswith("/events/stream"):
        return "stream"
    if p.endswith("/events"):
        return "events_list" if m == "GET" else "events_post"
    if p.startswith("/v1/sessions/") and m == "GET":
        return "session_get"
    return "other"


class Service:
    """The request handler for one scenario (pass it to `LoopbackServer`)."""

    def __init__(self, scenario: Scenario) -> None:
        self.s = scenario
        self.server: Optional[LoopbackServer] = None
        self._lock = threading.Condition()
        self._posted = 0
        self._post_attempts = 0
        self._stream_attempts = 0
        self._heartbeats = 0

    # ------------------------------------------------------------------ handler

    def __call__(self, req: Request) -> Reply:
        kind = kind_of(req)
        hold = self.s.hold.get(kind)
        if hold is not None and not self._server().wait_for(hold):
            raise AssertionError(f"{req.method} {req.target}: what it was held for never happened")
        if kind == "poll":
            polls = sum(1 for r in self._requests() if kind_of(r) == "poll")
            if polls == 1 and self.s.item is not None:
                return Reply.json(self.s.item)
            return Reply.json(None)
        if kind in ("ack", "stop"):
            return Reply.json(dict(self.s.item or work_item(secret=None), secret=None))
        if kind == "heartbeat":
            with self._lock:
                n = self._heartbeats
                self._heartbeats += 1
            replies = self.s.heartbeats or [Reply.json(default_heartbeat())]
            return replies[min(n, len(replies) - 1)]
        if kind == "session_get":
            return Reply.json(session_body(self.s.session_status))
        if kind == "events_list":
            return Reply.json({"data": self.s.history, "next_page": None})
        if kind == "events_post":
            return self._post(req)
        if kind == "stream":
            return self._stream()
        return Reply.json({"type": "error", "error": {"type": "not_found_error", "message": "no route"}}, 404)

    def _server(self) -> LoopbackServer:
        assert self.server is not None
        return self.server

    def _requests(self) -> list[Request]:
        return list(self._server().requests)

    def _post(self, req: Request) -> Reply:
        with self._lock:
            self._post_attempts += 1
            if self._post_attempts <= self.s.post_failures:
                return Reply.json({"type": "error", "error": {"type": "api_error", "message": "busy"}}, 503)
            self._posted += 1
            self._lock.notify_all()
        events = req.json()["events"]
        stored = [dict(e, id=f"sevt_posted_{self._posted}", processed_at=PROCESSED_AT) for e in events]
        return Reply.json({"data": stored})

    def _stream(self) -> Reply:
        with self._lock:
            attempt = self._stream_attempts
            self._stream_attempts += 1
        if attempt < self.s.stream_failures:
            return Reply.json({"type": "error", "error": {"type": "api_error", "message": "busy"}}, 503)
        index = attempt - self.s.stream_failures
        steps = self.s.streams[index] if index < len(self.s.streams) else []
        return Reply.sse(self._play(steps))

    def _play(self, steps: list[Step]) -> Iterator[bytes]:
        assert self.server is not None
        server = self.server
        yield b": connected\n\n"
        for step in steps:
            if isinstance(step, dict):
                yield sse_frame(step)
            elif isinstance(step, WaitPosts):
                with self._lock:
                    done = self._lock.wait_for(
                        lambda: self._posted >= step.count or server.closing.is_set(), WAIT_S
                    )
                if not done:
                    server.errors.append(f"stream: {step.count} results were never posted")
                    return
            elif isinstance(step, Close):
                return
        # Script done: hold the stream open (as a quiet session does) until the run ends.
        server.closing.wait()


def default_heartbeat(**fields: Any) -> dict[str, Any]:
    """A heartbeat answer; the 60 s TTL keeps the worker to one beat in a short run."""
    body = {
        "type": "work_heartbeat",
        "last_heartbeat": "2026-05-01T00:00:01Z",
        "lease_extended": True,
        "state": "active",
        "ttl_seconds": 60,
    }
    body.update(fields)
    return body


def serve(scenario: Scenario) -> tuple[LoopbackServer, Service]:
    service = Service(scenario)
    server = LoopbackServer(service)
    service.server = server
    return server, service


def results_posted(requests: list[Request]) -> list[dict[str, Any]]:
    """Every result event posted, in order."""
    out = []
    for r in requests:
        if kind_of(r) == "events_post":
            out.extend(r.json()["events"])
    return out
