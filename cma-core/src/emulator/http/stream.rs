//! The session event stream (docs/protocol.md §4.2): the SSE response and its body.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::common::{enter, require_session_cred};
use super::{App, Res};
use crate::emulator::faults::Endpoint;
use crate::emulator::state::Subscription;

pub(super) async fn stream(
    AxState(app): AxState<App>,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> Res {
    let (fault, cred) = enter(&app, Endpoint::Stream, &headers).await?;
    require_session_cred(&app, &cred, &sid)?;
    let sub = app.lock().subscribe(&sid)?;
    let drop_after = fault.and_then(|f| f.drop_after_frames);
    let body = sse_body(sub, drop_after, app.keepalive, app.cancel.clone());
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    Ok(resp)
}

struct StreamState {
    opened: bool,
    sub: Option<Subscription>,
    frames_left: Option<u32>,
    done: bool,
    keepalive: tokio::time::Interval,
    cancel: CancellationToken,
}

/// The SSE body: an opening comment (so headers and a first chunk go out at once), then one
/// `event: <type>` + `data: <json>` frame per event, `event: ping` keep-alives, and the end after
/// a terminal event, a lagging subscriber, a dropped-stream fault or shutdown.
fn sse_body(
    sub: Subscription,
    drop_after: Option<u32>,
    keepalive: Duration,
    cancel: CancellationToken,
) -> Body {
    let period = keepalive.max(Duration::from_millis(10));
    let st = StreamState {
        opened: false,
        sub: Some(sub),
        frames_left: drop_after,
        done: false,
        keepalive: tokio::time::interval_at(Instant::now() + period, period),
        cancel,
    };
    let s = futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        if !st.opened {
            st.opened = true;
            return Some((
                Ok::<_, std::convert::Infallible>(Bytes::from_static(b": stream opened\n\n")),
                st,
            ));
        }
        if st.frames_left == Some(0) {
            return None;
        }
        let frame = match st.sub.as_mut()? {
            Subscription::Ended(f) => {
                let f = f.clone();
                st.done = true;
                f
            }
            Subscription::Live(rx) => {
                tokio::select! {
                    _ = st.cancel.cancelled() => return None,
                    _ = st.keepalive.tick() => {
                        return Some((Ok(Bytes::from_static(b"event: ping\ndata: {}\n\n")), st));
                    }
                    r = rx.recv() => match r {
                        Ok(f) => f,
                        // A lagging or closed subscriber ends; the client reconnects and reconciles.
                        Err(_) => return None,
                    },
                }
            }
        };
        if frame.terminal {
            st.done = true;
        }
        if let Some(n) = st.frames_left.as_mut() {
            *n -= 1;
        }
        Some((Ok(frame.bytes.clone()), st))
    });
    Body::from_stream(s)
}
