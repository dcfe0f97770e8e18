"""Sections `tool_definitions` and `tool_results`: the official toolset's definitions, and the
result events the SDK's session tool runner posts for tool calls, run for real (the SDK's own
`bash`, `read`, `write`, `edit`, `glob`, `grep` in temporary working directories, the runner
streaming the calls from the loopback server and posting each result back to it).
"""

from __future__ import annotations

import os
import base64
import asyncio
import hashlib
import tempfile
from typing import Any, Callable, Optional
from pathlib import Path

import anthropic
from anthropic.lib.tools import _beta_session_runner as runner_mod
from anthropic.lib.tools import agent_toolset
from anthropic.lib.tools._beta_functions import ToolError, BetaAsyncBuiltinFunctionTool

from _common import SESSIONS_TOKEN, Placeholders, patched
from _service import WaitPosts, Scenario, event, serve, tool_use, results_posted

BIG_LINES = 6000
PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
# Bash outputs longer than this are summarised (head, tail, length) rather than stored whole.
SUMMARY_OVER_CHARS = 4096


def _run_calls(
    calls: list[tuple[str, str, dict[str, Any]]],
    tools: Callable[[], list[Any]],
    places: Placeholders,
) -> list[dict[str, Any]]:
    """Stream `calls` to the SDK's session tool runner; the result event it posted for each."""
    stream = [event("session.status_running", "sevt_running")]
    stream += [tool_use(f"sevt_{cid}", name, places.to_real(tool_input)) for cid, name, tool_input in calls]
    stream += [WaitPosts(len(calls)), event("session.status_terminated", "sevt_terminated")]
    server, _service = serve(Scenario(streams=[stream]))
    with server:

        async def drive() -> None:
            client = anthropic.AsyncAnthropic(base_url=server.base_url, auth_token=SESSIONS_TOKEN)
            async for _ in client.beta.sessions.events.tool_runner("sesn_test", tools=tools(), max_idle=None):
                pass
            await client.close()

        asyncio.run(drive())
        posted = results_posted(server.requests)
    by_id = {p.get("tool_use_id") or p.get("custom_tool_use_id"): p for p in posted}
    out = []
    for cid, name, tool_input in calls:
        p = by_id[f"sevt_{cid}"]
        out.append(
            {
                "id": cid,
                "tool": name,
                "input": tool_input,
                "posted_type": p["type"],
                "is_error": p["is_error"],
                "content": places.to_placeholder(p["content"]),
            }
        )
    return out


def _agent_tools(**ctx_args: Any) -> Callable[[], list[Any]]:
    def make() -> list[Any]:
        return agent_toolset.beta_agent_toolset_20260401(agent_toolset.AgentToolContext(**ctx_args))

    return make


# ------------------------------------------------------------------------------ definitions


def definitions() -> dict[str, Any]:
    ctx = agent_toolset.AgentToolContext(workdir="/")
    return {
        "about": (
            "`to_dict()` of each tool of `beta_agent_toolset_20260401`, in the toolset's order; "
            "key order as the SDK builds the dict."
        ),
        "tools": [t.to_dict() for t in agent_toolset.beta_agent_toolset_20260401(ctx)],
    }


# ------------------------------------------------------------------------------ groups

GROUP_A = [
    ("A1", "bash", {"command": "echo hello && pwd"}),
    ("A2", "bash", {"command": "echo out; echo err >&2; exit 3"}),
    ("A3", "write", {"file_path": "notes/a.txt", "content": "line1\nline2\nline3\n"}),
    ("A4", "read", {"file_path": "notes/a.txt"}),
    ("A5", "read", {"file_path": "notes/a.txt", "view_range": [2, 3]}),
    ("A6", "edit", {"file_path": "notes/a.txt", "old_string": "line2", "new_string": "LINE2"}),
    ("A7", "edit", {"file_path": "notes/a.txt", "old_string": "line", "new_string": "x"}),
    ("A8", "edit", {"file_path": "notes/a.txt", "old_string": "zzz", "new_string": "x"}),
    ("A9", "glob", {"pattern": "**/*.txt"}),
    ("A10", "grep", {"pattern": "LINE"}),
    ("A11", "read", {"file_path": "/etc/passwd"}),
    ("A12", "read", {"file_path": "missing.txt"}),
    ("A13", "glob", {"pattern": "/etc/*"}),
    ("A14", "glob", {"pattern": "../*"}),
    ("A15", "bash", {"command": "sleep 3", "timeout_ms": 500}),
    ("A16", "bash", {"restart": True}),
    ("A17", "bash", {}),
    ("A18", "bash", {"command": "cd notes && export FOO=bar"}),
    ("A19", "bash", {"command": "pwd; echo $FOO; echo ${ANTHROPIC_SECRET_X:-scrubbed}"}),
    ("A20", "read", {"file_path": "notes/a.txt", "view_range": [1]}),
    ("A21", "write", {"file_path": "notes/a.txt"}),
    ("A22", "grep", {"pattern": "("}),
    ("A23", "bash", {"command": "printf 'a\\033[31mRED\\033[0mb'"}),
    ("A24", "write", {"file_path": "../escape.txt", "content": "x"}),
    (
        "A25",
        "edit",
        {"file_path": "notes/a.txt", "old_string": "line", "new_string": "L", "replace_all": True},
    ),
    ("A26", "read", {"file_path": "notes"}),
    ("A27", "bash", {"command": "true"}),
]

