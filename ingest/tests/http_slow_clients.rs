//! Ingest under slow and hostile clients, on the real local stack: clients that trickle their
//! headers or stall in their body cannot stall a valid request, the server closes them at its
//! deadlines, and connections past `api.max_connections` wait for a free one.
//!
//! Deadlines in these tests are guards (a test that would hang fails instead); the assertions are on
//! the order of events: the valid request is answered while the slow clients are still held open,
//! and a connection over the limit is served only after the server closed one.

mod http_support;

use std::sync::Arc;
use std::time::Duration;

use http_support::*;
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The request's headers up to the body, as a gateway would send them, announcing `length` bytes.
fn request_head(host: &str, length: usize, extra: &str) -> String {
    format!(
        "POST /v1/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN_EU}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n"
    )
}

/// What a slow client saw: everything the server sent, and when the server closed the connection.
#[derive(Debug, Default)]
struct Seen {
    received: Vec<u8>,
    closed_at: Option<Instant>,
}

type Watched = Arc<Mutex<Seen>>;

/// Records what the server sends on `reader` and when it closes the connection.
fn watch(mut reader: tokio::net::tcp::OwnedReadHalf) -> Watched {
    let seen = Watched::default();
    let record = seen.clone();
    tokio::spawn(async move {
        let mut buffer = [0_u8; 4096];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => {
                    record.lock().await.closed_at = Some(Instant::now());
                    return;
                }
                Ok(read) => record.lock().await.received.extend(&buffer[..read]),
            }
        }
    });
    seen
}

