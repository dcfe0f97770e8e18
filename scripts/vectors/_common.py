"""Helpers every vector section shares: the fixed test identities, the loopback-only network
guard, patched clocks, path normalisation and the header subset a vector records.

Nothing here computes an expected value; the section modules do that by running the SDK.
"""

from __future__ import annotations

import os
import json
import socket
import base64
import contextlib
from typing import Any, Iterator, Callable

LOOPBACK = "127.0.0.1"

# Identities the vectors use. They are inputs chosen by this project (the SDK never sees
# anything else), so tests can drive their own clients with the same values.
ENV_ID = "env_test"
ENV_KEY = "envkey_TEST"
API_KEY = "sk-ant-api-TEST"
SESSIONS_TOKEN = "sk-sess-tok"
WORK_ID = "work_test"
SESSION_ID = "sesn_test"
WORKER_ID = "wrk-1"
CREATED_AT = "2026-05-01T00:00:00Z"

# Request headers a vector records: the protocol's, not the SDK's platform telemetry
# (`x-stainless-os`, `user-agent`, ...), which differs between machines.
RECORDED_HEADERS = (
    "authorization",
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-worker-id",
    "anthropic-workspace-id",
    "accept",
    "content-type",
    "content-length",
    "x-stainless-retry-count",
    "x-stainless-helper",
)


def secret_for(payload: dict[str, Any], *, padded: bool) -> str:
    """The work-item `secret` string carrying `payload` (URL-safe base64 of its JSON)."""
    raw = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()
    return raw if padded else raw.rstrip("=")


def work_item(
    *, secret: str | None, data: dict[str, Any] | None = None, state: str = "queued"
) -> dict[str, Any]:
    """A work item as the poll endpoint returns it; every field the SDK's model declares."""
    return {
        "type": "work",
        "id": WORK_ID,
        "environment_id": ENV_ID,
        "state": state,
        "data": data if data is not None else {"type": "session", "id": SESSION_ID},
        "metadata": {},
        "created_at": CREATED_AT,
        "acknowledged_at": None,
        "started_at": None,
        "stop_requested_at": None,
        "stopped_at": None,
        "latest_heartbeat_at": None,
        "secret": secret,
    }


def recorded_headers(headers: list[tuple[str, str]]) -> dict[str, str]:
    """The recorded subset of `headers`, names lower-cased, in `RECORDED_HEADERS` order."""
    lower: dict[str, list[str]] = {}
    for name, value in headers:
        lower.setdefault(name.lower(), []).append(value)
    out = {}
    for name in RECORDED_HEADERS:
        if name in lower:
            values = lower[name]
            if len(values) != 1:
                raise AssertionError(f"header {name} sent {len(values)} times: {values}")
            out[name] = values[0]
    return out


def bearer(headers: list[tuple[str, str]]) -> str | None:
    """The Bearer credential of a request, or None."""
    value = recorded_headers(headers).get("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    if scheme != "Bearer":
        raise AssertionError(f"unexpected authorization scheme {scheme!r}")
    return token


class Placeholders:
    """Maps real temporary paths to the placeholders a vector shows (`/W`, `/RO`, ...).

    The SDK prints absolute paths; the vectors must not depend on where the temporary
    directory happened to be. Longer paths are replaced first so a nested root wins.
    """

    def __init__(self) -> None:
        self._pairs: list[tuple[str, str]] = []

    def add(self, real: str, placeholder: str) -> None:
        self._pairs.append((real, placeholder))
        self._pairs.sort(key=lambda p: len(p[0]), reverse=True)

    def to_placeholder(self, value: Any) -> Any:
        return _map_strings(value, self._swap_out)

    def to_real(self, value: Any) -> Any:
        return _map_strings(value, self._swap_in)

    def _swap_out(self, s: str) -> str:
        for real, ph in self._pairs:
            s = s.replace(real, ph)
        return s

    def _swap_in(self, s: str) -> str:
        # Placeholders only ever start a path; replace them where a path starts.
        for real, ph in sorted(self._pairs, key=lambda p: len(p[1]), reverse=True):
            if s == ph or s.startswith(ph + "/"):
                return real + s[len(ph) :]
        return s


def _map_strings(value: Any, f: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return f(value)
    if isinstance(value, list):
        return [_map_strings(v, f) for v in value]
    if isinstance(value, dict):
        return {k: _map_strings(v, f) for k, v in value.items()}
    return value


def sanitise_environment() -> None:
    """Remove what would make the SDK behave differently on another machine.

    `ANTHROPIC_*` variables configure the client (keys, base URL, custom headers); proxy
    variables would route loopback traffic elsewhere.
    """
    for name in list(os.environ):
        upper = name.upper()
        if upper.startswith("ANTHROPIC_") or upper.endswith("_PROXY") or upper == "NO_PROXY":
            del os.environ[name]
    os.environ["NO_PROXY"] = "*"


def strip_rg_from_path() -> None:
    """The `grep` vectors are of the SDK's built-in search, which it uses only without `rg`."""
    kept = []
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if entry and os.access(os.path.join(entry, "rg"), os.X_OK):
            continue
        kept.append(entry)
    os.environ["PATH"] = os.pathsep.join(kept)
    for tool in ("bash", "head", "tr", "sleep", "cat"):
        if not any(os.access(os.path.join(e, tool), os.X_OK) for e in kept if e):
            raise SystemExit(
                f"generate.py: `{tool}` is not on PATH once the directories holding `rg` are removed"
            )


def install_loopback_guard() -> None:
    """Refuse every IP connection that is not to 127.0.0.1, for the whole run.

    The vectors come from a local mock server; a request anywhere else would be a bug in this
    script (or a default URL slipping through), and must fail rather than leave the machine.
    """
    original = socket.socket.connect
    original_ex = socket.socket.connect_ex

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0] if isinstance(address, tuple) else address
            if host != LOOPBACK:
                raise ConnectionRefusedError(f"generate.py only talks to {LOOPBACK}, refused {host!r}")

    def connect(sock: socket.socket, address: Any) -> None:
        check(sock, address)
        original(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        check(sock, address)
        return original_ex(sock, address)

    original_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        # No name lookups either: a resolver query would leave the machine.
        if host not in (LOOPBACK, LOOPBACK.encode()):
            raise socket.gaierror(f"generate.py only talks to {LOOPBACK}, refused to look up {host!r}")
        return original_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    """Temporarily replace `obj.name`."""
    saved = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, saved)


class Recorder:
    """A stand-in for a module's `jitter`/`sleep`-style function that records its arguments."""

    def __init__(self, result: Callable[..., Any]) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._result = result

    def __call__(self, *args: Any) -> Any:
        self.calls.append(args)
        return self._result(*args)
