//! Slow and idle clients cannot hold the server: trickled headers and idle keep-alive
//! connections are closed at the header timeout, a trickled body at the request timeout, and
//! connections beyond the cap wait instead of taking sockets.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{Harness, multi_thread};

/// Reads until the server closes the connection (or `limit` passes); what it sent and when
/// it closed, counted from `since`.
async fn read_until_closed(
    socket: &mut (impl AsyncReadExt + Unpin),
    since: Instant,
    limit: Duration,
) -> (String, Option<Duration>) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let outcome = tokio::time::timeout(limit, async {
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    (
        String::from_utf8_lossy(&received).into_owned(),
        outcome.ok(),
    )
}

async fn connect(harness: &Harness) -> TcpStream {
    let address = harness.base.trim_start_matches("http://");
    TcpStream::connect(address).await.expect("connects")
}

#[test]
fn trickled_headers_and_idle_connections_are_closed_at_the_header_timeout() {
    multi_thread().block_on(async {
        let mut harness =
            Harness::start(|config| config.header_read_timeout = Duration::from_millis(600)).await;
        // Headers sent a few bytes at a time, never finished.
        let mut slow = connect(&harness).await;
        let started = Instant::now();
        slow.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let trickle = async {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if slow.write_all(b"X-A: b\r\n").await.is_err() {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(3), trickle)
            .await
            .ok();
        let (_, closed) = read_until_closed(&mut slow, started, Duration::from_secs(5)).await;
        let closed = closed.expect("the server closes a connection whose headers never end");
        assert!(closed < Duration::from_secs(4), "closed after {closed:?}");

        // A connection that sends nothing at all, and one left idle after a request.
        let mut silent = connect(&harness).await;
        let started = Instant::now();
        let (_, closed) = read_until_closed(&mut silent, started, Duration::from_secs(5)).await;
        assert!(closed.is_some(), "an idle connection stays open");
        let mut idle = connect(&harness).await;
        idle.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let (answer, closed) = read_until_closed(&mut idle, started, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(closed.is_some(), "an idle keep-alive connection stays open");

        // The server still answers.
        harness.get("/ping").await.expect(200);
        harness.stop().await;
    });
}

#[test]
fn a_trickled_body_is_cut_off_at_the_request_timeout() {
    multi_thread().block_on(async {
        let mut harness =
            Harness::start(|config| config.request_timeout = Duration::from_millis(800)).await;
        let mut socket = connect(&harness).await;
        let (mut reader, mut writer) = socket.split();
        let started = Instant::now();
        writer
            .write_all(
                b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n\
                  Content-Length: 100000\r\n\r\n",
            )
            .await
            .unwrap();
        // One byte every 50 ms would take 83 minutes to finish the declared body.
        let trickle = async {
            for _ in 0..80 {
                if writer.write_all(b"\xff").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let answered = async {
            let mut answer = Vec::new();
            let mut buffer = [0u8; 1024];
            while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
                match reader.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buffer[..n]),
                }
            }
            (
                String::from_utf8_lossy(&answer).into_owned(),
                started.elapsed(),
            )
        };
        let (_, (answer, after)) = tokio::join!(trickle, answered);
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
        assert!(after < Duration::from_secs(3), "answered after {after:?}");
        harness.get("/ping").await.expect(200);
        harness.stop().await;
    });
}

#[test]
fn connections_beyond_the_cap_wait_for_a_free_one() {
    multi_thread().block_on(async {
        let mut harness = Harness::start(|config| {
            config.max_connections = 2;
            config.header_read_timeout = Duration::from_millis(700);
        })
        .await;
        // Two silent clients hold every slot until the header timeout frees them.
        let mut holders = vec![connect(&harness).await, connect(&harness).await];
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        harness.get("/ping").await.expect(200);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(400),
            "answered after {waited:?} although both connections were taken"
        );
        for holder in &mut holders {
            let (_, closed) = read_until_closed(holder, started, Duration::from_secs(2)).await;
            assert!(closed.is_some());
        }
        harness.stop().await;
    });
}