GROUP_B = [
    ("B1", "bash", {"command": "sleep 3", "timeout_ms": 500}),
    ("B2", "bash", {"command": "echo after"}),
]

# Run in this order: C22 lists the directory before C18 adds a file to it.
GROUP_C = [
    ("C1", "read", {"file_path": "crlf.txt"}),
    ("C2", "read", {"file_path": "big.txt"}),
    ("C3", "read", {"file_path": "big.txt", "view_range": [2, 3]}),
    ("C4", "read", {"file_path": "big.txt", "view_range": [5999, 0]}),
    ("C5", "read", {"file_path": "crlf.txt", "view_range": [2, 0]}),
    ("C6", "read", {"file_path": "crlf.txt", "view_range": [0, 1]}),
    ("C7", "read", {"file_path": "crlf.txt", "view_range": [3, 1]}),
    ("C8", "read", {"file_path": "bin.dat"}),
    ("C9", "read", {"file_path": "dot.png"}),
    ("C10", "read", {"file_path": "dot.png", "view_range": [1, 2]}),
    ("C11", "read", {"file_path": "link_out"}),
    ("C12", "read", {"file_path": "/RO/mem.md"}),
    ("C13", "write", {"file_path": "/RO/mem.md", "content": "x"}),
    ("C14", "edit", {"file_path": "/RO/mem.md", "old_string": "memo", "new_string": "x"}),
    ("C15", "write", {"file_path": "/OUT/new.txt", "content": "x"}),
    ("C16", "edit", {"file_path": "big.txt", "old_string": "000001", "new_string": "x"}),
    ("C17", "edit", {"file_path": "bin.dat", "old_string": "a", "new_string": "x"}),
    ("C22", "glob", {"pattern": "*.txt"}),
    ("C18", "write", {"file_path": "deep/er/f.txt", "content": "héllo"}),
    ("C19", "glob", {"pattern": "*.nothing"}),
    ("C20", "glob", {"pattern": "**/*.py"}),
    ("C21", "glob", {"pattern": "*.txt", "path": "sub"}),
    ("C23", "grep", {"pattern": "zzzz"}),
    ("C24", "grep", {"pattern": "return", "path": "sub/x.py"}),
    ("C25", "grep", {"pattern": "memo", "path": "/RO"}),
    ("C26", "grep", {"pattern": "x", "path": "/etc"}),
    ("C27", "bash", {"command": "cat"}),
    ("C28", "bash", {"command": "echo $TERM $PS1"}),
    ("C29", "bash", {"command": "false"}),
    ("C30", "bash", {"command": "echo ok", "timeout_ms": 0}),
    ("C31", "read", {"file_path": 5}),
    ("C32", "read", {}),
    ("C33", "edit", {"file_path": "crlf.txt", "old_string": "", "new_string": "Z"}),
    ("C34", "bash", {"command": "echo hi", "foo": 1}),
    ("C35", "read", {"file_path": "a.txt", "extra": True}),
    ("C36", "bash", {"command": "echo hi", "timeout_ms": "500"}),
    ("C37", "bash", {"command": "for i in 1 2 3; do echo $i; done; exit 0"}),
    ("C38", "bash", {"restart": True, "command": "echo ignored"}),
    ("C39", "write", {"file_path": "b/c.txt", "content": ""}),
    ("C40", "read", {"file_path": "b/c.txt"}),
]

BASH_SESSION = [
    ("X1", "head -c 150000 /dev/zero | tr '\\0' a; echo; echo END"),
    ("X2", "for i in 1 2 3; do echo line$i; done; f() { return 7; }; f"),
    ("X3", "echo -n noeol"),
    ("X4", "printf 'x\\n\\n\\n'"),
    ("X5", "echo __ANT_CMD_fake_DONE__0"),
    ("X6", "sleep 10 &\necho bg"),
]

