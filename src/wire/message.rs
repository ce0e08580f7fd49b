//! The protocol's messages.
//!
//! Every message of both server modes is a variant of [`Message`]. The wire
//! types know nothing about sessions: they are plain data that
//! [`Encoder`](super::Encoder) packs into frames and the decoders unpack. CRDT
//! payloads and versions are opaque [`Bytes`].
//!
//! Documents are named once, in [`Message::Open`]; afterwards both sides refer
//! to them by the small [`DocId`] the server assigned in [`Message::Opened`],
//! so a keystroke update costs a one-byte document reference instead of a name.

use serde::{Deserialize, Serialize};

/// Opaque bytes on the wire: CRDT updates, versions, snapshots, tokens.
///
/// Serialized as one length-prefixed byte string (not a sequence of `u8`s),
/// so large payloads encode and decode at memory speed.
///
/// ```
/// use crdt_socket_sync::wire::Bytes;
/// let b = Bytes::from(vec![1, 2, 3]);
/// assert_eq!(b.as_ref(), &[1, 2, 3]);
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Bytes(pub Vec<u8>);

impl core::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Bytes({})", self.0.len())
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Self {
        Bytes(v.to_vec())
    }
}

impl From<Bytes> for Vec<u8> {
    fn from(b: Bytes) -> Self {
        b.0
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl core::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// A per-connection handle for an open document, assigned by the server in
/// [`Message::Opened`]. Small numbers encode in one byte.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct DocId(pub u32);

/// A server-assigned session identifier (unique per server run, from its seed).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SessionId(pub u64);

/// Compression algorithms a peer can offer or accept.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum Compression {
    /// No compression.
    #[default]
    None,
    /// Raw deflate (RFC 1951) via miniz_oxide, above a size threshold.
    Deflate,
}

/// The limits a peer announces in the handshake, so the other side never
/// sends it a frame it would refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PeerLimits {
    /// Largest frame (bytes on the wire) the peer accepts.
    pub max_frame_len: u32,
    /// Largest decompressed frame body the peer accepts.
    pub max_decompressed_len: u32,
}

impl PeerLimits {
    /// The smallest `max_frame_len` either side accepts from the other
    /// (the server in `Hello`, the client in `Welcome`): below it every
    /// message would be cut into absurdly many fragments.
    pub(crate) const MIN_FRAME_LEN: u32 = 1024;
}

/// What a session may do with a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum Access {
    /// Read and write.
    ReadWrite,
    /// Receive updates; writes are refused with [`ErrorCode::ReadOnly`].
    ReadOnly,
}

/// How the payload of an initial-sync transfer must be applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum SyncKind {
    /// An update containing what the receiver lacks since its version.
    Delta,
    /// A full snapshot (used when no delta is computable).
    Snapshot,
}

/// A resume point for an interrupted chunked transfer: the transfer id and how
/// many bytes of it the receiver already holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Resume {
    /// The transfer id from [`Message::SyncChunk`].
    pub transfer: u64,
    /// Bytes already received (the next chunk starts here).
    pub offset: u64,
}

/// Why the server refused a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum RejectCode {
    /// No protocol version in common.
    UnsupportedVersion,
    /// The auth token was refused.
    Unauthorized,
    /// The server is at its connection limit or shutting down.
    Unavailable,
    /// The hello was malformed (bad peer id, limits too small...).
    BadHello,
}

/// Typed error codes carried by [`Message::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum ErrorCode {
    /// The document does not exist and the registry does not create on open.
    DocumentNotFound,
    /// The token does not grant access to this document.
    Forbidden,
    /// A write to a read-only document.
    ReadOnly,
    /// The CRDT refused the payload as invalid.
    InvalidUpdate,
    /// The receiver lacks causal dependencies for a while; re-sync needed.
    OutOfSync,
    /// A message referred to a document handle that is not open.
    UnknownDocument,
    /// An application message was addressed to a session that is not
    /// connected.
    UnknownSession,
    /// A message arrived that is not valid in the current state.
    UnexpectedMessage,
    /// A bounded buffer is full.
    Backpressure,
    /// A size or rate limit was exceeded.
    LimitExceeded,
    /// Storage failed; the update was not acknowledged as durable.
    Storage,
    /// Anything else on the server side.
    Internal,
}

