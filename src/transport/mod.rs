//! WebSocket adapters around the sans-IO core (features `tokio`, `smol`,
//! `axum`, `tls`).
//!
//! They are thin: every protocol decision stays in [`Hub`](crate::server::Hub)
//! and [`ClientSession`](crate::client::ClientSession); the adapters move
//! bytes, read the clock and arm timers. One WebSocket binary message carries
//! exactly one frame ([`Framing::Datagram`](crate::Framing::Datagram)).
//!
//! ## Server (`tokio::WebSocketServer`, feature `tokio`)
//!
//! ```text
//!  accept loop ──spawns──▶ connection task (one per socket, owns it)
//!                              │  ▲
//!          HubInput (bounded,  │  │ frames (a queue bounded per
//!          shared by all)      ▼  │ connection, and a wake-up)
//!                           hub task (owns the Hub and the Registry)
//! ```
//!
//! * The **hub task** owns the [`Hub`](crate::server::Hub) and the
//!   [`Registry`](crate::registry::Registry); no lock is taken in the hot
//!   path. It drains every input that is ready (up to
//!   `ServerOptions::max_batch`), then calls
//!   [`Hub::commit`](crate::server::Hub::commit) once (group commit: one
//!   storage commit and one ack per document for the whole batch; a registry
//!   that commits in the background, such as the SQLite one, is not waited
//!   for, and `durable` acks follow when its commit waker fires), then
//!   moves the frames of the connections the batch touched into their
//!   outgoing queues, then forwards events, then asks the hub for its next
//!   deadline (a few lookups, whatever the number of connections) and
//!   re-arms its timer when that moved.
//! * A **connection task** per socket reads WebSocket messages into the hub
//!   task's input channel and writes the frames the hub task queued for it
//!   (taking the whole queue at once: an idle connection holds no queue
//!   allocation). When the hub says a connection does not want input (its
//!   queue is over the high-water mark) the task stops reading that socket
//!   until the hub resumes it. When a connection's outgoing queue is full
//!   (`ServerOptions::outgoing_capacity`), its frames stay in the hub's
//!   bounded queue, where the core coalesces them for a slow reader; server
//!   memory per connection stays bounded. The task is a future written by
//!   hand (the handshakes run boxed; 144 bytes, a 256-byte task).
//! * An **idle connection holds its TCP stream alone**: between messages,
//!   with nothing to write, the WebSocket state (tungstenite's read and
//!   write buffers, as large as the largest frame seen, and
//!   tokio-tungstenite's wakers) is dropped, and rebuilt when the socket
//!   becomes readable or a frame is to be written. It is dropped only at a
//!   frame boundary outside a fragmented message, which the transport
//!   follows in the bytes it hands tungstenite. TLS connections (whose
//!   stream keeps its own buffers) and the axum endpoint keep their
//!   WebSocket. About 0.6 KiB per idle connection in the transport (the
//!   task, tokio's socket registration and the state shared with the hub
//!   task), plus the hub's session.
//! * The tasks wake each other for every update. On a multi-threaded runtime
//!   those wake-ups cross threads, which costs CPU; a current-thread runtime,
//!   or `ServerOptions::own_thread` (the server on a thread of its own), is
//!   cheaper per delivered update (`benches/results/profile.md`).
//! * `tokio::WebSocketServer::stop` closes every session with
//!   `ServerShutdown` (a protocol `Close`, then a WebSocket close frame),
//!   flushes the registry and hands it back, so a new server can start with
//!   it.
//!
//! ## Clients ([`WebSocketClient`], features `tokio` or `smol`)
//!
//! One task owns the [`ClientSession`](crate::client::ClientSession), the
//! client's registry and the socket; the [`WebSocketClient`] handle talks to
//! it over a bounded channel. It dials when the core asks (`Dial` events,
//! with the core's backoff), so reconnection is automatic, and
//! [`WebSocketClient::disconnect`] cancels it.
//!
//! Logging goes through `tracing` (targets `crdt_socket_sync::transport::*`),
//! never from the core.

use thiserror::Error;

use crate::client::CommandError;
use crate::close::CloseCause;
use crate::wire::{CloseReason, RejectCode};

