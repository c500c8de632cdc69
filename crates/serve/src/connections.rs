//! The HTTP/1.1 accept loop: a cap on open connections and a deadline on request headers, so
//! that slow or idle clients (slowloris) cannot hold the server's sockets and tasks forever.
//!
//! `axum::serve` configures neither (its hyper connections have no timer, so hyper's header
//! timeout never runs), hence this small loop over hyper's own connection builder.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;

/// What one client connection may hold.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once; further clients wait in the kernel's accept queue.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, counted from the moment the
    /// server waits for them: it bounds a trickled header and an idle keep-alive connection.
    /// (A trickled body is bounded by the request timeout of the routes that read bodies.)
    pub header_read_timeout: Duration,
}

/// Serves `app` on `listener` until `stop` turns true, then stops accepting, lets each open
/// connection finish its current request, and returns when all have closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let slot = tokio::select! {
            () = stopped(&mut stop) => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (socket, peer) = tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a little instead of spinning, and go on.
                    tracing::warn!("accepting a connection failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        let app = app.clone();
        let mut stop = stop.clone();
        connections.spawn(async move {
            let _slot = slot;
            let service = TowerToHyperService::new(app);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(socket), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stopped(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!("connection from {peer}: {error}");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await: dropped here at once.
    let _ = stop.wait_for(|stop| *stop).await;
}