/// Why a connection was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum CloseReason {
    /// A normal close requested by the application.
    Normal,
    /// The peer sent bytes that are not a valid frame or message.
    ProtocolError,
    /// The handshake did not complete in time.
    HandshakeTimeout,
    /// No traffic for longer than the idle deadline.
    IdleTimeout,
    /// The peer stopped answering pings.
    DeadConnection,
    /// The peer could not keep up and its backlog could not be coalesced.
    SlowConsumer,
    /// The server is shutting down.
    ServerShutdown,
    /// A configured limit was exceeded.
    LimitExceeded,
    /// The handshake was rejected, or a later token refresh was.
    Rejected,
}

/// Where an application message goes, or (on delivery) where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum Route {
    /// To the server's application hook only.
    Server,
    /// To (or from) one session.
    Session(SessionId),
    /// To every subscriber of a document (or delivered through it).
    Document(DocId),
}

/// One peer's presence entry as broadcast by the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct AwarenessEntry {
    /// The session the state belongs to.
    pub session: SessionId,
    /// The identity the server authenticated for that session (not a claim).
    pub identity: String,
    /// The publisher's clock for this state; newer wins.
    pub clock: u32,
    /// The state, or `None` when the peer left or cleared it.
    pub state: Option<Bytes>,
}

