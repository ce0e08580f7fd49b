//! The WebSocket client on smol (feature `smol`; `wss://` with feature
//! `tls`, through futures-rustls with `ClientOptions::tls` or the webpki
//! roots), through async-tungstenite. It behaves like the tokio client: the
//! same [`WebSocketClient`] handle, events, reconnection and backoff.
//!
//! ```no_run
//! # #[cfg(feature = "yrs")]
//! # fn example() -> Result<(), crdt_socket_sync::transport::ClientError> {
//! use crdt_socket_sync::adapters::yrs::YrsDocument;
//! use crdt_socket_sync::registry::MemoryRegistry;
//! use crdt_socket_sync::transport::{smol::connect, ClientOptions};
//! use yrs::{Text, Transact};
//!
//! smol::block_on(async {
//!     let docs = MemoryRegistry::new(|_: &str| YrsDocument::new(9));
//!     let options = ClientOptions { documents: vec!["notes".into()], ..ClientOptions::default() };
//!     let (client, _events) = connect("ws://127.0.0.1:8080", docs, options).await?;
//!     client.with_doc("notes", |doc| {
//!         doc.get_or_insert_text("body").push(&mut doc.transact_mut(), "from smol");
//!     }).await?;
//!     client.close().await
//! })
//! # }
//! ```

use std::time::Instant;

use async_tungstenite::WebSocketStream;
use async_tungstenite::smol::ConnectStream;
use tungstenite::protocol::WebSocketConfig;

use crate::registry::Registry;

use super::client::{BoxFuture, Runtime, build, first_connection};
use super::{ClientError, ClientEvents, ClientOptions, WebSocketClient};
use super::{DialError, DialSettings};

/// The smol runtime for the client task.
pub(crate) struct Smol;

impl Runtime for Smol {
    type Socket = WebSocketStream<ConnectStream>;

    fn dial(url: String, settings: &DialSettings) -> BoxFuture<Result<Self::Socket, DialError>> {
        let max_message = settings.max_message;
        #[cfg(feature = "tls")]
        let connector = settings.tls.clone().map(futures_rustls::TlsConnector::from);
        Box::pin(async move {
            let config = WebSocketConfig::default()
                .max_message_size(Some(max_message))
                .max_frame_size(Some(max_message))
                .read_buffer_size(super::WS_READ_BUFFER)
                .write_buffer_size(0);
            #[cfg(feature = "tls")]
            let (ws, _resp) = async_tungstenite::smol::connect_async_with_tls_connector_and_config(
                url,
                connector,
                Some(config),
            )
            .await
            .map_err(super::dial_error)?;
            #[cfg(not(feature = "tls"))]
            let (ws, _resp) = async_tungstenite::smol::connect_async_with_config(url, Some(config))
                .await
                .map_err(super::dial_error)?;
            Ok(ws)
        })
    }

    fn sleep_until(at: Instant) -> BoxFuture<()> {
        Box::pin(async move {
            smol::Timer::at(at).await;
        })
    }
}

/// Connects a client to `url` on smol's global executor. Resolves once the
/// handshake succeeded, or with a typed error; then reconnects by itself
/// (see `transport::tokio::connect` for the details, which
/// are the same).
pub async fn connect<R: Registry + Send + 'static>(
    url: &str,
    registry: R,
    options: ClientOptions,
) -> Result<(WebSocketClient<R>, ClientEvents), ClientError> {
    let parts = build::<Smol, R>(url, registry, options)?;
    smol::spawn(parts.task).detach();
    first_connection(parts.first).await?;
    Ok((parts.client, parts.events))
}
