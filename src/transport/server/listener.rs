//! The tokio server's TCP side: the accept loop, TLS (feature `tls`), the
//! WebSocket upgrade with its path, origin and connection-limit checks, and
//! the task that then serves the connection.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::connection::ConnTask;
use super::hibernate::{HibernatingWebSocket, Watched, server_ws_config};
use super::{Admission, HubHandle, LOG, RefuseReason};
use crate::transport::CLOSE_TRY_AGAIN_LATER;

pub(super) async fn accept_loop(
    listener: TcpListener,
    handle: HubHandle,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, addr)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve_tcp(tcp, addr, handle.clone()));
            }
            Err(e) => {
                tracing::warn!(target: LOG, error = %e, "accept failed");
                // E.g. out of file descriptors: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn ws_config(handle: &HubHandle) -> WebSocketConfig {
    server_ws_config(max_message(handle))
}

fn max_message(handle: &HubHandle) -> usize {
    crate::transport::max_ws_message(&handle.options().hub.limits)
}

/// Serves one accepted TCP connection: TLS (when configured), the WebSocket
/// upgrade, then the connection until it closes.
///
/// The task lives as long as the connection, so its size is memory per idle
/// connection: the handshakes run boxed (their state is large and
/// short-lived), then the task holds the [`Connection`](super::Connection)
/// alone, a future written by hand, whose WebSocket holds the TCP stream
/// alone while idle ([`HibernatingWebSocket`]).
fn serve_tcp(
    tcp: TcpStream,
    addr: SocketAddr,
    handle: HubHandle,
) -> ConnTask<HibernatingWebSocket, tungstenite::Message> {
    let deadline = tokio::time::Instant::now() + handle.options().hub.handshake_timeout;
    #[cfg(feature = "tls")]
    if let Some(config) = handle.options().tls.clone() {
        return ConnTask::Boxed(Box::pin(serve_tls(tcp, addr, handle, deadline, config)));
    }
    ConnTask::Opening(Box::pin(async move {
        let (ws, admission, yjs) =
            upgrade(Watched::upgrading(tcp), addr, &handle, deadline).await?;
        let ws = HibernatingWebSocket::new(ws, max_message(&handle));
        #[cfg(feature = "yrs")]
        if let Some(target) = yjs {
            // A y-websocket client: its own task, translated.
            let socket = crate::transport::yjs::YjsSocket::new(ws, target, handle.options());
            let conn = handle.connection::<_, tungstenite::Message>(socket, Some(addr), admission);
            tokio::spawn(conn);
            return None;
        }
        #[cfg(not(feature = "yrs"))]
        let NoYjs = yjs;
        Some(handle.connection(ws, Some(addr), admission))
    }))
}

/// [`serve_tcp`] after a TLS handshake.
#[cfg(feature = "tls")]
async fn serve_tls(
    tcp: TcpStream,
    addr: SocketAddr,
    handle: HubHandle,
    deadline: tokio::time::Instant,
    config: std::sync::Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            let Some((ws, admission, yjs)) = Box::pin(upgrade(tls, addr, &handle, deadline)).await
            else {
                return;
            };
            #[cfg(feature = "yrs")]
            if let Some(target) = yjs {
                let socket = crate::transport::yjs::YjsSocket::new(ws, target, handle.options());
                let conn =
                    handle.connection::<_, tungstenite::Message>(socket, Some(addr), admission);
                return conn.await;
            }
            #[cfg(not(feature = "yrs"))]
            let NoYjs = yjs;
            handle.connection(ws, Some(addr), admission).await;
        }
        Ok(Err(e)) => {
            tracing::debug!(target: LOG, %addr, error = %e, "TLS handshake failed");
            handle
                .refused(Some(addr), RefuseReason::Tls(e.to_string()))
                .await;
        }
        Err(_) => {
            handle
                .refused(Some(addr), RefuseReason::Tls("timed out".into()))
                .await;
        }
    }
}

