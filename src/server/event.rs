//! What the hub tells the application.

use std::sync::Arc;

use crate::close::CloseCause;
use crate::wire::{Access, ErrorCode, RejectCode, SessionId};

use super::Identity;

/// A connection's id within one [`Hub`](super::Hub).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Events from the hub, in the order they happened.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A transport was accepted.
    ClientConnected {
        /// The connection.
        conn: ConnId,
    },
    /// The handshake succeeded.
    HandshakeCompleted {
        /// The connection.
        conn: ConnId,
        /// The session id sent to the client.
        session: SessionId,
        /// The authenticated identity.
        identity: Identity,
    },
    /// A document was opened by a session.
    DocumentOpened {
        /// The connection.
        conn: ConnId,
        /// The document.
        name: Arc<str>,
        /// What the session may do.
        access: Access,
    },
    /// A full snapshot was sent because no delta was computable.
    SnapshotSent {
        /// The connection.
        conn: ConnId,
        /// The document.
        name: Arc<str>,
        /// Snapshot size.
        bytes: usize,
    },
    /// A client resumed an interrupted sync transfer instead of starting
    /// over.
    TransferResumed {
        /// The connection.
        conn: ConnId,
        /// The document.
        name: Arc<str>,
        /// Bytes the client already had.
        offset: u64,
    },
    /// Initial sync of a document with this session completed.
    DocumentSynced {
        /// The connection.
        conn: ConnId,
        /// The document.
        name: Arc<str>,
    },
    /// Updates from a session were applied (one event per batch).
    UpdatesApplied {
        /// The connection.
        conn: ConnId,
        /// The document.
        name: Arc<str>,
        /// Highest client sequence number in the batch.
        last_seq: u64,
        /// Updates integrated.
        applied: u32,
        /// Updates that were already known.
        duplicates: u32,
        /// Updates held waiting for missing dependencies.
        pending: u32,
    },
    /// An update (or a document operation) was refused; the session goes on.
    DocumentError {
        /// The connection.
        conn: ConnId,
        /// The document, when known.
        name: Option<Arc<str>>,
        /// The client sequence number concerned, if any.
        seq: Option<u64>,
        /// The error code also sent to the client.
        code: ErrorCode,
        /// Detail.
        message: String,
    },
    /// A subscriber's send queue passed its high-water mark: it stops
    /// receiving individual updates and will get one coalesced catch-up once
    /// it drains.
    SubscriberLagging {
        /// The connection.
        conn: ConnId,
        /// The document.
        name: Arc<str>,
        /// Bytes queued for it at that moment.
        queued: usize,
    },
    /// A catch-up was queued: a lagging subscriber drained its queue, or a
    /// sync held back (the session's queue was full, a transfer was still
    /// being sent, or its `Limits::sync_rate` was spent) went ahead.
    CatchUpQueued {
        /// The connection.
        conn: ConnId,
        /// The document.
        name: Arc<str>,
    },
    /// History of a document was pruned down to the version all its
    /// subscribers confirmed; a snapshot was handed to the registry.
    HistoryPruned {
        /// The document.
        name: Arc<str>,
        /// Size of the snapshot taken.
        snapshot_bytes: usize,
    },
    /// A document's CRDT panicked (in `apply`, a delta, a snapshot...): the
    /// document is out of service until the hub restarts. Its subscribers
    /// got an [`ErrorCode::Internal`] error and were unsubscribed; opens of
    /// it are refused. Every other document and session goes on.
    DocumentFailed {
        /// The document.
        name: Arc<str>,
    },
    /// The registry's storage failed outside any one session's request.
    StorageError {
        /// The document, when known.
        name: Option<Arc<str>>,
        /// Detail.
        message: String,
    },
    /// An application message addressed to the server.
    AppMessage {
        /// The sending connection.
        conn: ConnId,
        /// Application-defined kind.
        kind: u32,
        /// Payload (after the hook).
        data: Vec<u8>,
    },
    /// The application hook dropped a message.
    AppMessageDropped {
        /// The sending connection.
        conn: ConnId,
        /// Its kind.
        kind: u32,
    },
    /// The handshake was refused.
    HandshakeRejected {
        /// The connection.
        conn: ConnId,
        /// Why.
        code: RejectCode,
        /// Detail.
        message: String,
    },
    /// The session ended (exactly once per connection).
    ClientDisconnected {
        /// The connection.
        conn: ConnId,
        /// Why.
        cause: CloseCause,
    },
}
