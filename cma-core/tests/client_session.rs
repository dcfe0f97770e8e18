//! Session client behaviour beyond the request vectors: automatic pagination, lenient event
//! decoding, body caps and stream idle timeouts.

mod client_support;

use std::time::Duration;

use client_support::{CaptureServer, Reply};
use cma_core::client::{
    ApiErrorKind, Client, Credential, ListEventsParams, PollParams, StreamParams,
};
use cma_core::protocol::SessionEvent;
use futures::StreamExt;

fn ev(id: &str) -> String {
    format!(
        r#"{{"type":"session.status_running","id":"{id}","processed_at":"2026-05-01T00:00:00Z"}}"#
    )
}

#[tokio::test]
async fn list_all_events_follows_cursors_until_the_last_page() {
    let server = CaptureServer::start(|_| Reply::json(500, "{}")).await;
    server.push(Reply::json(
        200,
        format!(r#"{{"data":[{},{}],"next_page":"c2"}}"#, ev("e1"), ev("e2")),
    ));
    server.push(Reply::json(
        200,
        format!(r#"{{"data":[{}],"next_page":"c3"}}"#, ev("e3")),
    ));
    server.push(Reply::json(
        200,
        format!(r#"{{"data":[{}],"next_page":""}}"#, ev("e4")),
    ));
    let session = server
        .client()
        .session("sesn_p", Credential::sessions_token("t"));
    let ids: Vec<String> = session
        .list_all_events(ListEventsParams::history())
        .map(|r| r.unwrap().id().unwrap().to_string())
        .collect()
        .await;
    assert_eq!(ids, ["e1", "e2", "e3", "e4"]);
    let queries: Vec<_> = server
        .take()
        .into_iter()
        .map(|c| c.query.unwrap())
        .collect();
    assert_eq!(
        queries,
        ["limit=1000", "limit=1000&page=c2", "limit=1000&page=c3"]
    );
}

#[tokio::test]
async fn list_all_events_stops_on_error_and_on_a_repeated_cursor() {
    let server = CaptureServer::start(|_| Reply::json(404, "{}")).await;
    server.push(Reply::json(
        200,
        format!(r#"{{"data":[{}],"next_page":"same"}}"#, ev("e1")),
    ));
    server.push(Reply::json(
        200,
        format!(r#"{{"data":[{}],"next_page":"same"}}"#, ev("e2")),
    ));
    let session = server
        .client()
        .session("sesn_p", Credential::sessions_token("t"));
    let items: Vec<_> = session
        .list_all_events(ListEventsParams::history())
        .collect()
        .await;
    assert_eq!(items.len(), 2);
    assert!(items[0].is_ok());
    assert_eq!(items[1].as_ref().unwrap_err().kind(), ApiErrorKind::Decode);

    server.push(Reply::json(
        200,
        format!(r#"{{"data":[{}],"next_page":"n"}}"#, ev("e1")),
    ));
    let items: Vec<_> = session
        .list_all_events(ListEventsParams::history())
        .collect()
        .await;
    assert_eq!(items.len(), 2);
    assert_eq!(items[1].as_ref().unwrap_err().status(), Some(404));
}

#[tokio::test]
async fn malformed_known_events_are_kept_untyped_not_fatal() {
    let server = CaptureServer::start(|_| {
        Reply::json(
            200,
            r#"{"data":[{"type":"agent.tool_use","id":"e1"},{"type":"x.new","id":"e2"}],"next_page":null}"#,
        )
    })
    .await;
    let session = server
        .client()
        .session("sesn_p", Credential::sessions_token("t"));
    let page = session
        .list_events(&ListEventsParams::default())
        .await
        .unwrap();
    assert!(matches!(&page.data[0], SessionEvent::Other(g) if g.kind == "agent.tool_use"));
    assert_eq!(page.data[1].kind(), "x.new");
    assert!(session.send_events(&[]).await.unwrap_err().is_fatal());
}

#[tokio::test]
async fn oversized_bodies_are_a_typed_error() {
    let server =
        CaptureServer::start(|_| Reply::json(200, format!("\"{}\"", "x".repeat(10_000)))).await;
    let client = Client::new(server.config().max_response_bytes(1000).build().unwrap()).unwrap();
    let err = client
        .environment("env_test", Credential::environment_key("k"))
        .poll(&PollParams::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ApiErrorKind::Decode);
    assert!(err.to_string().contains("larger than 1000"), "{err}");
}

#[tokio::test]
async fn a_silent_stream_times_out_with_a_typed_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let _ = sock.read(&mut buf).await.unwrap();
        sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        // Headers only, then silence.
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let client = Client::new(
        cma_core::client::ClientConfig::builder()
            .base_url(format!("http://{addr}"))
            .request_timeout(Duration::from_millis(100))
            .build()
            .unwrap(),
    )
    .unwrap();
    let stream = client
        .session("sesn_t", Credential::sessions_token("t"))
        .stream(&StreamParams::default())
        .await
        .unwrap();
    let items: Vec<_> = stream.collect().await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].as_ref().unwrap_err().kind(), ApiErrorKind::Timeout);
    server.abort();
}
