//! The tokio WebSocket server and client (feature `tokio`; `wss://` with
//! feature `tls`).
//!
//! With `tls`, the server terminates TLS itself when
//! `ServerOptions::tls` holds a `rustls::ServerConfig` (or leave it `None`
//! and put the server behind a TLS proxy), and the client trusts the roots
//! of `ClientOptions::tls` (default: the webpki roots):
//!
//! ```no_run
//! # #[cfg(all(feature = "yrs", feature = "tls"))]
//! # async fn example(
//! #     server_tls: std::sync::Arc<rustls::ServerConfig>,
//! #     client_tls: std::sync::Arc<rustls::ClientConfig>,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use crdt_socket_sync::adapters::yrs::YrsDocument;
//! use crdt_socket_sync::registry::MemoryRegistry;
//! use crdt_socket_sync::server::AllowAll;
//! use crdt_socket_sync::transport::tokio::{connect, WebSocketServer};
//! use crdt_socket_sync::transport::{ClientOptions, ServerOptions};
//!
//! let registry = MemoryRegistry::new(|_: &str| YrsDocument::server(0));
//! let options = ServerOptions { tls: Some(server_tls), ..ServerOptions::default() };
//! let server = WebSocketServer::start("127.0.0.1:8443", registry, AllowAll, options).await?;
//! let docs = MemoryRegistry::new(|_: &str| YrsDocument::new(1));
//! let options = ClientOptions { tls: Some(client_tls), ..ClientOptions::default() };
//! let (client, _events) = connect("wss://localhost:8443", docs, options).await?;
//! # Ok(()) }
//! ```
//!
//! A server and a client in ten lines:
//!
//! ```no_run
//! # #[cfg(feature = "yrs")]
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use crdt_socket_sync::adapters::yrs::YrsDocument;
//! use crdt_socket_sync::registry::MemoryRegistry;
//! use crdt_socket_sync::server::AllowAll;
//! use crdt_socket_sync::transport::tokio::{connect, WebSocketServer};
//! use crdt_socket_sync::transport::{ClientOptions, ServerOptions};
//! use yrs::{Text, Transact};
//!
//! let registry = MemoryRegistry::new(|_: &str| YrsDocument::server(0));
//! let server = WebSocketServer::start("127.0.0.1:8080", registry, AllowAll, ServerOptions::default()).await?;
//!
//! let docs = MemoryRegistry::new(|_: &str| YrsDocument::new(1));
//! let options = ClientOptions { documents: vec!["notes".into()], ..ClientOptions::default() };
//! let (client, _events) = connect(&format!("ws://{}", server.local_addr()), docs, options).await?;
//! client.with_doc("notes", |doc| {
//!     doc.get_or_insert_text("body").push(&mut doc.transact_mut(), "hi");
//! }).await?;
//! let _registry = server.stop().await?;
//! # Ok(()) }
//! ```

use std::time::Instant;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::registry::Registry;

use super::client::{BoxFuture, Runtime, build, first_connection};
use super::{ClientError, ClientEvents, ClientOptions, WebSocketClient};
use super::{DialError, DialSettings};

pub use super::server::WebSocketServer;

/// The tokio runtime for the client task.
pub(crate) struct Tokio;

impl Runtime for Tokio {
    type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

    fn dial(url: String, settings: &DialSettings) -> BoxFuture<Result<Self::Socket, DialError>> {
        let max_message = settings.max_message;
        #[cfg(feature = "tls")]
        let connector = settings
            .tls
            .clone()
            .map(tokio_tungstenite::Connector::Rustls);
        Box::pin(async move {
            let config = WebSocketConfig::default()
                .max_message_size(Some(max_message))
                .max_frame_size(Some(max_message))
                .read_buffer_size(super::WS_READ_BUFFER)
                .write_buffer_size(0);
            #[cfg(feature = "tls")]
            let (ws, _resp) = tokio_tungstenite::connect_async_tls_with_config(
                url,
                Some(config),
                true,
                connector,
            )
            .await
            .map_err(super::dial_error)?;
            #[cfg(not(feature = "tls"))]
            let (ws, _resp) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
                .await
                .map_err(super::dial_error)?;
            Ok(ws)
        })
    }

