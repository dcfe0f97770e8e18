"""Sections `sse` (the SDK's event-stream decoding), `secret` (the sessions token a work item's
`secret` yields) and `webhooks` (signatures by `standardwebhooks`, the SDK's webhook extra, and
verification through the SDK's `webhooks.unwrap` with the clock fixed).
"""

from __future__ import annotations

import json
import datetime as dt
from typing import Any, Optional

import anthropic
import standardwebhooks.webhooks as swh
from anthropic.lib.environments import _worker

from _common import SESSIONS_TOKEN, patched, secret_for
from _server import Reply, LoopbackServer

# ------------------------------------------------------------------------------ sse

SSE_PATH = "/v1/sessions/sesn_x/events/stream"
SSE_FRAMES = [
    ": comment\n\n",
    "event: ping\ndata: {}\n\n",
    'data: {"type":"session.status_running","id":"e0","processed_at":"2026-05-01T00:00:00Z"}\n\n',
    'event: message\ndata: {"type":"session.status_running","id":"e1","processed_at":"2026-05-01T00:00:00Z"}\n\n',
    'event: agent.tool_use\r\ndata: {"type":"agent.tool_use","id":"e2","name":"bash",\r\n'
    'data: "input":{"command":"ls"},"processed_at":"2026-05-01T00:00:00Z"}\r\n\r\n',
    'event: whatever\ndata: {"type":"some.future_event","id":"e3"}\n\n',
    'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n',
]


def _frame_ids() -> list[str]:
    """Event ids the frames carry (joining a frame's data lines as the SSE format says)."""
    ids = []
    for frame in SSE_FRAMES:
        lines = frame.replace("\r\n", "\n").split("\n")
        data = "\n".join(line[len("data: ") :] for line in lines if line.startswith("data: "))
        if data:
            value = json.loads(data)
            if "id" in value:
                ids.append(value["id"])
    return ids


def sse() -> dict[str, Any]:
    body = "".join(SSE_FRAMES).encode()
    with LoopbackServer(lambda req: Reply.sse([body])) as server:
        client = anthropic.Anthropic(base_url=server.base_url, auth_token=SESSIONS_TOKEN, max_retries=0)
        events: list[dict[str, Any]] = []
        error: Optional[dict[str, Any]] = None
        try:
            for ev in client.beta.sessions.events.stream("sesn_x"):
                item = {"type": ev.type, "id": ev.id}
                if ev.type == "agent.tool_use":
                    item["input"] = ev.input
                events.append(item)
        except anthropic.APIStatusError as e:
            body_error = e.body.get("error", {}) if isinstance(e.body, dict) else {}
            error = {"class": type(e).__name__, "status": e.status_code, "error_type": body_error.get("type")}
        client.close()
        path = server.requests[0].path
    seen = {e["id"] for e in events}
    return {
        "about": (
            "The server answers the stream request at `path` with `frames` (exact text, written "
            "back to back). `events` are the events the SDK's stream yielded, in order (`input` "
            "for a tool use); `error` is what the iteration then raised; `dropped` are ids the "
            "frames carry that never came out as events."
        ),
        "path": path,
        "frames": SSE_FRAMES,
        "events": events,
        "error": error,
        "dropped": [i for i in _frame_ids() if i not in seen],
    }


# ------------------------------------------------------------------------------ secret


def secret() -> dict[str, Any]:
    token_payload = {"sessions_token": SESSIONS_TOKEN}
    extra = {"sessions_token": SESSIONS_TOKEN, "ingress_token": "i", "source_token": "s"}
    inputs: list[tuple[Optional[str], Optional[str]]] = [
        (secret_for(token_payload, padded=False), json.dumps(token_payload)),
        (secret_for(extra, padded=True), json.dumps(extra)),
        (secret_for({"sessions_token": ""}, padded=True), json.dumps({"sessions_token": ""})),
        (secret_for({"sessions_token": 5}, padded=True), json.dumps({"sessions_token": 5})),
        (secret_for([1, 2], padded=True), json.dumps([1, 2])),  # type: ignore[arg-type]
        ("not base64!!", None),
        ("", None),
        (None, None),
    ]
    cases = [
        {"secret": s, "payload": p, "sessions_token": _worker._sessions_token_from_secret(s)}
        for s, p in inputs
    ]
    return {
        "about": (
            "`secret` as a poll response carries it (`payload`: the JSON inside, when there is "
            "one) and the sessions token the SDK's worker takes from it (null: none, so the "
            "worker falls back to the environment key)."
        ),
        "cases": cases,
    }


# ------------------------------------------------------------------------------ webhooks

WEBHOOK_SECRET = "whsec_" + __import__("base64").b64encode(bytes(range(32))).decode()
WEBHOOK_BODY = (
    '{"type":"event","id":"wevt_01","created_at":"2026-05-01T12:00:00Z","data":{"type":"session.status_idled",'
    '"id":"sesn_01","organization_id":"org_01","workspace_id":"wrkspc_01"}}'
)
FUTURE_BODY = (
    '{"type":"event","id":"wevt_2","created_at":"2026-05-01T12:00:00Z","data":{"type":"work.future_thing",'
    '"id":"x","organization_id":"o"}}'
)
NOW = 1_777_636_800


