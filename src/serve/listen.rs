//! The accept loop: one task per connection, HTTP/1 through hyper, with the limits that
//! `axum::serve` does not set. Written here because `axum::serve` gives hyper no timer,
//! so hyper's header-read timeout never fires: a client that sends its request one byte
//! a second (or opens a connection and sends nothing) would keep its connection, its
//! task and its file descriptor for ever.
//!
//! - A connection must deliver the headers of each request within `header_timeout` of
//!   its first byte (or of opening / the previous response); else hyper closes it.
//! - The body is read by the handlers, inside the request timeout of the `observe`
//!   middleware: a slow body gets a 503 and the connection is closed.
//! - At most `max_connections` are open at once; past that, new ones wait in the
//!   kernel's backlog until one closes.
//! - Shutdown: stop accepting, let each connection finish the request it is serving,
//!   then close.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

/// What a connection may take.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` completes, then waits for the open
/// connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Dropping the sender tells every connection to shut down gracefully; each holds a
    // receiver, so `closed()` below resolves when the last connection is gone.
    let (stop_tx, stop_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or a connection reset before accept: the
                    // listener itself is fine; pause briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = app.map_request(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                req.map(Body::new)
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let conn =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%remote, error = %e, "connection closed");
                    }
                    return;
                }
                _ = stop.changed() => conn.as_mut().graceful_shutdown(),
            }
            if let Err(e) = conn.await {
                tracing::debug!(%remote, error = %e, "connection closed");
            }
        });
    }
    drop(stop_rx);
    drop(listener);
    // Every connection sees the change and shuts down gracefully; `closed()` resolves
    // once the last one has dropped its receiver.
    let _ = stop_tx.send(());
    stop_tx.closed().await;
}
