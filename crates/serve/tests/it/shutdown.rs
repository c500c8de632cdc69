//! Stopping and signals: a shutdown answers every request already received before the server
//! goes away; SIGHUP reloads the model and SIGTERM drains and stops, as in a container.

use std::time::Duration;

use crate::common::{Harness, photo_bytes};
use image::ImageFormat;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts `count` classification requests without waiting for them.
fn spawn_requests(
    harness: &Harness,
    count: u64,
) -> Vec<tokio::task::JoinHandle<crate::common::Reply>> {
    (0..count)
        .map(|i| {
            let (client, url) = (harness.client.clone(), harness.url("/v1/classify"));
            let body = photo_bytes(i as usize % 3, 300 + i, ImageFormat::Jpeg);
            tokio::spawn(async move {
                crate::common::Reply::read(
                    client
                        .post(url)
                        .header("content-type", "image/jpeg")
                        .body(body)
                        .send()
                        .await,
                )
                .await
            })
        })
        .collect()
}

#[test]
fn shutdown_drains_in_flight_requests_then_refuses_connections() {
    runtime().block_on(async {
        // Every request sits in a batch that waits 700 ms for company.
        let mut harness = Harness::start(|config| {
            config.max_batch_size = Some(64);
            config.max_batch_delay = Duration::from_millis(700);
        })
        .await;
        let in_flight = spawn_requests(&harness, 3);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let server = harness.server.take().unwrap();
        let addr = server.local_addr();
        server.begin_shutdown();
        let stopping = tokio::spawn(server.wait());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "new connections are refused once shutdown starts"
        );
        for request in in_flight {
            request.await.unwrap().expect(200);
        }
        stopping.await.unwrap().expect("drains cleanly");
    });
}

#[test]
fn sighup_reloads_and_sigterm_drains_and_stops() {
    runtime().block_on(async {
        let mut harness = Harness::start(|config| {
            config.max_batch_size = Some(64);
            config.max_batch_delay = Duration::from_millis(700);
        })
        .await;
        harness.server().handle_signals().unwrap();
        // SAFETY: signalling our own process; the handlers were installed just above.
        let signal = |signal| unsafe { libc::kill(libc::getpid(), signal) };

        let new = harness.models.commit().await;
        assert_eq!(signal(libc::SIGHUP), 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while harness.server().state().models.current().unwrap().version() != new {
            assert!(
                std::time::Instant::now() < deadline,
                "SIGHUP did not reload"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let in_flight = spawn_requests(&harness, 2);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(signal(libc::SIGTERM), 0);
        let server = harness.server.take().unwrap();
        let addr = server.local_addr();
        tokio::time::timeout(Duration::from_secs(20), server.wait())
            .await
            .expect("SIGTERM stops the server")
            .expect("drains cleanly");
        for request in in_flight {
            let reply = request.await.unwrap();
            reply.expect(200);
            assert_eq!(reply.json()["predictions"][0]["version"], new.as_str());
        }
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    });
}