mod client;
pub use client::{ClientEvents, ClientOptions, Edit, WebSocketClient};
pub(crate) use client::{DialError, DialSettings};

#[cfg(feature = "tokio")]
mod server;
#[cfg(all(feature = "tokio", feature = "yrs"))]
mod yjs;
#[cfg(feature = "tokio")]
pub use server::{
    ConnStats, HubHandle, HubService, HubStats, LogLimits, RefuseReason, ServerError, ServerEvents,
    ServerOptions, TransportEvent,
};

#[cfg(feature = "tokio")]
pub mod tokio;

#[cfg(feature = "smol")]
pub mod smol;

#[cfg(feature = "axum")]
pub mod axum;

/// Errors of the WebSocket client.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not a `ws://` or `wss://` URL the client can dial.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `wss://` was requested but the crate was built without `tls`.
    #[error("wss:// needs the `tls` feature")]
    TlsUnavailable,
    /// Opening the TCP/TLS/WebSocket connection failed.
    #[error("could not connect to {url}: {reason}")]
    Dial {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The TLS handshake of a `wss://` connection failed: the server's
    /// certificate is not trusted by the client's roots
    /// (`ClientOptions::tls`), does not name the URL's host, has expired,
    /// or the server does not speak TLS.
    #[error("TLS with {url} failed: {reason}")]
    Tls {
        /// The URL.
        url: String,
        /// The rustls error.
        reason: String,
    },
    /// Dialing or the handshake did not finish in time.
    #[error("timed out connecting to {0}")]
    Timeout(String),
    /// The server refused the handshake (bad token, version, capacity).
    #[error("rejected by the server ({code:?}): {message}")]
    Rejected {
        /// Why.
        code: RejectCode,
        /// Detail from the server.
        message: String,
    },
    /// The connection closed before the handshake completed.
    #[error("connection closed: {0}")]
    Closed(CloseCause),
    /// The server closed the WebSocket before the handshake completed (for
    /// example code 1013 at its connection limit).
    #[error("the server closed the WebSocket ({code}): {reason}")]
    ServerClosed {
        /// The WebSocket close code.
        code: u16,
        /// The close reason text.
        reason: String,
    },
    /// The document was never opened on this client.
    #[error("document {0:?} is not open")]
    UnknownDocument(String),
    /// The server granted read-only access to the document: the edit was
    /// refused (and not made).
    #[error("document {0:?} is read-only")]
    ReadOnly(String),
    /// The document's outbox or the send queue is full: the edit was
    /// refused (and not made); retry after acknowledgements.
    #[error("backpressure on {name:?}: {queued} bytes queued, limit {limit}")]
    Backpressure {
        /// The document.
        name: String,
        /// Bytes currently queued.
        queued: usize,
        /// The limit.
        limit: usize,
    },
    /// The send queue is full: the application message was not sent.
    #[error("send queue full: {queued} bytes queued, limit {limit}")]
    SendQueueFull {
        /// Bytes currently queued.
        queued: usize,
        /// The limit.
        limit: usize,
    },
    /// A configured limit forbids it (name length, documents per
    /// connection, message size).
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The command needs a live connection.
    #[error("not connected")]
    NotConnected,
    /// The client's registry refused (e.g. its storage failed).
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    /// [`WebSocketClient::durable`] against a server that does not store
    /// documents durably (its `Welcome` said so, e.g. a memory-only
    /// registry): the edit is applied there, but no acknowledgement will
    /// ever call it durable.
    #[error("the server does not store documents durably: edits are never acknowledged as durable")]
    NotDurable,
    /// The server will never take this local update of `name` (read-only
    /// access, or it refused the update as invalid), so it will never be
    /// durable; see [`ClientEvent::UpdatesRejected`](crate::client::ClientEvent::UpdatesRejected).
    #[error("update {seq} of {name:?} was rejected by the server ({code:?})")]
    UpdateRejected {
        /// The document.
        name: String,
        /// The update's sequence number.
        seq: u64,
        /// Why.
        code: crate::wire::ErrorCode,
    },
    /// The client task has ended (after `close`, or the runtime shut down).
    #[error("the client task has stopped")]
    Stopped,
}