/// A client that sends its headers one byte every 200 ms, and never finishes them.
async fn trickling_headers(address: &str) -> Watched {
    let stream = TcpStream::connect(address).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let seen = watch(reader);
    let head = request_head(address, 100, "").into_bytes();
    tokio::spawn(async move {
        for byte in head.into_iter().cycle() {
            if writer.write_all(&[byte]).await.is_err() {
                return; // closed by the server
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    seen
}

/// A client that sends its headers, waits until the server reads its body (`100 Continue`), sends
/// 10 of the 1000 bytes it announced, and stalls. Returns once the server is reading the body.
async fn stalled_body(address: &str) -> (Watched, tokio::net::tcp::OwnedWriteHalf) {
    let stream = TcpStream::connect(address).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let seen = watch(reader);
    writer
        .write_all(request_head(address, 1000, "Expect: 100-continue\r\n").as_bytes())
        .await
        .unwrap();
    infra::testkit::eventually(
        Duration::from_secs(30),
        "100 Continue: the handler reading the stalled body",
        || {
            let seen = seen.clone();
            async move {
                let seen = seen.lock().await;
                seen.received
                    .starts_with(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .then_some(())
            }
        },
    )
    .await;
    writer.write_all(b"[{\"event_i").await.unwrap();
    (seen, writer)
}

async fn closed_at(seen: &Watched) -> Option<Instant> {
    seen.lock().await.closed_at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn slow_clients_cannot_stall_a_valid_request_and_are_closed_at_the_deadlines() {
    const PERMITS: usize = 2;
    let service = Service::start("http_slow_clients", |config| {
        config.api.max_concurrent_requests = PERMITS;
        config.api.header_read_timeout_seconds = 10;
        config.api.body_read_timeout_seconds = 10;
    })
    .await;
    let address = service.base_url.trim_start_matches("http://").to_owned();

    // More slow clients of each kind than there are request permits.
    let mut trickling = Vec::new();
    let mut stalled = Vec::new();
    // Kept open by the test: only the server may close these connections.
    let mut stalled_writers = Vec::new();
    for _ in 0..=PERMITS {
        trickling.push(trickling_headers(&address).await);
        let (seen, writer) = stalled_body(&address).await;
        stalled.push(seen);
        stalled_writers.push(writer);
    }

    // A valid request is answered while every slow client is still held open.
    let good = event(PRODUCER_EU, &unique_id("past-the-slow"));
    let answer = tokio::time::timeout(
        Duration::from_secs(60),
        service.post_json(&json!([event_json(&good)])),
    )
    .await
    .expect("the valid request is answered despite the slow clients");
    let answered_at = Instant::now();
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.body["accepted"], 1);
    for (index, seen) in trickling.iter().chain(&stalled).enumerate() {
        assert_eq!(
            closed_at(seen).await,
            None,
            "slow client {index} was closed before the valid request was answered: the valid \
             request waited for the slow clients (or the machine is too slow for 10 s deadlines)"
        );
    }

    // The deadlines close every slow client; a stalled body is told why.
    for seen in trickling.iter().chain(&stalled) {
        infra::testkit::eventually(
            Duration::from_secs(60),
            "the server to close a slow client",
            || async { closed_at(seen).await },
        )
        .await;
        assert!(closed_at(seen).await.unwrap() > answered_at);
    }
    for seen in &stalled {
        let seen = seen.lock().await;
        let text = String::from_utf8_lossy(&seen.received);
        let response = text
            .strip_prefix("HTTP/1.1 100 Continue\r\n\r\n")
            .expect("100 Continue first");
        assert!(
            response.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{response}"
        );
        assert!(
            response.to_ascii_lowercase().contains("connection: close"),
            "{response}"
        );
        assert!(
            response.contains("\"error\":\"body_read_timeout\""),
            "{response}"
        );
        assert!(
            response
                .contains("the body did not arrive within 10 s (api.body_read_timeout_seconds)"),
            "{response}"
        );
    }
    for seen in &trickling {
        assert!(
            seen.lock().await.received.is_empty(),
            "no request was read, so nothing is answered"
        );
    }
    drop(stalled_writers);
    service.still_accepts_a_good_event().await;
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_connection_over_the_limit_waits_until_the_server_closes_one() {
    let service = Service::start("http_connection_limit", |config| {
        config.api.max_connections = 1;
        config.api.header_read_timeout_seconds = 3;
    })
    .await;
    let address = service.base_url.trim_start_matches("http://").to_owned();

    // The one connection: served (a health check), then idle in keep-alive.
    let stream = TcpStream::connect(&address).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let held = watch(reader);
    writer
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    infra::testkit::eventually(
        Duration::from_secs(30),
        "the held connection to be served",
        || async {
            let seen = held.lock().await;
            seen.received.starts_with(b"HTTP/1.1 200 OK").then_some(())
        },
    )
    .await;

    // A second client waits for the server to close the first (its idle deadline), then is served.
    let client = reqwest::Client::new();
    let good = event(PRODUCER_EU, &unique_id("over-the-limit"));
    let answer = tokio::time::timeout(
        Duration::from_secs(60),
        post(
            &client,
            &service.base_url,
            JSON,
            Some(TOKEN_EU),
            serde_json::to_vec(&json!([event_json(&good)])).unwrap(),
        ),
    )
    .await
    .expect("the waiting connection is served once the held one is closed");
    let answered_at = Instant::now();
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let closed = closed_at(&held)
        .await
        .expect("the held connection was closed by the server before the next one was served");
    assert!(closed < answered_at);
    drop(writer);
    service.stop().await;
}

/// The value of an unlabelled gauge in the service's `/metrics`.
async fn gauge(service: &Service, name: &str) -> Option<f64> {
    let answer = service.get("/metrics").await;
    let text = answer.body.as_str()?.to_owned();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn bodies_past_the_memory_budget_get_503_with_retry_after() {
    const BUDGET: usize = 4096;
    let service = Service::start("http_body_budget", |config| {
        config.api.max_body_bytes = BUDGET;
        config.api.max_buffered_body_bytes = BUDGET;
        config.api.body_read_timeout_seconds = 3;
    })
    .await;
    let address = service.base_url.trim_start_matches("http://").to_owned();

    // A client holds almost all of the budget: it sent 4000 of its 4096 bytes, and stalls.
    let (held, mut writer) = {
        let stream = TcpStream::connect(&address).await.unwrap();
        let (reader, writer) = stream.into_split();
        (watch(reader), writer)
    };
    writer
        .write_all(request_head(&address, BUDGET, "").as_bytes())
        .await
        .unwrap();
    writer.write_all(&[b' '; 4000]).await.unwrap();
    infra::testkit::eventually(
        Duration::from_secs(30),
        "the stalled body to be held in memory",
        || async {
            let held = gauge(&service, "quotaflow_ingest_http_buffered_body_bytes").await?;
            (held >= 4000.0).then_some(())
        },
    )
    .await;

    // A valid request finds no room: 503 at once, retry later, nothing produced.
    let good = event(PRODUCER_EU, &unique_id("no-room"));
    let answer = service.post_json(&json!([event_json(&good)])).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        answer.body
    );
    assert_eq!(answer.body["error"], "overloaded");
    assert_eq!(answer.headers["retry-after"], "5");
    assert_eq!(answer.headers["connection"], "close");

    // The stalled client is cut off at its own deadline, which frees the room.
    infra::testkit::eventually(
        Duration::from_secs(30),
        "the stalled client to be closed",
        || async { closed_at(&held).await },
    )
    .await;
    let received = String::from_utf8_lossy(&held.lock().await.received).into_owned();
    assert!(
        received.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{received}"
    );
    drop(writer);
    service.still_accepts_a_good_event().await;
    service.stop().await;
}