/// The WebSocket upgrade of an accepted stream, with its slot under the
/// connection limit; `None` when it was refused (and reported).
// The callback's signature is tungstenite's `Callback`.
#[allow(clippy::result_large_err)]
async fn upgrade<S>(
    stream: S,
    addr: SocketAddr,
    handle: &HubHandle,
    deadline: tokio::time::Instant,
) -> Option<(WebSocketStream<S>, Admission, Yjs)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let admission = handle.try_admit();
    let mut refused: Option<RefuseReason> = None;
    #[cfg_attr(not(feature = "yrs"), allow(unused_mut))]
    let mut yjs: Yjs = Default::default();
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let path = req.uri().path();
        #[cfg(feature = "yrs")]
        {
            yjs = crate::transport::yjs::yjs_target(handle.options(), path, req.uri().query());
        }
        if !yjs_present(&yjs) && !handle.path_ok(path) {
            refused = Some(RefuseReason::Path(path.to_string()));
            return Err(error_response(
                StatusCode::NOT_FOUND,
                "no sync endpoint here",
            ));
        }
        let origin = req.headers().get("origin").and_then(|o| o.to_str().ok());
        if !handle.origin_ok(origin) {
            refused = Some(RefuseReason::Origin(origin.unwrap_or_default().to_string()));
            return Err(error_response(StatusCode::FORBIDDEN, "origin not allowed"));
        }
        Ok(resp)
    };
    let upgrade = tokio::time::timeout_at(
        deadline,
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config(handle))),
    )
    .await;
    let ws = match upgrade {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            let reason = refused.unwrap_or_else(|| RefuseReason::Handshake(e.to_string()));
            handle.refused(Some(addr), reason).await;
            return None;
        }
        Err(_) => {
            handle
                .refused(Some(addr), RefuseReason::Handshake("timed out".into()))
                .await;
            return None;
        }
    };
    match admission {
        Some(admission) => Some((ws, admission, yjs)),
        None => {
            let limit = handle.options().max_connections;
            refuse_at_limit(ws, limit).await;
            handle
                .refused(Some(addr), RefuseReason::ConnectionLimit { limit })
                .await;
            None
        }
    }
}

/// The y-websocket room and token an upgrade asked for (feature `yrs`).
#[cfg(feature = "yrs")]
type Yjs = Option<crate::transport::yjs::YjsTarget>;
#[cfg(not(feature = "yrs"))]
type Yjs = NoYjs;
/// Without `yrs` there is no y-websocket endpoint.
#[cfg(not(feature = "yrs"))]
#[derive(Default)]
struct NoYjs;

#[cfg(feature = "yrs")]
fn yjs_present(yjs: &Yjs) -> bool {
    yjs.is_some()
}
#[cfg(not(feature = "yrs"))]
fn yjs_present(_: &Yjs) -> bool {
    false
}

async fn refuse_at_limit<S>(mut ws: WebSocketStream<S>, limit: usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::SinkExt;
    let frame = tungstenite::protocol::CloseFrame {
        code: CLOSE_TRY_AGAIN_LATER.into(),
        reason: format!("server at its connection limit ({limit})").into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        ws.send(tungstenite::Message::Close(Some(frame))),
    )
    .await;
}

fn error_response(status: StatusCode, text: &str) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(text.to_string()));
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MemoryRegistry;
    use crate::server::AllowAll;
    use crate::testing::OpLog;
    use crate::transport::{HubService, ServerOptions};

    /// The task of a connection lives as long as the connection: its size is
    /// memory per idle connection (workload C of the comparison). tokio
    /// allocates it with its header and trailer (96 bytes) in a cell aligned
    /// to 128 bytes.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let registry = MemoryRegistry::new(|_: &str| OpLog::new(0));
        let (service, _events) = HubService::spawn(registry, AllowAll, ServerOptions::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        let task = serve_tcp(tcp, peer, service.handle().clone());
        let size = std::mem::size_of_val(&task);
        let ws = std::mem::size_of::<HibernatingWebSocket>();
        // What tokio keeps of it: its `Stage` (the future, or the output).
        #[allow(dead_code)]
        enum Stage<T> {
            Running(T),
            Finished(Result<(), (Option<Box<dyn std::any::Any + Send>>, std::num::NonZeroU64)>),
            Consumed,
        }
        let stage =
            std::mem::size_of::<Stage<ConnTask<HibernatingWebSocket, tungstenite::Message>>>();
        eprintln!("connection task {size} bytes (stage {stage}), its WebSocket {ws}");
        // 144 bytes with tokio-tungstenite 0.30 and every feature (the
        // WebSocket is 48 while asleep: the TCP stream, or a box): with
        // tokio's 96, a 256-byte cell. It stays there because the task is a
        // hand-written future, the handshakes run boxed and the WebSocket
        // sleeps behind the TCP stream.
        assert!(
            stage <= 160,
            "connection task of {size} bytes (stage {stage})"
        );
        drop(task);
        service.stop().await.unwrap();
    }
}
