//! The HTTP serving loop: hyper's HTTP/1 directly, because `axum::serve`
//! has no header-read timer, no connection cap and a graceful shutdown that
//! waits for every connection, so one client that sends half a request line
//! holds a connection, and a SIGTERM, forever.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;

/// Serves `router` on `listener` until `shutdown` completes; then stops
/// accepting, lets requests under way finish and closes idle connections,
/// and after `settings.shutdown_grace` drops whatever connection is left.
///
/// At most `settings.max_connections` connections are served at once: past
/// that, accepting waits for one to close. A client gets
/// `settings.header_read_timeout` to send a request's headers, also for
/// the next request on a kept-alive connection, so neither a stalled client
/// nor an idle one holds a connection longer.
///
/// Errors accepting a connection are logged and waited out, not returned,
/// as `axum::serve` does; the `Result` is its shape.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    settings: &Settings,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let timeout = settings.header_read_timeout;
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .keep_alive(true)
        // Zero turns it off, as documented for the flag.
        .header_read_timeout((!timeout.is_zero()).then_some(timeout));
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let draining = CancellationToken::new();
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => {
                permit.expect("the semaphore is never closed")
            }
        };
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            stream = accept(&listener) => stream,
        };
        while connections.try_join_next().is_some() {}
        let connection = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let draining = draining.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut connection = pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                _ = draining.cancelled() => {
                    // Closes the connection if idle, else after the request
                    // under way is answered.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    // New connections are refused from here on.
    drop(listener);
    draining.cancel();
    let grace = settings.shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            ?grace,
            "connections still open after the grace period; closing them"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// The next connection. One reset before it was accepted is skipped; other
/// errors (out of file descriptors, say) are logged and retried a second
/// later, as `axum::serve` does, rather than ending the service.
async fn accept(listener: &TcpListener) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return stream,
            Err(error) if is_connection_error(&error) => {}
            Err(error) => {
                tracing::error!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A connection that went away before it was accepted: nothing to wait for.
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        error.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