# (path under the placeholder roots, bytes, mtime): group C's prepared files.
GROUP_C_FILES: list[tuple[str, bytes, Optional[int]]] = [
    ("/W/crlf.txt", b"a\r\nb\r\nc", 1_700_000_100),
    ("/W/big.txt", "".join(f"{i:06d} {'x' * 50}\n" for i in range(BIG_LINES)).encode(), 1_700_000_200),
    ("/W/bin.dat", bytes([0xFF, 0xFE, 0x00, 0x01]), 1_700_000_200),
    ("/W/dot.png", base64.b64decode(PNG_1X1), 1_700_000_200),
    ("/W/sub/x.py", b"def f():\n    return 1\n", 1_700_000_000),
    ("/OUT/secret.txt", b"secret\n", None),
    ("/RO/mem.md", b"memo\n", None),
]
GROUP_C_LINKS = [("/W/link_out", "/OUT/secret.txt")]


def _roots(base: Path, places: Placeholders, names: list[str]) -> dict[str, Path]:
    out = {}
    for name in names:
        p = (base / name.lower()).resolve()
        p.mkdir()
        places.add(str(p), f"/{name}")
        out[name] = p
    return out


def group(
    calls: list[tuple[str, str, dict[str, Any]]], prepare: Optional[str] = None
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="cma-vectors-") as tmp:
        places = Placeholders()
        roots = _roots(Path(tmp), places, ["W", "RO", "OUT"])
        ctx_args: dict[str, Any] = {"workdir": str(roots["W"])}
        if prepare == "C":
            for path, data, mtime in GROUP_C_FILES:
                real = Path(places.to_real(path))
                real.parent.mkdir(parents=True, exist_ok=True)
                real.write_bytes(data)
                if mtime is not None:
                    os.utime(real, (mtime, mtime))
            for link, target in GROUP_C_LINKS:
                os.symlink(places.to_real(target), places.to_real(link))
            ctx_args["allowed_roots"] = [roots["RO"]]
            ctx_args["read_only_roots"] = [roots["RO"]]
        return _run_calls(calls, _agent_tools(**ctx_args), places)


def group_c_fixture() -> list[dict[str, Any]]:
    files = [
        {"path": p, "bytes": len(d), "sha256": hashlib.sha256(d).hexdigest(), "mtime": m}
        for p, d, m in GROUP_C_FILES
    ]
    links = [{"path": p, "symlink_to": t} for p, t in GROUP_C_LINKS]
    return files + links


def bash_session() -> list[dict[str, Any]]:
    """`BashSession.exec` directly: (output, exit code), each command in a fresh shell."""

    async def run_all(workdir: str) -> list[dict[str, Any]]:
        rows = []
        for cid, command in BASH_SESSION:
            session = await agent_toolset.BashSession.start(workdir)
            try:
                output, code = await session.exec(command, timeout=20.0)
            finally:
                await session.close()
            row: dict[str, Any] = {"id": cid, "command": command, "exit_code": code}
            if len(output) > SUMMARY_OVER_CHARS:
                row.update(output_head=output[:24], output_tail=output[-8:], output_chars=len(output))
            else:
                row["output"] = output
            rows.append(row)
        return rows

    with tempfile.TemporaryDirectory(prefix="cma-vectors-") as tmp:
        return asyncio.run(run_all(tmp))


# ------------------------------------------------------------------------------ conversion


class _Returns(BetaAsyncBuiltinFunctionTool):
    """A tool whose call returns (or raises) a fixed value."""

    def __init__(self, name: str, produce: Callable[[], Any]) -> None:
        self._name = name
        self._produce = produce

    def to_dict(self) -> Any:
        return {
            "name": self._name,
            "description": "returns a fixed value",
            "input_schema": {"type": "object"},
        }

    async def call(self, input: object) -> Any:  # noqa: A002
        value = self._produce()
        if value == "sleep":
            await asyncio.sleep(60)
        return value


def _raise(exc: BaseException) -> Callable[[], Any]:
    def f() -> Any:
        raise exc

    return f