    fn sleep_until(at: Instant) -> BoxFuture<()> {
        Box::pin(tokio::time::sleep_until(at.into()))
    }
}

/// Connects a client to `url` (`ws://` or, with feature `tls`, `wss://`)
/// on the current tokio runtime. Resolves once the handshake succeeded, or
/// with a typed error (dial failure, timeout, rejected token...). From then
/// on the client reconnects by itself, with the core's backoff, until
/// [`WebSocketClient::disconnect`] or [`WebSocketClient::close`].
///
/// `registry` holds the client's documents; `options.documents` are opened
/// before connecting.
///
/// ```no_run
/// # #[cfg(feature = "yrs")]
/// # async fn example() -> Result<(), crdt_socket_sync::transport::ClientError> {
/// use crdt_socket_sync::adapters::yrs::YrsDocument;
/// use crdt_socket_sync::client::ClientEvent;
/// use crdt_socket_sync::registry::MemoryRegistry;
/// use crdt_socket_sync::transport::{tokio::connect, ClientOptions};
///
/// let docs = MemoryRegistry::new(|_: &str| YrsDocument::new(42));
/// let options = ClientOptions { documents: vec!["notes".into()], ..ClientOptions::default() };
/// let (client, mut events) = connect("ws://127.0.0.1:8080", docs, options).await?;
/// while let Some(event) = events.recv().await {
///     match event {
///         ClientEvent::RemoteUpdate { name, .. } => println!("{name} changed"),
///         ClientEvent::Acknowledged { name, applied, .. } => println!("{name}: {applied} acked"),
///         ClientEvent::Status(status) => println!("{status:?}"),
///         _ => {}
///     }
/// }
/// client.disconnect().await?;
/// # Ok(()) }
/// ```
pub async fn connect<R: Registry + Send + 'static>(
    url: &str,
    registry: R,
    options: ClientOptions,
) -> Result<(WebSocketClient<R>, ClientEvents), ClientError> {
    let parts = build::<Tokio, R>(url, registry, options)?;
    tokio::spawn(parts.task);
    first_connection(parts.first).await?;
    Ok((parts.client, parts.events))
}

impl<R: Registry + Send + 'static> WebSocketClient<R> {
    /// [`connect`] on tokio.
    pub async fn connect(
        url: &str,
        registry: R,
        options: ClientOptions,
    ) -> Result<(Self, ClientEvents), ClientError> {
        connect(url, registry, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MemoryRegistry;
    use crate::server::AllowAll;
    use crate::testing::OpLog;
    use crate::transport::ServerOptions;

    /// Session ids (and transfer ids, from the same generator) come from
    /// the hub's seed: two servers started with the default options must
    /// not hand out the same ones, or a transfer id of the last run could
    /// resume a different payload after a restart.
    #[tokio::test]
    async fn two_default_servers_hand_out_different_session_ids() {
        let mut ids = Vec::new();
        for _ in 0..2 {
            let registry = MemoryRegistry::new(|_: &str| OpLog::new(0));
            let server =
                WebSocketServer::start("127.0.0.1:0", registry, AllowAll, ServerOptions::default())
                    .await
                    .unwrap();
            let docs = MemoryRegistry::new(|_: &str| OpLog::new(1));
            let (client, _events) = connect(&server.url(), docs, ClientOptions::default())
                .await
                .unwrap();
            let id = client.with_session(|s, _| s.session_id()).await.unwrap();
            ids.push(id.expect("connected"));
            client.close().await.unwrap();
            server.stop().await.unwrap();
        }
        assert_ne!(ids[0], ids[1], "both servers assigned {:?}", ids[0]);
    }
}
