//! The gateway's front door on raw sockets: malformed framing, oversized and stalled heads, a
//! stalled body — each answered 400/408/431 or closed, with nothing reaching the backend — and
//! hundreds of slow clients beside ordinary traffic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The shared helpers re-export more than this file uses.
#[allow(unused_imports)]
mod support;

use std::time::{Duration, Instant};

use axum::Router;
use gateway::GatewayState;
use shopstack_testkit::server::TestServer;
use support::{Tiny, client, gateway_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEAD_TIMEOUT: Duration = Duration::from_millis(500);
const BODY_TIMEOUT: Duration = Duration::from_millis(500);

/// A backend counting every request, and a gateway in front of it with short timeouts.
async fn front_door() -> (Tiny, TestServer, GatewayState) {
    let backend = Tiny::start(Router::new().fallback(|| async { "{\"ok\":true}" })).await;
    let (gateway, state) = gateway_with(&backend.url(), &backend.url(), &[], |settings| {
        settings.connection_timeouts.header_read = HEAD_TIMEOUT;
        settings.connection_timeouts.body_read = BODY_TIMEOUT;
        settings.connection_timeouts.idle = Duration::from_secs(2);
    })
    .await;
    (backend, gateway, state)
}

fn addr(gateway: &TestServer) -> String {
    gateway.url("").trim_start_matches("http://").to_owned()
}

/// Send `bytes`, then read until the gateway closes (or 5 s pass): the answer's status, or
/// `None` for a close without one.
async fn exchange(gateway: &TestServer, bytes: &[u8]) -> (Option<u16>, String) {
    let mut stream = TcpStream::connect(addr(gateway)).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_answer(&mut stream, Duration::from_secs(5)).await
}

async fn read_answer(stream: &mut TcpStream, within: Duration) -> (Option<u16>, String) {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the connection stayed open: {:?}",
        String::from_utf8_lossy(&answer)
    );
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_framing_is_refused_before_any_backend() {
    let (backend, gateway, _state) = front_door().await;

    // The path works: a well-formed request reaches the backend.
    let (status, _) = exchange(
        &gateway,
        b"GET /catalog HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, Some(200));
    assert_eq!(backend.hits(), 1);

    let post = |headers: &str, body: &str| {
        format!("POST /cart/add HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}\r\n{body}")
    };
    let big_header = format!(
        "GET /catalog HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let cases: Vec<(&str, String, &[u16])> = vec![
        (
            "Content-Length and Transfer-Encoding",
            post(
                "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
                "2\r\n{}\r\n0\r\n\r\n",
            ),
            &[400],
        ),
        (
            "two different Content-Lengths",
            post("Content-Length: 2\r\nContent-Length: 3\r\n", "{}x"),
            &[400],
        ),
        (
            "obs-fold",
            post("X-Folded: a\r\n  b\r\nContent-Length: 2\r\n", "{}"),
            &[400],
        ),
        (
            "bare LF line endings",
            "GET /catalog HTTP/1.1\nHost: x\nConnection: close\n\n".to_owned(),
            &[400],
        ),
        ("a head of 64 KiB, over the 16 KiB limit", big_header, &[431]),
    ];
    for (case, request, expected) in cases {
        let (status, answer) = exchange(&gateway, request.as_bytes()).await;
        assert!(
            status.is_some_and(|status| expected.contains(&status)),
            "{case}: expected {expected:?}, got {answer:?}"
        );
    }
    // A head that stops midway: 408, then the close.
    let started = Instant::now();
    let (status, answer) = exchange(&gateway, b"GET /catalog HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
    assert_eq!(status, Some(408), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(started.elapsed() < HEAD_TIMEOUT + Duration::from_secs(3));
    // A connection that sends nothing is closed without an answer.
    let (status, answer) = exchange(&gateway, b"").await;
    assert_eq!(status, None, "{answer}");
    // A body that stops midway: 408 and the close.
    let (status, answer) = exchange(
        &gateway,
        post("Content-Length: 100\r\n", "{\"user_id\":").as_bytes(),
    )
    .await;
    assert_eq!(status, Some(408), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );

    assert_eq!(
        backend.hits(),
        1,
        "nothing malformed or incomplete reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (_backend, gateway, _state) = front_door().await;
    let mut stream = TcpStream::connect(addr(&gateway)).await.unwrap();
    stream
        .write_all(b"GET /catalog HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // Kept open past the head timeout (idle is not a slow head), closed after the idle one.
    let started = Instant::now();
    let (status, _) = read_answer(&mut stream, Duration::from_secs(6)).await;
    let idle = started.elapsed();
    assert_eq!(status, None);
    assert!(
        idle >= Duration::from_millis(1500),
        "closed after {idle:?}, before the idle timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_slow_clients_do_not_stop_ordinary_ones() {
    let (backend, gateway, _state) = front_door().await;
    const SLOW: usize = 400;
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let mut stream = TcpStream::connect(addr(&gateway)).await.unwrap();
        stream
            .write_all(b"GET /catalog HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    // Meanwhile ordinary requests succeed, each within its deadline.
    let http = client();
    for _ in 0..50 {
        let started = Instant::now();
        let response = tokio::time::timeout(Duration::from_secs(2), http.get(gateway.url("/catalog")).send())
            .await
            .expect("an ordinary request waited beyond its deadline")
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    assert_eq!(backend.hits(), 50);
    // And every slow client is answered 408 and closed after the head timeout.
    let started = Instant::now();
    let closed = futures::future::join_all(
        slow.iter_mut()
            .map(|stream| read_answer(stream, Duration::from_secs(10))),
    )
    .await;
    assert!(
        closed.iter().all(|(status, _)| *status == Some(408)),
        "{:?}",
        closed.iter().find(|(status, _)| *status != Some(408))
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_new_clients_wait_instead_of_failing() {
    let backend = Tiny::start(Router::new().fallback(|| async { "{\"ok\":true}" })).await;
    let (gateway, _state) = gateway_with(&backend.url(), &backend.url(), &[], |settings| {
        settings.max_connections = Some(3);
        settings.connection_timeouts.header_read = Duration::from_secs(20);
    })
    .await;
    let mut holders = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(addr(&gateway)).await.unwrap();
        stream.write_all(b"GET /catalog HTTP/1.1\r\n").await.unwrap();
        holders.push(stream);
    }
    // The fourth is queued by the kernel, not served: no answer while the three are open.
    let mut waiting = TcpStream::connect(addr(&gateway)).await.unwrap();
    waiting
        .write_all(b"GET /catalog HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), waiting.peek(&mut byte)).await;
    assert!(early.is_err(), "answered beyond MAX_CONNECTIONS");
    // One closes: the fourth is accepted and answered.
    drop(holders.pop());
    let (status, answer) = read_answer(&mut waiting, Duration::from_secs(5)).await;
    assert_eq!(status, Some(200), "{answer}");
    assert_eq!(backend.hits(), 1);
}