/// Every message of the protocol.
///
/// Direction is noted on each variant (C = client, S = server). Variants are
/// encoded with postcard; the variant index is the first byte of each message,
/// so the most frequent messages come first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum Message {
    // ---- live traffic (first, so their tags are small) ----
    /// C→S: one local update for an open document, with the client's
    /// per-document sequence number (starting at 1).
    Update {
        /// The document.
        doc: DocId,
        /// Client sequence number of this update.
        seq: u64,
        /// The CRDT update.
        data: Bytes,
    },
    /// C→S: consecutive updates `first_seq, first_seq + 1, ...` in one message.
    UpdateBatch {
        /// The document.
        doc: DocId,
        /// Sequence number of `data[0]`.
        first_seq: u64,
        /// The CRDT updates, in order.
        data: Vec<Bytes>,
    },
    /// S→C: an update another session made (encoded once, shared by all
    /// recipients).
    Broadcast {
        /// The document.
        doc: DocId,
        /// The CRDT update.
        data: Bytes,
    },
    /// S→C: cumulative acknowledgement of the client's updates.
    Ack {
        /// The document.
        doc: DocId,
        /// All updates with `seq <= applied` are applied in server memory.
        applied: u64,
        /// All updates with `seq <= durable` are on durable storage (0: none
        /// or no durable store).
        durable: u64,
    },
    /// Both: liveness probe; `t` is the sender's clock in microseconds.
    Ping {
        /// Sender timestamp (µs since the sender's session start).
        t: u64,
    },
    /// Both: answer to [`Message::Ping`], echoing its timestamp.
    Pong {
        /// The timestamp of the ping being answered.
        echo: u64,
    },

    // ---- handshake ----
    /// C→S: first message of a connection.
    Hello {
        /// Protocol versions the client speaks, preferred first.
        versions: Vec<u16>,
        /// Client-chosen peer id (e.g. the CRDT actor id); informational.
        peer: String,
        /// Opaque credentials for the server's authorizer.
        token: Bytes,
        /// Compression algorithms the client accepts.
        compression: Vec<Compression>,
        /// The client's receive limits.
        limits: PeerLimits,
    },
    /// S→C: the handshake succeeded.
    Welcome {
        /// The chosen protocol version.
        version: u16,
        /// The session id the server assigned.
        session: SessionId,
        /// The chosen compression (both directions).
        compression: Compression,
        /// The server's receive limits.
        limits: PeerLimits,
        /// How often the server expects traffic (ms); silence past a few
        /// intervals ends the session.
        heartbeat_ms: u32,
        /// Whether the server stores documents durably, i.e. whether its
        /// [`Message::Ack`]s will ever move `durable`. A client waiting for
        /// durability against a server that says `false` gets an error
        /// instead of waiting forever.
        durable: bool,
    },
    /// S→C: the handshake failed; the server closes after sending this.
    Reject {
        /// Why.
        code: RejectCode,
        /// Human-readable detail.
        message: String,
    },
    /// C→S: a new auth token for this connection (no reconnect needed).
    RefreshToken {
        /// The new opaque credentials.
        token: Bytes,
    },

    // ---- documents ----
    /// C→S: subscribe to a document, stating the client's version.
    Open {
        /// The document name.
        name: String,
        /// The client's current version (opaque CRDT version bytes).
        version: Bytes,
        /// An interrupted initial-sync transfer to continue, if any.
        resume: Option<Resume>,
    },
    /// S→C: the document is open under handle `doc` with `access`.
    Opened {
        /// The name from [`Message::Open`].
        name: String,
        /// The handle used from now on.
        doc: DocId,
        /// What this session may do.
        access: Access,
    },
    /// S→C: one piece of an initial-sync (or catch-up) transfer. The pieces of
    /// one transfer concatenate to a single payload of `total` bytes.
    SyncChunk {
        /// The document.
        doc: DocId,
        /// Transfer id, so an interrupted transfer can be resumed.
        transfer: u64,
        /// Delta or snapshot.
        kind: SyncKind,
        /// Byte offset of `data` within the transfer.
        offset: u64,
        /// Total transfer size in bytes.
        total: u64,
        /// The bytes.
        data: Bytes,
    },
    /// Both: the sender finished sending what the receiver lacks (the end
    /// of an initial sync or a catch-up); `version` is the sender's version,
    /// so the receiver can send back what the sender lacks. Sent once per
    /// sync, never as a periodic report ([`Message::VersionReport`]).
    SyncDone {
        /// The document.
        doc: DocId,
        /// The sender's version.
        version: Bytes,
    },
    /// Both: "send me what I lack since `version`" (the sender's version).
    /// A client sends it when it holds updates whose dependencies are
    /// missing or asks for a re-sync; the server sends it when a client's
    /// updates depend on what it does not have. The receiver answers with
    /// what the sender lacks: the server with a sync transfer ending in
    /// [`Message::SyncDone`], the client with updates.
    SyncRequest {
        /// The document.
        doc: DocId,
        /// The sender's version.
        version: Bytes,
    },
    /// C→S: the client's current version of a synced document, sent
    /// periodically when it changed, so the server knows what every
    /// subscriber holds (history pruning). Asks for nothing in return.
    VersionReport {
        /// The document.
        doc: DocId,
        /// The client's version.
        version: Bytes,
    },
    /// Both: unsubscribe from a document (the connection stays open).
    CloseDoc {
        /// The document.
        doc: DocId,
    },

    // ---- presence and application messages ----
    /// C→S: publish (or clear, with `None`) this session's presence state.
    AwarenessSet {
        /// The document.
        doc: DocId,
        /// Publisher clock; increases with every change.
        clock: u32,
        /// The state.
        state: Option<Bytes>,
    },
    /// S→C: presence changes (a delta, or the full set for a joiner).
    Awareness {
        /// The document.
        doc: DocId,
        /// The entries that changed.
        entries: Vec<AwarenessEntry>,
    },
    /// Both: an application-defined message, typed by `kind`.
    App {
        /// Application-defined kind.
        kind: u32,
        /// Where it goes (C→S), or how it was addressed (S→C).
        route: Route,
        /// S→C: the sending session (`None`: the server itself). Ignored C→S.
        from: Option<SessionId>,
        /// Payload.
        data: Bytes,
    },

    // ---- relay mode (opaque blobs with sequence numbers) ----
    /// C→S: join a relay room, having seen everything up to `after_seq`.
    RelayJoin {
        /// The room name.
        room: String,
        /// The last contiguous sequence number the client holds (0: none).
        after_seq: u64,
    },
    /// S→C: joined; the room's snapshot and log follow as
    /// [`Message::RelaySnapshot`] / [`Message::RelayChanges`].
    RelayWelcome {
        /// The room name from the join.
        room_name: String,
        /// The handle used from now on.
        room: DocId,
        /// Last sequence number assigned in the room.
        last_seq: u64,
        /// Entries currently in the log.
        log_len: u64,
        /// The server asks this client to upload a snapshot.
        compact: bool,
    },
    /// C→S: append blobs to the room's log.
    RelayPush {
        /// The room.
        room: DocId,
        /// The blobs, in order.
        blobs: Vec<Bytes>,
    },
    /// S→C: the last push was appended as `(seq - count, seq]`.
    RelayAck {
        /// The room.
        room: DocId,
        /// Sequence number of the last blob of the push.
        seq: u64,
        /// Number of blobs appended.
        count: u32,
        /// Entries currently in the log.
        log_len: u64,
        /// The server asks this client to upload a snapshot.
        compact: bool,
    },
    /// S→C: blobs with sequence numbers `first_seq..first_seq + len`.
    RelayChanges {
        /// The room.
        room: DocId,
        /// Sequence number of `blobs[0]`.
        first_seq: u64,
        /// The blobs.
        blobs: Vec<Bytes>,
    },
    /// Both: a snapshot covering all blobs up to and including `up_to`
    /// (S→C on join; C→S as a compaction upload).
    RelaySnapshot {
        /// The room.
        room: DocId,
        /// Highest sequence number the snapshot covers.
        up_to: u64,
        /// The snapshot blob.
        data: Bytes,
    },
    /// C→S: send me everything after `after_seq` again.
    RelayStateRequest {
        /// The room.
        room: DocId,
        /// The last contiguous sequence number the client holds.
        after_seq: u64,
    },

    // ---- errors and close ----
    /// S→C: a document-scoped (when `doc` is set) or connection-scoped error
    /// that does not close the connection.
    Error {
        /// The document concerned, if any.
        doc: Option<DocId>,
        /// The client sequence number concerned, if any.
        seq: Option<u64>,
        /// What went wrong.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// Both: the sender is closing the connection.
    Close {
        /// Why.
        reason: CloseReason,
        /// Human-readable detail.
        message: String,
    },
    /// S→C: an [`Message::Open`] was refused (not found, forbidden...).
    /// Every `Open` is answered by exactly one `Opened` or `OpenRefused`.
    OpenRefused {
        /// The name from the `Open`.
        name: String,
        /// Why.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// Both: a piece of one message too large for a single frame. Pieces of
    /// one `id` concatenate (in offset order) to the postcard encoding of
    /// one [`Message`] of `total` bytes.
    Fragment {
        /// Identifies the fragmented message within the connection.
        id: u32,
        /// Byte offset of `data` within the encoded message.
        offset: u64,
        /// Encoded size of the whole message.
        total: u64,
        /// The bytes.
        data: Bytes,
    },
}

impl Message {
    /// A short name of the variant, for logs and transcripts.
    ///
    /// ```
    /// use crdt_socket_sync::wire::Message;
    /// assert_eq!(Message::Ping { t: 1 }.name(), "Ping");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            Message::Update { .. } => "Update",
            Message::UpdateBatch { .. } => "UpdateBatch",
            Message::Broadcast { .. } => "Broadcast",
            Message::Ack { .. } => "Ack",
            Message::Ping { .. } => "Ping",
            Message::Pong { .. } => "Pong",
            Message::Hello { .. } => "Hello",
            Message::Welcome { .. } => "Welcome",
            Message::Reject { .. } => "Reject",
            Message::RefreshToken { .. } => "RefreshToken",
            Message::Open { .. } => "Open",
            Message::Opened { .. } => "Opened",
            Message::SyncChunk { .. } => "SyncChunk",
            Message::SyncDone { .. } => "SyncDone",
            Message::SyncRequest { .. } => "SyncRequest",
            Message::VersionReport { .. } => "VersionReport",
            Message::CloseDoc { .. } => "CloseDoc",
            Message::AwarenessSet { .. } => "AwarenessSet",
            Message::Awareness { .. } => "Awareness",
            Message::App { .. } => "App",
            Message::RelayJoin { .. } => "RelayJoin",
            Message::RelayWelcome { .. } => "RelayWelcome",
            Message::RelayPush { .. } => "RelayPush",
            Message::RelayAck { .. } => "RelayAck",
            Message::RelayChanges { .. } => "RelayChanges",
            Message::RelaySnapshot { .. } => "RelaySnapshot",
            Message::RelayStateRequest { .. } => "RelayStateRequest",
            Message::Error { .. } => "Error",
            Message::Close { .. } => "Close",
            Message::OpenRefused { .. } => "OpenRefused",
            Message::Fragment { .. } => "Fragment",
        }
    }
}