def conversion() -> dict[str, Any]:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_1X1}}
    lone = "a\ud800b"
    cases: list[tuple[str, dict[str, Any], Callable[[], Any]]] = [
        ("T1", {"kind": "none"}, lambda: None),
        ("T2", {"kind": "text", "text": ""}, lambda: ""),
        ("T3", {"kind": "text", "text": "abc"}, lambda: "abc"),
        ("T4", {"kind": "blocks", "blocks": []}, lambda: []),
        (
            "T5",
            {"kind": "blocks", "blocks": [{"type": "text", "text": ""}]},
            lambda: [{"type": "text", "text": ""}],
        ),
        ("T6", {"kind": "blocks", "blocks": [image]}, lambda: [image]),
        (
            "T7",
            {"kind": "blocks", "blocks": [{"type": "tool_reference", "tool_name": "x"}]},
            lambda: [{"type": "tool_reference", "tool_name": "x"}],
        ),
        ("T8", {"kind": "raises", "class": "ToolError", "message": "boom"}, _raise(ToolError("boom"))),
        ("T9", {"kind": "raises", "class": "RuntimeError", "message": "x"}, _raise(RuntimeError("x"))),
        (
            "T10",
            {"kind": "raises", "class": "RuntimeError", "message_repeat": ["x", 5000]},
            _raise(RuntimeError("x" * 5000)),
        ),
        ("T11", {"kind": "text_utf16", "units": [ord(c) for c in lone]}, lambda: lone),
    ]
    calls = [(cid, f"t_{cid.lower()}", {}) for cid, _, _ in cases]
    tools = [_Returns(f"t_{cid.lower()}", produce) for cid, _, produce in cases]
    results = _run_calls(calls, lambda: tools, Placeholders())
    rows = []
    for (cid, returns, _), r in zip(cases, results):
        row: dict[str, Any] = {"id": cid, "returns": returns, "is_error": r["is_error"]}
        text = r["content"][0].get("text", "") if r["content"] else ""
        if len(text) > SUMMARY_OVER_CHARS - 1:
            row.update(
                content_text_head=text[:20], content_text_chars=len(text), content_blocks=len(r["content"])
            )
        else:
            row["content"] = r["content"]
        rows.append(row)
    # A call that outlives the runner's per-call limit: shortened here so the run stays short.
    limit = runner_mod.TOOL_TIMEOUT
    with patched(runner_mod, "TOOL_TIMEOUT", 0.2):
        timed = _run_calls(
            [("T12", "bash", {})], lambda: [_Returns("bash", lambda: "sleep")], Placeholders()
        )[0]
    rows.append(
        {
            "id": "T12",
            "returns": {"kind": "outlives_limit", "limit_seconds": limit},
            "is_error": timed["is_error"],
            "content": timed["content"],
        }
    )
    return {
        "about": (
            "What the runner posts for a tool that returns (or raises) each value. `returns.kind`: "
            "`none`, `text`, `blocks` (a list of content blocks), `raises` (an exception of `class` "
            "with `message`, or `message_repeat` = [text, times]), `text_utf16` (a string given as "
            "UTF-16 code units, for text JSON cannot hold), `outlives_limit` (still running after "
            "the runner's per-call limit). Long texts are summarised by their head and length."
        ),
        "cases": rows,
    }


def tool_results() -> dict[str, Any]:
    secret_name = "ANTHROPIC_SECRET_X"
    os.environ[secret_name] = "leak"
    try:
        group_a = group(GROUP_A)
    finally:
        del os.environ[secret_name]
    return {
        "about": (
            "Each case is one `agent.tool_use` event streamed to the SDK's session tool runner "
            "(with `beta_agent_toolset_20260401`) and the `user.tool_result` it posted "
            "(`is_error`, `content`). Cases of a group run in the listed order in one session, so "
            "files and the bash shell carry over. `/W` is the working directory (absolute), `/RO` "
            "and `/OUT` are directories outside it. No `rg` is on PATH, so `grep` is the SDK's "
            "built-in search."
        ),
        "group_a": {
            "about": (
                f"Empty working directory; the worker process has {secret_name}=leak in its " "environment."
            ),
            "cases": group_a,
        },
        "group_b": {"about": "A fresh session.", "cases": group(GROUP_B)},
        "group_c": {
            "about": (
                "Working directory prepared with `fixture` (mtime in seconds, none = when "
                "created); `/RO` is both an allowed and a read-only root."
            ),
            "fixture": group_c_fixture(),
            "cases": group(GROUP_C, prepare="C"),
        },
        "bash_session": {
            "about": (
                "`BashSession.exec(command)` in a fresh shell each: the output and exit code "
                f"(outputs over {SUMMARY_OVER_CHARS} characters as head, tail and length)."
            ),
            "cases": bash_session(),
        },
        "conversion": conversion(),
    }