/// Flattens the session's command errors into [`ClientError`]'s own
/// variants, so callers match one level (`ClientError::ReadOnly(_)`); a
/// closed session is [`ClientError::Stopped`]. Exhaustive on purpose: a new
/// `CommandError` variant needs its own `ClientError` one.
impl From<CommandError> for ClientError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::UnknownDocument(name) => ClientError::UnknownDocument(name),
            CommandError::ReadOnly(name) => ClientError::ReadOnly(name),
            CommandError::Backpressure {
                name,
                queued,
                limit,
            } => ClientError::Backpressure {
                name,
                queued,
                limit,
            },
            CommandError::SendQueueFull { queued, limit } => {
                ClientError::SendQueueFull { queued, limit }
            }
            CommandError::LimitExceeded(what) => ClientError::LimitExceeded(what),
            CommandError::NotConnected => ClientError::NotConnected,
            CommandError::Closed => ClientError::Stopped,
            CommandError::Registry(e) => ClientError::Registry(e),
        }
    }
}

/// The WebSocket close code used for a protocol close reason.
pub fn close_code(reason: CloseReason) -> u16 {
    match reason {
        CloseReason::Normal => 1000,
        CloseReason::ServerShutdown => 1001,
        CloseReason::ProtocolError => 1002,
        CloseReason::LimitExceeded => 1009,
        CloseReason::Rejected => 1008,
        CloseReason::SlowConsumer => 1008,
        CloseReason::HandshakeTimeout | CloseReason::IdleTimeout | CloseReason::DeadConnection => {
            1001
        }
    }
}

