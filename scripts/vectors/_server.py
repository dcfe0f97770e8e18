"""A loopback HTTP/1.1 server that records every request and answers from a Python handler.

The SDK's clients talk to it over a real socket on 127.0.0.1, so what it records is what the
SDK puts on the wire. Each connection gets its own thread, so a handler may block (a held
response, a long-lived event stream) without stalling the SDK's other, concurrent requests.

Every arrival and every first response byte takes a number from one counter: a request that
arrived before another one's response started was in flight at the same time.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, Iterable, Optional
from dataclasses import field, dataclass
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from urllib.parse import urlsplit

from _common import LOOPBACK

# How long a held answer or stream step waits for its condition before giving up; generous
# because the machine may be busy, and only reached when the SDK does not do what a scenario
# expects (the run then fails).
WAIT_S = 30.0


@dataclass
class Request:
    """One request as received."""

    seq: int
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    answered_seq: Optional[int] = None

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> Optional[str]:
        parts = self.target.split("?", 1)
        return parts[1] if len(parts) == 2 else None

    def header(self, name: str) -> Optional[str]:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    """A response: a whole body, or `chunks` written one by one (chunked encoding)."""

    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: Optional[Iterable[bytes]] = None

    @staticmethod
    def json(value: Any, status: int = 200, headers: Optional[list[tuple[str, str]]] = None) -> "Reply":
        body = value if isinstance(value, (bytes, str)) else json.dumps(value, separators=(",", ":"))
        if isinstance(body, str):
            body = body.encode()
        return Reply(status, body, [("content-type", "application/json"), *(headers or [])])

    @staticmethod
    def sse(chunks: Iterable[bytes]) -> "Reply":
        return Reply(200, b"", [("content-type", "text/event-stream"), ("cache-control", "no-cache")], chunks)


def sse_frame(event: dict[str, Any]) -> bytes:
    """One `event:`/`data:` frame for a session event."""
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up (the SDK closing a stream or an idle keep-alive) is not an error."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class LoopbackServer:
    """Serve `handler(request) -> Reply` on 127.0.0.1 until closed; record every request."""

    def __init__(self, handler: Callable[[Request], Reply]) -> None:
        self._handler = handler
        self._lock = threading.Condition()
        self._seq = 0
        self.requests: list[Request] = []
        self.closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                req = server._arrive(self.command, self.path, list(self.headers.items()), body)
                try:
                    reply = server._handler(req)
                except Exception as e:  # a bug in a scenario: answer, and let the scenario see it
                    server.errors.append(f"{req.method} {req.target}: {e!r}")
                    reply = Reply.json(
                        {"type": "error", "error": {"type": "api_error", "message": "mock"}}, 500
                    )
                self._write(req, reply)

            def _write(self, req: Request, reply: Reply) -> None:
                self.send_response(reply.status)
                for k, v in reply.headers:
                    self.send_header(k, v)
                # Numbered before any byte leaves: a request the client sends because of this
                # answer then always numbers after it.
                if reply.chunks is None:
                    self.send_header("content-length", str(len(reply.body)))
                    server._answered(req)
                    self.end_headers()
                    self.wfile.write(reply.body)
                    self.wfile.flush()
                    return
                self.send_header("transfer-encoding", "chunked")
                server._answered(req)
                self.end_headers()
                self.wfile.flush()
                try:
                    for chunk in reply.chunks:
                        if chunk:
                            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                            self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

        self.errors: list[str] = []
        self._httpd = _QuietServer((LOOPBACK, 0), Handler)
        self._httpd.daemon_threads = True
        # A short poll interval: `shutdown` waits for the accept loop's next look at its flag.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self._httpd.server_address[1]}"

    def __enter__(self) -> "LoopbackServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.closing.set()
        with self._lock:
            self._lock.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self.errors:
            raise AssertionError("mock server handler failed: " + "; ".join(self.errors))

    def _arrive(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> Request:
        with self._lock:
            self._seq += 1
            req = Request(self._seq, method, target, headers, body)
            self.requests.append(req)
            self._lock.notify_all()
            return req

    def _answered(self, req: Request) -> None:
        with self._lock:
            self._seq += 1
            req.answered_seq = self._seq
            self._lock.notify_all()

    def wait_for(self, predicate: Callable[[list[Request]], bool], timeout: float = WAIT_S) -> bool:
        """Block until `predicate(requests)` holds (or the server closes, or `timeout`)."""
        with self._lock:
            self._lock.wait_for(lambda: predicate(self.requests) or self.closing.is_set(), timeout)
            return predicate(self.requests)

    def take(self) -> list[Request]:
        """The requests so far, forgetting them."""
        with self._lock:
            out, self.requests = self.requests, []
            return out
