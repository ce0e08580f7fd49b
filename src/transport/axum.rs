//! Mount the sync endpoint on an axum route (feature `axum`).
//!
//! The hub runs in its own task ([`HubService`](super::HubService)); the route upgrades
//! requests to WebSockets and hands each socket to it. Origin checks and the
//! connection limit of [`ServerOptions`](super::ServerOptions) apply; its
//! `path` does not (the route decides).
//!
//! ```no_run
//! # #[cfg(feature = "yrs")]
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::Router;
//! use crdt_socket_sync::adapters::yrs::YrsDocument;
//! use crdt_socket_sync::registry::MemoryRegistry;
//! use crdt_socket_sync::server::AllowAll;
//! use crdt_socket_sync::transport::{axum::sync_route, HubService, ServerOptions};
//!
//! let registry = MemoryRegistry::new(|_: &str| YrsDocument::server(0));
//! let (service, _events) = HubService::spawn(registry, AllowAll, ServerOptions::default());
//! let app = Router::new()
//!     .route("/health", axum::routing::get(|| async { "ok" }))
//!     .route("/sync", sync_route(service.handle().clone()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};

use super::CLOSE_TRY_AGAIN_LATER;
use super::server::{Incoming, WsFrame};
use super::{HubHandle, RefuseReason};

impl WsFrame for Message {
    type Rest = std::iter::Empty<Message>;
    fn binary(data: Vec<u8>) -> Self {
        Message::Binary(data.into())
    }
    fn close(code: u16, reason: String) -> Self {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
    }
    fn classify(self) -> Incoming {
        match self {
            Message::Binary(b) => Incoming::Data(b.into()),
            Message::Text(t) => Incoming::Data(t.as_bytes().to_vec()),
            Message::Close(_) => Incoming::Close,
            _ => Incoming::Other,
        }
    }
}

/// A `GET` route serving the sync endpoint with the hub behind `handle`.
pub fn sync_route<S>(handle: HubHandle) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    get(move |ws: WebSocketUpgrade, headers: HeaderMap| {
        let handle = handle.clone();
        async move { upgrade(handle, ws, &headers).await }
    })
}

/// Upgrades one request (for handlers that do more than [`sync_route`]):
/// checks the `Origin` header, then serves the socket with the hub.
pub async fn upgrade(handle: HubHandle, ws: WebSocketUpgrade, headers: &HeaderMap) -> Response {
    let origin = headers.get("origin").and_then(|o| o.to_str().ok());
    if !handle.origin_ok(origin) {
        let origin = origin.unwrap_or_default().to_string();
        handle.refused(None, RefuseReason::Origin(origin)).await;
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let max = super::max_ws_message(&handle.options().hub.limits);
    let ws = ws
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(super::server::WS_SERVER_READ_BUFFER)
        .write_buffer_size(0);
    ws.on_upgrade(move |mut socket: WebSocket| async move {
        match handle.try_admit() {
            Some(admission) => handle.connection(socket, None, admission).await,
            None => {
                let limit = handle.options().max_connections;
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code: CLOSE_TRY_AGAIN_LATER,
                        reason: format!("server at its connection limit ({limit})").into(),
                    })))
                    .await;
                handle
                    .refused(None, RefuseReason::ConnectionLimit { limit })
                    .await;
            }
        }
    })
}