/// WebSocket close code sent to a connection refused at the server's
/// connection limit ("try again later").
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// The WebSocket close code and reason text for how a session ended.
pub(crate) fn close_for(cause: &CloseCause) -> (u16, String) {
    let code = match cause {
        CloseCause::Local(r) => close_code(*r),
        CloseCause::Peer { .. } | CloseCause::TransportLost => 1000,
        CloseCause::Rejected { .. } => 1008,
        CloseCause::Inbound(_) | CloseCause::Protocol(_) => 1002,
        CloseCause::IncompleteInput { .. } => close_code(CloseReason::IdleTimeout),
    };
    let mut text = cause.to_string();
    // A close frame's reason is at most 123 bytes.
    if text.len() > 120 {
        let mut end = 120;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    (code, text)
}

/// A `ws://`/`wss://` URL check shared by the clients.
pub(crate) fn check_url(url: &str) -> Result<(), ClientError> {
    let bad = |reason: &str| ClientError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    if let Some(rest) = url.strip_prefix("wss://") {
        if !cfg!(feature = "tls") {
            return Err(ClientError::TlsUnavailable);
        }
        if rest.is_empty() {
            return Err(bad("no host"));
        }
        Ok(())
    } else if let Some(rest) = url.strip_prefix("ws://") {
        if rest.is_empty() {
            return Err(bad("no host"));
        }
        Ok(())
    } else {
        Err(bad("expected ws:// or wss://"))
    }
}

/// A rustls client configuration with the webpki roots and the `ring`
/// provider (no global provider state, no OpenSSL).
#[cfg(feature = "tls")]
pub(crate) fn rustls_config() -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// Sorts a tungstenite dial error: TLS failures (rustls errors, possibly
/// wrapped in an I/O error by the TLS stream) apart from the rest.
pub(crate) fn dial_error(e: tungstenite::Error) -> DialError {
    #[cfg(feature = "tls")]
    {
        if let tungstenite::Error::Tls(_) = &e {
            return DialError::Tls(e.to_string());
        }
        if let tungstenite::Error::Io(io) = &e
            && let Some(inner) = io.get_ref()
            && inner.downcast_ref::<rustls::Error>().is_some()
        {
            return DialError::Tls(inner.to_string());
        }
    }
    DialError::Other(e.to_string())
}

/// The seed a transport hands the core for a configured `seed`: that value
/// when it is non-zero (a fixed seed, for tests and replays), otherwise 64
/// bits of OS entropy.
///
/// The core is deterministic: the same seed gives the same session ids,
/// transfer ids and reconnect jitter. Left at the default of 0 in a real
/// deployment, every server run would hand out the same transfer ids (a
/// client resuming a transfer after a restart could be served another
/// payload under its old id) and every client would retry in lockstep after
/// an outage. So the transports treat 0 as "pick one".
pub(crate) fn transport_seed(configured: u64) -> u64 {
    if configured != 0 {
        return configured;
    }
    match getrandom::u64() {
        Ok(seed) => seed,
        Err(e) => {
            // No OS entropy (very unusual): std's hasher keys are drawn from
            // the OS once per thread and differ per `RandomState`, which
            // still tells runs and clients apart.
            tracing::warn!(target: "crdt_socket_sync::transport", error = %e, "no OS entropy for the seed; using std's hasher keys");
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(std::process::id())
        }
    }
}

/// Upper bound for a WebSocket message: a frame at the limit plus slack.
pub(crate) fn max_ws_message(limits: &crate::Limits) -> usize {
    limits.max_frame_len as usize + 1024
}

/// Read buffer of every client WebSocket. tungstenite's default (128 KiB,
/// zeroed when allocated) dominated both the memory of an idle connection and
/// the CPU profile (`memset`) under load (`benches/results/profile.md`);
/// frames are small, and large ones just take more reads.
pub(crate) const WS_READ_BUFFER: usize = 4096;

/// Largest WebSocket frame the server and the clients write: larger
/// messages (a document sync, a large upload) go out fragmented, so
/// tungstenite's buffers, which keep the size of the largest frame written or
/// read, stay this small.
pub(crate) const WS_FRAGMENT: usize = 16 * 1024;

/// A binary message as WebSocket frames of at most
/// [`WS_FRAGMENT`] bytes (a fragmented message, RFC 6455
/// §5.4, which every WebSocket client reassembles). tungstenite keeps its
/// write buffer as large as the largest frame it wrote, for the life of the
/// connection: without this, a connection that received a large document
/// sync (frames up to `max_frame_len`, 1 MiB) would hold that much while
/// idle ever after. Clients write the same way, so the server's read buffer
/// (which grows to the largest frame read) stays small after an upload.
pub(crate) struct Fragments {
    data: tungstenite::Bytes,
    /// Bytes already handed out.
    at: usize,
}

impl Fragments {
    pub(crate) fn new(data: Vec<u8>) -> Self {
        Fragments {
            data: data.into(),
            at: 0,
        }
    }

    /// `data` as its first WebSocket frame and, when it is larger than
    /// [`WS_FRAGMENT`], the frames after it.
    #[cfg(feature = "tokio")]
    pub(crate) fn split(data: Vec<u8>) -> (tungstenite::Message, Option<Self>) {
        let mut parts = Self::new(data);
        match parts.next() {
            Some(first) if parts.at < parts.data.len() => (first, Some(parts)),
            Some(first) => (first, None),
            // The first call always yields a frame.
            None => (tungstenite::Message::Binary(Default::default()), None),
        }
    }
}

impl Iterator for Fragments {
    type Item = tungstenite::Message;

    fn next(&mut self) -> Option<tungstenite::Message> {
        use tungstenite::protocol::frame::Frame;
        use tungstenite::protocol::frame::coding::{Data, OpCode};
        let len = self.data.len();
        if self.at == 0 && len <= WS_FRAGMENT {
            // One frame; `at` past the end ends the iteration.
            self.at = usize::MAX;
            return Some(tungstenite::Message::Binary(std::mem::take(&mut self.data)));
        }
        if self.at >= len {
            return None;
        }
        let end = len.min(self.at + WS_FRAGMENT);
        let opcode = OpCode::Data(if self.at == 0 {
            Data::Binary
        } else {
            Data::Continue
        });
        let part = self.data.slice(self.at..end);
        self.at = end;
        Some(tungstenite::Message::Frame(Frame::message(
            part,
            opcode,
            end == len,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_zero_draws_from_the_os_and_any_other_seed_is_kept() {
        let drawn: Vec<u64> = (0..4).map(|_| transport_seed(0)).collect();
        for (i, a) in drawn.iter().enumerate() {
            for b in &drawn[i + 1..] {
                assert_ne!(a, b, "two OS seeds collided: {drawn:?}");
            }
        }
        assert_eq!(transport_seed(1), 1);
        assert_eq!(transport_seed(u64::MAX), u64::MAX);
    }
}
