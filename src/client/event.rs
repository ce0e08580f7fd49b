//! What a client session tells the application.

use std::sync::Arc;

use thiserror::Error;

use crate::close::CloseCause;
use crate::document::ApplyOutcome;
use crate::registry::RegistryError;
use crate::wire::{Access, Bytes, Compression, ErrorCode, SessionId};

/// The connection status of a client session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// No transport yet.
    Idle,
    /// Transport up, handshake in progress.
    Connecting,
    /// Handshake done; documents sync.
    Connected,
    /// The connection was lost; waiting for the backoff delay or for the
    /// transport the application is dialing.
    Reconnecting,
    /// The connection ended; `connect` may be called with a new transport.
    Disconnected,
    /// Closed for good by [`ClientSession::close`](super::ClientSession::close).
    Closed,
}

/// Events from a client session, in the order they happened.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The status changed.
    Status(Status),
    /// The handshake succeeded.
    Connected {
        /// The session id the server assigned.
        session: SessionId,
        /// The negotiated protocol version.
        version: u16,
        /// The negotiated compression.
        compression: Compression,
        /// Whether the server stores documents durably (its acknowledgements
        /// will report updates `durable`).
        durable: bool,
    },
    /// The server opened a document for this session (or changed its access).
    DocumentOpened {
        /// The document.
        name: Arc<str>,
        /// What this session may do.
        access: Access,
    },
    /// Initial sync of a document finished: both sides exchanged what the
    /// other lacked.
    Synced {
        /// The document.
        name: Arc<str>,
    },
    /// An update from another client was applied (or is held waiting for
    /// dependencies, see `outcome`).
    RemoteUpdate {
        /// The document.
        name: Arc<str>,
        /// What the document did with it.
        outcome: ApplyOutcome,
    },
    /// The server acknowledged local updates (cumulative sequence numbers).
    Acknowledged {
        /// The document.
        name: Arc<str>,
        /// Updates up to this sequence number are applied on the server.
        applied: u64,
        /// Updates up to this sequence number are on durable storage.
        durable: u64,
    },
    /// A document-scoped problem; the connection goes on.
    DocumentError {
        /// The document, when known.
        name: Option<Arc<str>>,
        /// The local update concerned, if any.
        seq: Option<u64>,
        /// What went wrong.
        code: ErrorCode,
        /// Detail.
        message: String,
    },
    /// Local updates the server will never take were dropped from the
    /// outbox: the server granted this session read-only access (or refused
    /// one of its writes as read-only). The edits remain in the local
    /// document but will not reach the server or other clients; an
    /// application may tell the user, or keep them elsewhere.
    /// [`ClientSession::flush_local`](super::ClientSession::flush_local)
    /// then returns [`CommandError::ReadOnly`] for the document.
    UpdatesRejected {
        /// The document.
        name: Arc<str>,
        /// Sequence number of the first dropped update.
        first_seq: u64,
        /// Sequence number of the last dropped update.
        last_seq: u64,
        /// How many updates were dropped.
        count: usize,
        /// Their bytes.
        bytes: usize,
        /// Why the server refuses them ([`ErrorCode::ReadOnly`]).
        code: ErrorCode,
    },
    /// The connection ended (exactly once per connection).
    Closed {
        /// Why.
        cause: CloseCause,
    },
    /// Another session's presence in a document changed (`state: None`: it
    /// left or cleared it).
    PresenceChanged {
        /// The document.
        name: Arc<str>,
        /// The other session.
        session: SessionId,
        /// Its authenticated identity.
        identity: String,
        /// Its new state.
        state: Option<Bytes>,
    },
    /// An application message arrived.
    AppMessage {
        /// Application-defined kind.
        kind: u32,
        /// The sending session (`None`: the server).
        from: Option<SessionId>,
        /// The document it was broadcast through, if any.
        doc: Option<Arc<str>>,
        /// Payload.
        data: Vec<u8>,
    },
    /// Open a new transport now, then call
    /// [`ClientSession::connect`](super::ClientSession::connect) (or
    /// [`ClientSession::dial_failed`](super::ClientSession::dial_failed)):
    /// the backoff delay elapsed, or the application asked with
    /// [`ClientSession::dial`](super::ClientSession::dial).
    Dial {
        /// Reconnect attempt number, from 1; 0 for a dial asked for with
        /// [`ClientSession::dial`](super::ClientSession::dial) (the first
        /// connection, or a reconnect after a disconnect).
        attempt: u32,
    },
    /// The transport asked for by a [`ClientEvent::Dial`] could not be
    /// opened (the server is down or unreachable). The session retries by
    /// itself after `retry_in`; `None`: no retry (the backoff gave up, see
    /// [`ClientEvent::GaveUp`], or reconnection is disabled).
    DialFailed {
        /// The `attempt` of the failed `Dial`.
        attempt: u32,
        /// Why, as the transport reported it.
        reason: Option<String>,
        /// When the next dial is asked for.
        retry_in: Option<std::time::Duration>,
    },
    /// The reconnect policy gave up after this many attempts.
    GaveUp {
        /// Attempts made.
        attempts: u32,
    },
}

/// A local command could not be carried out.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandError {
    /// The document was never opened on this session.
    #[error("document {0:?} is not open")]
    UnknownDocument(String),
    /// The server granted read-only access.
    #[error("document {0:?} is read-only")]
    ReadOnly(String),
    /// The document's outbox or the send queue is full, so the edit was
    /// refused; retry after acknowledgements.
    #[error("backpressure on {name:?}: {queued} bytes queued, limit {limit}")]
    Backpressure {
        /// The document.
        name: String,
        /// Bytes currently queued.
        queued: usize,
        /// The limit.
        limit: usize,
    },
    /// The send queue is full, so an application message
    /// ([`ClientSession::send_app`](super::ClientSession::send_app)) was not
    /// sent; retry once the transport drained it.
    #[error("send queue full: {queued} bytes queued, limit {limit}")]
    SendQueueFull {
        /// Bytes currently queued.
        queued: usize,
        /// The limit.
        limit: usize,
    },
    /// A configured limit forbids it (name length, documents per connection).
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The session was closed for good.
    #[error("session closed")]
    Closed,
    /// The command needs a live connection.
    #[error("not connected")]
    NotConnected,
    /// The local registry refused.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Where a client sends an application message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AppTarget {
    /// The server's application hook.
    Server,
    /// One other session.
    Session(SessionId),
    /// Every other subscriber of an open document.
    Document(String),
}
