//! Every size limit of the library, in one place.
//!
//! Peers declare lengths; we check each against these limits *before*
//! allocating, so a hostile or broken peer cannot make us reserve memory.

/// Size limits for frames and messages.
///
/// The defaults suit interactive editing with large initial syncs: a frame is
/// at most 1 MiB on the wire and 4 MiB once inflated, and larger payloads
/// (snapshots, long offline backlogs) travel in several frames.
///
/// One `Limits` serves both sides; each field says who enforces it:
/// *both sides* (a [`ClientSession`](crate::client::ClientSession) and the
/// server's sessions each check what they receive and bound what they
/// queue), *server* (the [`Hub`](crate::server::Hub) and its sessions; a
/// client ignores it) or *client* (a client session; the server ignores
/// it). Only `max_frame_len` and `max_decompressed_len` are announced to
/// the peer ([`Limits::peer_limits`]), which never sends larger frames.
///
/// ```
/// use crdt_socket_sync::Limits;
/// let limits = Limits { max_frame_len: 64 * 1024, ..Limits::default() };
/// assert_eq!(limits.max_messages_per_frame, 1024);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// *Enforced by: both sides.*
    /// Largest frame accepted or produced, in bytes on the wire (header, body
    /// and checksum). Default 1 MiB.
    pub max_frame_len: u32,
    /// *Enforced by: both sides.*
    /// Largest frame body after inflating a compressed frame. Default 4 MiB.
    pub max_decompressed_len: u32,
    /// *Enforced by: both sides.*
    /// Most messages batched in one frame, each element of a list message
    /// (`UpdateBatch`, `RelayPush`) counting as one: checked against the
    /// count a list declares before it is decoded. Default 1024.
    pub max_messages_per_frame: u32,
    /// *Enforced by: both sides.*
    /// Largest single message once reassembled from
    /// [`Fragment`](crate::wire::Message::Fragment)s: what one connection
    /// may hold of a message being reassembled. Default 64 MiB.
    pub max_message_len: u64,
    /// *Enforced by: server.*
    /// Bytes all connections together may hold of fragmented
    /// messages being reassembled (the buffers' capacity). When a fragment
    /// would take more, the connections holding more than its own message
    /// would are closed, largest first, until it fits; if they do not make
    /// room, the fragment's own session is closed instead. Either way with
    /// `LimitExceeded`
    /// ([`InboundError::ReassemblyFull`](crate::InboundError::ReassemblyFull)),
    /// so peers holding the budget cannot close one whose message is smaller.
    /// Deflated fragments inflate up to a thousand times, so this, not the
    /// bytes received, is what bounds the memory fragments can pin.
    /// Default 128 MiB.
    pub max_reassembly_bytes: usize,
    /// *Enforced by: server.*
    /// Largest frame accepted before the handshake completes, on
    /// the wire and once inflated (the smaller of this and
    /// `max_frame_len` / `max_decompressed_len` applies). A `Hello` with a
    /// 512-byte peer id and a few KiB of token fits; a peer without a
    /// token cannot make the server hold more. Default 16 KiB.
    pub max_handshake_frame_len: u32,
    /// *Enforced by: client.*
    /// Largest initial-sync transfer (delta or snapshot) it
    /// accepts, and the most bytes of unfinished transfers it holds for
    /// all its documents together, including those kept across
    /// reconnections to be resumed. A transfer declared larger closes the
    /// connection (`LimitExceeded`). A chunk that would pass the total
    /// drops the other documents' unfinished transfers, largest first: an
    /// honest server sends one transfer at a time, so what is dropped is
    /// one kept for resumption (or a hostile server's). A document whose
    /// transfer was dropped discards the rest of it and, after its
    /// `SyncDone`, asks for what it still lacks; one kept for resumption is
    /// synced afresh on the next connection. Default 1 GiB.
    pub max_transfer_len: u64,
    /// *Enforced by: both sides.*
    /// Bytes a session may hold queued for sending before it refuses more
    /// (client: `Backpressure`; server: the subscriber is treated as slow).
    /// Default 8 MiB.
    pub max_outbound_bytes: usize,
    /// *Enforced by: both sides.*
    /// Messages a session may hold queued for sending. Default 65,536.
    pub max_outbound_messages: usize,
    /// *Enforced by: client.*
    /// Bytes of unacknowledged local updates a client keeps per document
    /// before `flush_local` returns `Backpressure`. Default 64 MiB.
    pub max_outbox_bytes: usize,
    /// *Enforced by: client.*
    /// Unacknowledged local updates a client keeps per document. Default
    /// 100,000.
    pub max_outbox_updates: usize,
    /// *Enforced by: both sides.*
    /// Documents one connection may have open. Default 1,024.
    pub max_docs_per_connection: usize,
    /// *Enforced by: both sides.*
    /// Longest document name, in bytes. Default 512.
    pub max_name_len: usize,
    /// *Enforced by: both sides.*
    /// Bytes of updates a server document may hold waiting for missing
    /// dependencies: a session whose updates push it past this is closed
    /// with `LimitExceeded` (its client re-syncs when it reconnects). A
    /// client holds at most this much of the broadcasts that arrive while
    /// its documents sync (all documents together, each broadcast counted
    /// with 32 bytes of overhead); past it the document concerned drops
    /// them and asks for what it lacks after its sync.
    /// Default 16 MiB.
    pub max_pending_bytes: usize,
    /// *Enforced by: both sides.*
    /// Presence states per document. Default 256.
    pub max_presence_states: usize,
    /// *Enforced by: both sides.*
    /// Bytes of one presence state. Default 4 KiB.
    pub max_presence_len: usize,
    /// *Enforced by: server.*
    /// Presence updates per second per session (bursts up to the same
    /// number). Default 30.
    pub presence_rate: u32,
    /// *Enforced by: both sides.*
    /// Bytes of one application message. Default 64 KiB.
    pub max_app_message_len: usize,
    /// *Enforced by: server.*
    /// Application messages per second per session. Default 100.
    pub app_rate: u32,
    /// *Enforced by: server.*
    /// Sync payloads (deltas or snapshots, for `Open`, `SyncRequest` and
    /// catch-ups) computed per second per session, bursts up to the same
    /// number. Requests past it wait (the last one per document is kept)
    /// until the bucket refills. At least 1 is used. Default 256.
    pub sync_rate: u32,
    /// *Enforced by: server.*
    /// Updates a session may send that its documents refuse as invalid:
    /// past it the session is closed with `ProtocolError` (a client that
    /// keeps sending what the CRDT cannot read is broken or hostile).
    /// Default 64.
    pub max_invalid_updates: u32,
    /// *Enforced by: server.*
    /// Bytes of recent multi-chunk sync payloads a server keeps so cut-off
    /// clients can resume them. Default 64 MiB.
    pub max_transfer_cache_bytes: usize,
    /// *Enforced by: server.*
    /// Registry commits a hub tracks while waiting for the disk
    /// ([`Hub::commit`](crate::server::Hub::commit)): past it, the
    /// acknowledgements of a new commit join those of the newest tracked
    /// one (they become durable when the newer commit does, a little later
    /// but never too early). Default 256.
    pub max_commits_in_flight: usize,
    /// *Enforced by: server.*
    /// Longest client-supplied version it keeps for a document
    /// after the request that carried it, in bytes. A server keeps up to
    /// two such versions per open document (the one a client reported with
    /// `SyncDone`, and the one a sync held back by `sync_rate` is due
    /// from), so one connection pins at most
    /// `max_docs_per_connection × 2 × max_stored_version_len` bytes of them
    /// (8 MiB with the defaults, the order of `max_outbound_bytes`). A
    /// longer `SyncDone` version is not kept: that subscriber then never
    /// lets its document be pruned (nothing is known of what it holds). A
    /// held-back sync from a longer version is served whole, as to a client
    /// that holds nothing.
    /// Default 4 KiB.
    pub max_stored_version_len: usize,
    /// *Enforced by: server.*
    /// Token refreshes (`RefreshToken`) a session may send per
    /// second, bursts up to the same number. Past it the session is closed
    /// with `LimitExceeded`: each refresh costs an authentication and may
    /// authorize every open document again, and a client refreshing that
    /// often is broken or hostile. At least 1 is used. Default 1.
    pub refresh_rate: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_len: 1 << 20,
            max_decompressed_len: 4 << 20,
            max_messages_per_frame: 1024,
            max_message_len: 64 << 20,
            max_reassembly_bytes: 128 << 20,
            max_handshake_frame_len: 16 << 10,
            max_transfer_len: 1 << 30,
            max_outbound_bytes: 8 << 20,
            max_outbound_messages: 65_536,
            max_outbox_bytes: 64 << 20,
            max_outbox_updates: 100_000,
            max_docs_per_connection: 1024,
            max_name_len: 512,
            max_pending_bytes: 16 << 20,
            max_presence_states: 256,
            max_presence_len: 4096,
            presence_rate: 30,
            max_app_message_len: 64 << 10,
            app_rate: 100,
            sync_rate: 256,
            max_invalid_updates: 64,
            max_transfer_cache_bytes: 64 << 20,
            max_commits_in_flight: 256,
            max_stored_version_len: 4 << 10,
            refresh_rate: 1,
        }
    }
}

impl Limits {
    /// The part of these limits announced to the peer in the handshake.
    pub fn peer_limits(&self) -> crate::wire::PeerLimits {
        crate::wire::PeerLimits {
            max_frame_len: self.max_frame_len,
            max_decompressed_len: self.max_decompressed_len,
        }
    }
}