def _sign(secret: str, msg_id: str, ts: int, body: str) -> str:
    return swh.Webhook(secret).sign(msg_id, dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc), body)


class _FixedNow(dt.datetime):
    """`datetime` whose `now()` is the vectors' fixed clock."""

    @classmethod
    def now(cls, tz: Optional[dt.tzinfo] = None) -> "_FixedNow":
        return cls.fromtimestamp(NOW, tz=tz)


def _verify(headers: list[list[str]], body: str, key: Optional[str] = WEBHOOK_SECRET) -> dict[str, Any]:
    client = anthropic.Anthropic(base_url="http://127.0.0.1:9", api_key="unused")
    try:
        with patched(swh, "datetime", _FixedNow):
            event = client.beta.webhooks.unwrap(body, headers={k: v for k, v in headers}, key=key)
    except Exception as e:
        return {"outcome": "error", "class": type(e).__name__, "message": str(e)}
    finally:
        client.close()
    return {"outcome": "ok", "event": event.to_dict(mode="json", warnings=False)}


def webhooks() -> dict[str, Any]:
    bare = WEBHOOK_SECRET[len("whsec_") :]
    signing = []
    for sid, secret_text, msg_id, ts, body in [
        ("S1", WEBHOOK_SECRET, "msg_01", NOW, WEBHOOK_BODY),
        ("S2", WEBHOOK_SECRET, "msg_01", 1_700_000_000, WEBHOOK_BODY),
        ("S3", WEBHOOK_SECRET, "msg_02", NOW, ""),
        ("S4", bare, "msg_01", NOW, WEBHOOK_BODY),
    ]:
        signing.append(
            {
                "id": sid,
                "secret": secret_text,
                "webhook_id": msg_id,
                "timestamp": ts,
                "body": body,
                "signature": _sign(secret_text, msg_id, ts, body),
            }
        )
    good = _sign(WEBHOOK_SECRET, "msg_01", NOW, WEBHOOK_BODY)
    altered = good[:-3] + ("B" if good[-3] == "A" else "A") + good[-2:]

    def h(msg_id: str = "msg_01", ts: str = str(NOW), sig: Optional[str] = good) -> list[list[str]]:
        out = [["webhook-id", msg_id], ["webhook-timestamp", ts]]
        if sig is not None:
            out.append(["webhook-signature", sig])
        return out

    def signed_at(offset: int) -> list[list[str]]:
        return h(ts=str(NOW + offset), sig=_sign(WEBHOOK_SECRET, "msg_01", NOW + offset, WEBHOOK_BODY))

    cases: list[tuple[str, list[list[str]], str]] = [
        ("V1", h(sig="v1,AAAA " + good), WEBHOOK_BODY),
        ("V2", signed_at(-301), WEBHOOK_BODY),
        ("V3", signed_at(301), WEBHOOK_BODY),
        ("V4", signed_at(-299), WEBHOOK_BODY),
        ("V5", h(sig=None), WEBHOOK_BODY),
        ("V6", h(ts="abc"), WEBHOOK_BODY),
        ("V7", h(sig=good.replace("v1,", "v2,", 1)), WEBHOOK_BODY),
        ("V8", h(sig=altered), WEBHOOK_BODY),
        ("V9", h(msg_id="msg_02"), WEBHOOK_BODY),
        ("V10", h(ts=f"{NOW}.9"), WEBHOOK_BODY),
        (
            "V11",
            [["Webhook-Id", "msg_01"], ["webhook-timestamp", str(NOW)], ["WEBHOOK-SIGNATURE", good]],
            WEBHOOK_BODY,
        ),
        ("V14", signed_at(-300), WEBHOOK_BODY),
        ("V15", signed_at(300), WEBHOOK_BODY),
    ]
    verification = [{"id": vid, "headers": hs, "body": body, **_verify(hs, body)} for vid, hs, body in cases]
    # No key given and none configured on the client.
    verification.append(
        {"id": "V12", "headers": h(), "body": WEBHOOK_BODY, "key": None, **_verify(h(), WEBHOOK_BODY, None)}
    )
    parsed = anthropic.Anthropic(base_url="http://127.0.0.1:9", api_key="unused")
    unverified = parsed.beta.webhooks.parse_unverified(FUTURE_BODY).to_dict(mode="json", warnings=False)
    parsed.close()
    verification.append({"id": "V13", "parse_unverified": FUTURE_BODY, "outcome": "ok", "event": unverified})
    return {
        "about": (
            "`signing`: the `webhook-signature` value standardwebhooks computes for a secret (with "
            "or without the `whsec_` prefix), id, timestamp and body. `verification`: the SDK's "
            "`webhooks.unwrap(body, headers=..., key=secret)` at the fixed clock `now` (header "
            "names as sent; `key` null means none given and none configured); `outcome` ok with "
            "the parsed event (`to_dict()`), or error with the exception's class and message. "
            "V13 parses without verifying."
        ),
        "secret": WEBHOOK_SECRET,
        # The key bytes as the verifier decodes them from `secret`.
        "secret_key_hex": swh.Webhook(WEBHOOK_SECRET)._whsecret.hex(),
        "now": NOW,
        "signing": signing,
        "verification": verification,
    }
