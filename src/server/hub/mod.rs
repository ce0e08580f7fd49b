//! The hub: many server sessions, the document directory and fan-out.
//!
//! Like quinn-proto's `Endpoint`, the hub owns every [`ServerSession`] and
//! routes between them; it borrows the [`Registry`] for each call that may
//! touch documents. It performs no I/O and reads no clock.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::close::CloseCause;
use crate::document::{ApplyOutcome, Document};
use crate::inbound::{InboundError, ReassemblyBudget};
use crate::outbound::{Common, Priority, encode_broadcast_shared};
use crate::registry::{Commit, CommitId, Registry, RegistryError};
use crate::rng::Rng;
use crate::wire::compress::InflateScratch;
use crate::wire::{
    Access, Bytes, CloseReason, Compression, DocId, ErrorCode, Message, PROTOCOL_VERSIONS,
    RejectCode, Resume, SessionId, SyncKind,
};

use super::marks::Marks;
use super::session::{Phase, ServerSession, Subscription, Transfer};
use super::sessions::Sessions;
use super::transfer_cache::{CachedTransfer, TransferCache};
use crate::awareness::PresenceTable;

mod directory;
mod presence;
#[cfg(test)]
mod timer_tests;
use super::{Authorizer, ConnId, ServerConfig, ServerEvent};
use directory::Directory;
pub(crate) use directory::DocIndex;
pub use presence::{AppHook, AppMessage, AppVerdict};

/// Smallest frame limit a client may announce.
const MIN_PEER_FRAME: u32 = 1024;

/// Spare message buffers the hub keeps for all its sessions' queues (see
/// [`Common`]). A keystroke takes two (the ack to its sender, the update to
/// a single other subscriber) and the drain gives them back; sixteen also
/// cover an adapter that handles several inputs before draining, and hold
/// at most 64 KiB, where one spare per session held up to 4 KiB each.
const SPARE_BUFFERS: usize = 16;

/// Document errors reported to the sender of one input; past it they are
/// counted and reported once, so an input's errors cost a bounded number of
/// frames and events whatever it carries.
const MAX_ERRORS_PER_INPUT: u32 = 8;

/// Bytes of a client's own error report kept in its
/// [`ServerEvent::DocumentError`].
const MAX_PEER_ERROR_TEXT: usize = 256;

/// Shortens `text` to at most `max` bytes, at a character boundary.
fn truncate_at_char(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// Many server sessions sharing documents (CRDT-aware mode).
///
/// Drive it as the crate docs describe: after every call that mutates it,
/// drain [`Hub::poll_transmit`], then [`Hub::poll_event`], then read
/// [`Hub::poll_timeout`].
///
/// ```
/// use std::time::Instant;
/// use crdt_socket_sync::server::{AllowAll, Hub, ServerConfig, ServerEvent};
///
/// let now = Instant::now();
/// let mut hub = Hub::new(ServerConfig::default(), AllowAll);
/// let conn = hub.accept(now);
/// assert!(matches!(hub.poll_event(), Some(ServerEvent::ClientConnected { .. })));
/// // Without a Hello the handshake deadline closes the connection.
/// let deadline = hub.poll_timeout().unwrap();
/// # let mut reg = crdt_socket_sync::registry::MemoryRegistry::new(|_: &str| -> Box<dyn crdt_socket_sync::document::Document> { unreachable!() });
/// hub.handle_timeout(deadline, &mut reg);
/// assert!(hub.poll_transmit().is_some()); // the Close frame
/// assert!(matches!(hub.poll_event(), Some(ServerEvent::ClientDisconnected { .. })));
/// # let _ = conn;
/// ```
pub struct Hub<A> {
    config: ServerConfig,
    auth: A,
    rng: Rng,
    /// Boxed, so a free slot costs a few words rather than a session, and
    /// filed by deadline.
    sessions: Sessions,
    /// The documents open on some connection (or lingering before they
    /// leave); connections name them by their own handles.
    directory: Directory,
    events: VecDeque<ServerEvent>,
    /// Connections with output, and those touched since the last
    /// [`Hub::take_touched`].
    marks: Marks,
    now: Option<Instant>,
    /// Reused buffer for the sessions whose deadline came.
    expired: Vec<ConnId>,
    /// (session, document) pairs whose cumulative ack is due after this
    /// input; a few at a time, so a `Vec`.
    acks_due: Vec<(ConnId, DocId)>,
    /// Reused buffer for the updates of one batch.
    batch: Vec<(u64, Bytes)>,
    transfers: TransferCache,
    next_prune: Option<Instant>,
    presence: PresenceTable,
    app_hook: Option<AppHook>,
    by_session: BTreeMap<SessionId, ConnId>,
    scratch: Vec<Message>,
    outcomes: Vec<ApplyOutcome>,
    /// What the sessions' outbound queues share: their bounds and the
    /// message buffers lent to them (reused by busy sessions, held by no
    /// idle one).
    common: Common,
    /// The inflate state and buffer, lent to the session whose input is
    /// decoded: one for the hub rather than up to ~74 KiB in every session
    /// that once received a compressed frame.
    inflate: InflateScratch,
    /// What the sessions' fragmented messages hold, against
    /// [`Limits::max_reassembly_bytes`](crate::Limits::max_reassembly_bytes).
    reassembly: ReassemblyBudget,
    /// Commits handed to the registry ([`Hub::commit`]) whose `durable`
    /// acknowledgements wait for the disk, oldest first; at most
    /// `Limits::max_commits_in_flight`.
    in_flight: VecDeque<InFlight>,
    /// The connection whose input is being handled, the errors reported
    /// to it so far and those left unreported ([`MAX_ERRORS_PER_INPUT`]).
    input: Option<ConnId>,
    input_errors: u32,
    input_errors_dropped: u32,
    /// Syncs the current input asked for (`Open`, `StatusRequest`), one per
    /// document, the latest version winning: computed once the input is
    /// handled, so repeated requests cost one computation.
    syncs_requested: Vec<(DocId, Vec<u8>)>,
    /// When a sync held back by its session's sync rate may go ahead.
    sync_retry: Option<Instant>,
    /// Documents whose CRDT panicked: never touched again while the hub
    /// runs; opens are refused with [`ErrorCode::Internal`].
    failed: BTreeSet<Arc<str>>,
}

/// The acknowledgements waiting for one registry commit: per (session,
/// document), the highest sequence number it covers.
struct InFlight {
    id: CommitId,
    acks: Vec<(ConnId, DocId, u64)>,
    /// Length of `acks` after its last deduplication.
    distinct: usize,
}

/// What [`Hub::settle_batch`] needs to know about a batch just applied.
struct Settled {
    /// The document's version before the batch, when a subscriber switches
    /// to a catch-up from it.
    pre_version: Option<Vec<u8>>,
    /// The version after the batch, when updates are held for missing
    /// dependencies (sent in an `OutOfSync`).
    server_version: Option<Vec<u8>>,
    /// The batch grew the held bytes past the limit.
    over_pending: bool,
    /// The highest sequence number in the batch.
    last_seq: u64,
}

/// Keeps one entry per (session, document): the highest sequence number.
fn dedup_acks(acks: &mut Vec<(ConnId, DocId, u64)>) {
    acks.sort_unstable_by(|a, b| (a.0, a.1, b.2).cmp(&(b.0, b.1, a.2)));
    acks.dedup_by_key(|a| (a.0, a.1));
}

impl<A: Authorizer> Hub<A> {
    /// A hub with no connections.
    pub fn new(config: ServerConfig, authorizer: A) -> Self {
        let rng = Rng::new(config.seed);
        let presence = PresenceTable::new(
            config.limits.max_presence_states,
            config.limits.max_presence_len,
            config.presence_ttl,
        );
        let max_cache = config.limits.max_transfer_cache_bytes;
        let max_reassembly = config.limits.max_reassembly_bytes;
        let common = Common::new(&config.limits, config.compress_threshold, SPARE_BUFFERS);
        Hub {
            config,
            auth: authorizer,
            rng,
            sessions: Sessions::default(),
            directory: Directory::default(),
            events: VecDeque::new(),
            marks: Marks::default(),
            now: None,
            expired: Vec::new(),
            acks_due: Vec::new(),
            batch: Vec::new(),
            transfers: TransferCache::new(max_cache),
            next_prune: None,
            presence,
            app_hook: None,
            by_session: BTreeMap::new(),
            scratch: Vec::new(),
            outcomes: Vec::new(),
            common,
            inflate: InflateScratch::default(),
            reassembly: ReassemblyBudget::new(max_reassembly),
            in_flight: VecDeque::new(),
            input: None,
            input_errors: 0,
            input_errors_dropped: 0,
            syncs_requested: Vec::new(),
            sync_retry: None,
            failed: BTreeSet::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The authorizer (e.g. to change its rules).
    pub fn authorizer_mut(&mut self) -> &mut A {
        &mut self.auth
    }

    /// A session, for inspection.
    pub fn session(&self, conn: ConnId) -> Option<&ServerSession> {
        self.sessions.get(&conn)
    }

    /// Every session held (closed ones not yet removed included), for
    /// inspection, in a deterministic order.
    pub fn sessions(&self) -> impl Iterator<Item = &ServerSession> {
        self.sessions
            .keys()
            .filter_map(|conn| self.sessions.get(&conn))
    }

    /// Connections currently held (including closed ones not yet removed).
    pub fn connections(&self) -> usize {
        self.sessions.len()
    }

    /// Sessions subscribed to document `name`.
    pub fn subscribers(&self, name: &str) -> usize {
        self.directory
            .index(name)
            .and_then(|i| self.directory.get(i))
            .map_or(0, |e| e.subscribers.len())
    }

    /// Documents in the hub's directory: those some connection has open,
    /// and those closed less than
    /// [`ServerConfig::unload_after`] ago. Each stays loaded in the
    /// registry while it is listed here; once it leaves, the registry is
    /// told to unload it ([`Registry::unload`]).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use crdt_socket_sync::server::{AllowAll, Hub, ServerConfig};
    /// let config = ServerConfig { unload_after: Some(Duration::ZERO), ..ServerConfig::default() };
    /// let hub = Hub::new(config, AllowAll);
    /// assert_eq!(hub.documents(), 0);
    /// ```
    pub fn documents(&self) -> usize {
        self.directory.len()
    }

    /// Heap bytes held by the inflate scratch lent to the sessions.
    #[cfg(test)]
    pub(crate) fn inflate_held(&self) -> usize {
        self.inflate.held()
    }

    /// Bytes held by fragmented messages being reassembled, over every
    /// session: at most
    /// [`Limits::max_reassembly_bytes`](crate::Limits::max_reassembly_bytes).
    pub fn reassembly_bytes(&self) -> usize {
        self.reassembly.held()
    }

    /// Bytes held by the cache of resumable sync transfers.
    pub fn transfer_cache_bytes(&self) -> usize {
        self.transfers.bytes()
    }

    /// The name of the document connection `conn` has open under handle
    /// `doc` (handles are per connection).
    pub fn doc_name(&self, conn: ConnId, doc: DocId) -> Option<&Arc<str>> {
        let index = self.sessions.get(&conn)?.docs.get(&doc)?.index;
        self.directory.name(index)
    }

    /// The directory index of the document `conn` has open under `doc`.
    fn index_of(&self, conn: ConnId, doc: DocId) -> Option<DocIndex> {
        Some(self.sessions.get(&conn)?.docs.get(&doc)?.index)
    }

    fn clock(&mut self, now: Instant) -> Instant {
        let now = match self.now {
            Some(prev) if prev > now => prev,
            _ => now,
        };
        if self.now.is_none()
            && let Some(every) = self.config.prune_interval
        {
            self.next_prune = now.checked_add(every);
        }
        self.now = Some(now);
        now
    }

    /// Registers a new transport; the client must send `Hello` before the
    /// handshake timeout.
    ///
    /// # Panics
    ///
    /// When 2^32 - 1 connections are held at once (the transports cap them
    /// far below: `ServerOptions::max_connections`).
    pub fn accept(&mut self, now: Instant) -> ConnId {
        let now = self.clock(now);
        let config = &self.config;
        let conn = self
            .sessions
            .insert(
                |conn| Box::new(ServerSession::new(conn, config, now)),
                |s| s.next_timeout(config),
            )
            .expect("fewer than 2^32 - 1 connections at once");
        self.events.push_back(ServerEvent::ClientConnected { conn });
        if let Some(s) = self.sessions.get_mut(&conn) {
            self.marks.touch(s);
        }
        conn
    }

    /// Moves into `out` the connections whose queued output, closed state or
    /// [`Hub::wants_input`] may have changed since the last call, so an
    /// adapter with thousands of connections visits only those after each
    /// batch of input. Each connection is listed once, in the order it was
    /// first touched.
    pub fn take_touched(&mut self, out: &mut Vec<ConnId>) {
        self.marks.take_touched(&mut self.sessions, out);
    }

    /// Whether `conn` can take more input: `false` while its outbound queue
    /// is over half its limit (stop reading its socket until a drain), or
    /// once it is closed.
    pub fn wants_input(&self, conn: ConnId) -> bool {
        self.sessions.get(&conn).is_some_and(|s| {
            !s.is_closed() && s.outbound.bytes() <= self.config.limits.max_outbound_bytes / 2
        })
    }

    /// Whether `conn` is closed (its remaining transmits still drain).
    pub fn is_closed(&self, conn: ConnId) -> bool {
        self.sessions.get(&conn).is_none_or(|s| s.is_closed())
    }

    /// Bytes received from `conn`. Updates it carries are applied, fanned
    /// out and acknowledged; a durable registry commits them first
    /// ([`Registry::flush`], waiting for the disk) so the ack can say
    /// `durable`.
    pub fn handle_input<R>(&mut self, conn: ConnId, now: Instant, bytes: &[u8], registry: &mut R)
    where
        R: Registry,
    {
        self.handle_input_deferred(conn, now, bytes, registry);
        self.flush(registry);
    }

    /// Like [`Hub::handle_input`] but leaves the acknowledgements (and the
    /// registry commit before them) to the next [`Hub::flush`] or
    /// [`Hub::commit`]. An adapter that drains several inputs at once and
    /// then flushes gets one storage commit for all of them (group commit).
    pub fn handle_input_deferred<R>(
        &mut self,
        conn: ConnId,
        now: Instant,
        bytes: &[u8],
        registry: &mut R,
    ) where
        R: Registry,
    {
        self.input(conn, now, bytes, registry);
        // The handshake's end or a partial frame may have moved the
        // deadline earlier; a document closed (its transfer cancelled) may
        // have let a catch-up through.
        self.reschedule(conn);
        if let Some(s) = self.sessions.get(&conn) {
            self.marks
                .drained(s, self.config.limits.max_outbound_bytes / 4);
        }
    }

    fn input<R: Registry>(&mut self, conn: ConnId, now: Instant, bytes: &[u8], registry: &mut R) {
        let now = self.clock(now);
        if self.sessions.get(&conn).is_none_or(|s| s.is_closed()) {
            return;
        }
        self.input = Some(conn);
        self.input_errors = 0;
        self.input_errors_dropped = 0;
        self.syncs_requested.clear();
        self.handle_frames(conn, now, bytes, registry);
        // Documents closed past the lingering allowance leave at once.
        self.unload_idle(now, registry);
        self.run_requested_syncs(conn, registry);
        self.input = None;
        if self.input_errors_dropped > 0 {
            let n = self.input_errors_dropped;
            let message = format!("{n} more errors caused by one input were not reported");
            self.doc_error(conn, None, None, ErrorCode::LimitExceeded, message);
        }
    }

    /// Decodes and handles one input of `conn`, an open session.
    fn handle_frames<R: Registry>(
        &mut self,
        conn: ConnId,
        now: Instant,
        bytes: &[u8],
        registry: &mut R,
    ) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        // The hot path: a frame holding one update, applied and forwarded
        // straight from `bytes` (no message built, nothing allocated).
        if session.phase == Phase::Active
            && let Some((doc, seq, data)) = session.feed_single_update(bytes, &self.config.limits)
        {
            session.received_at(now);
            return self.apply_one(conn, doc, seq, data, registry);
        }
        let mut msgs = std::mem::take(&mut self.scratch);
        msgs.clear();
        // Restarts the idle deadline only if a whole valid frame came.
        let fed = session.feed(
            bytes,
            now,
            &self.config.limits,
            &self.reassembly,
            &mut self.inflate,
            &mut msgs,
        );
        // Connections whose partial messages were larger than the one that
        // needed their room: closed before anything else runs, which
        // releases their buffers.
        for victim in self.reassembly.take_revoked() {
            let limit = self.config.limits.max_reassembly_bytes;
            let cause = CloseCause::Inbound(InboundError::ReassemblyFull { limit });
            self.fail(ConnId(victim), CloseReason::LimitExceeded, cause);
        }
        // Messages decoded before a bad frame are still processed: they were
        // valid and checksummed.
        self.dispatch(conn, &mut msgs, registry);
        if let Err(e) = fed {
            let reason = match e {
                InboundError::ReassemblyFull { .. } => CloseReason::LimitExceeded,
                _ => CloseReason::ProtocolError,
            };
            self.fail(conn, reason, CloseCause::Inbound(e));
        }
        self.scratch = msgs;
    }

    /// Commits what the registry holds uncommitted ([`Registry::flush`],
    /// waiting for the disk) and queues one cumulative `Ack` per (session,
    /// document) that received updates since the last flush, `durable` when
    /// the commit succeeded. Acknowledgements still waiting for an earlier
    /// [`Hub::commit`] are settled too (the flush put them on disk).
    pub fn flush<R: Registry>(&mut self, registry: &mut R) {
        self.finish_acks(registry, true);
    }

    /// Like [`Hub::flush`] without waiting for the disk: hands the writes to
    /// the registry's committer ([`Registry::commit`]) and queues the `Ack`s
    /// with `applied` at once, so clients can go on sending. Each
    /// (session, document) gets a second `Ack` with `durable` advanced when
    /// [`Hub::poll_commits`] learns the commit is on disk; a failed commit
    /// gets its sessions a [`ErrorCode::Storage`] error instead (and a
    /// [`ServerEvent::StorageError`]), and no `durable` ack covers its
    /// updates unless a later commit that succeeds wrote them again.
    ///
    /// With a registry that commits synchronously (the default
    /// [`Registry::commit`]), this is [`Hub::flush`].
    ///
    /// ```
    /// use std::time::Instant;
    /// use crdt_socket_sync::registry::MemoryRegistry;
    /// use crdt_socket_sync::server::{AllowAll, Hub, ServerConfig};
    /// # use crdt_socket_sync::testing::OpLog;
    /// let mut hub = Hub::new(ServerConfig::default(), AllowAll);
    /// let mut reg = MemoryRegistry::new(|_: &str| OpLog::new(0));
    /// let conn = hub.accept(Instant::now());
    /// # let bytes: &[u8] = &[];
    /// // The server loop: a batch of inputs, one commit, then the outputs.
    /// hub.handle_input_deferred(conn, Instant::now(), bytes, &mut reg);
    /// hub.commit(&mut reg);
    /// // ...and whenever the registry's commit waker fires (or every loop):
    /// hub.poll_commits(&mut reg);
    /// # while hub.poll_transmit().is_some() {}
    /// ```
    pub fn commit<R: Registry>(&mut self, registry: &mut R) {
        self.finish_acks(registry, false);
    }

    /// Takes the commits the registry completed ([`Registry::poll_commit`])
    /// and queues what they allow: an `Ack` with `durable` advanced for
    /// every (session, document) whose updates are now on disk, or an
    /// [`ErrorCode::Storage`] error (and one [`ServerEvent::StorageError`])
    /// for those whose commit failed. Cheap when nothing completed: call it
    /// when the registry's commit waker fires, or once per loop.
    pub fn poll_commits<R: Registry>(&mut self, registry: &mut R) {
        while let Some(done) = registry.poll_commit() {
            match done.result {
                Ok(()) => {
                    let advanced = self.settle(Some(done.through));
                    for (conn, doc) in advanced {
                        self.send_ack(conn, doc);
                    }
                }
                Err(e) => self.commit_failed(done.through, &e),
            }
        }
    }

    /// Commits whose `durable` acknowledgements are still waiting for the
    /// registry.
    pub fn commits_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Fires expired deadlines (handshake and idle timeouts, documents
    /// leaving). Calling it early or twice does nothing.
    pub fn handle_timeout<R: Registry>(&mut self, now: Instant, registry: &mut R) {
        let now = self.clock(now);
        self.unload_idle(now, registry);
        if self.sync_retry.is_some_and(|t| now >= t) {
            self.sync_retry = None;
            self.marks.retry_held();
        }
        self.run_catch_ups(registry);
        self.expire_presence(now);
        if self.next_prune.is_some_and(|t| now >= t) {
            self.next_prune = self
                .config
                .prune_interval
                .and_then(|every| now.checked_add(every));
            self.prune(registry);
        }
        // Only the sessions filed under an instant that came; in id order,
        // the order their closes are reported in.
        let mut expired = std::mem::take(&mut self.expired);
        self.sessions.take_expired(now, &mut expired);
        expired.sort_unstable();
        let mut closed = Vec::new();
        for &conn in &expired {
            if let Some(s) = self.sessions.get_mut(&conn)
                && let Some(cause) = s.on_timeout(&self.config, now, &mut self.common)
            {
                closed.push((conn, cause));
            }
        }
        for (conn, cause) in closed {
            self.after_close(conn, cause);
        }
        for conn in expired.drain(..) {
            self.reschedule(conn);
        }
        self.expired = expired;
    }

    /// The earliest deadline of any session, if any. It is "now" while a
    /// lagging subscriber's queue has drained and its catch-up is due.
    /// Costs a few lookups, whatever the number of connections: callers may
    /// ask after every input.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if let Some(now) = self.now
            && self.marks.catch_up_due()
        {
            return Some(now);
        }
        self.sessions
            .next_deadline()
            .into_iter()
            .chain(self.next_prune)
            .chain(self.sync_retry)
            .chain(self.presence.next_expiry())
            .chain(self.directory.next_unload())
            .min()
    }

    /// Files `conn` under its session's next deadline when that is earlier
    /// than the instant it is filed under. Whatever can move a session's
    /// deadline earlier calls it (input, the end of the handshake); moves
    /// later need nothing (see [`Sessions`]).
    fn reschedule(&mut self, conn: ConnId) {
        let at = self
            .sessions
            .get(&conn)
            .and_then(|s| s.next_timeout(&self.config));
        self.sessions.schedule(conn, at);
    }

    /// The next frame to send, with its connection.
    pub fn poll_transmit(&mut self) -> Option<(ConnId, Vec<u8>)> {
        let mut frame = Vec::new();
        let conn = self.poll_transmit_into(&mut frame)?;
        Some((conn, frame))
    }

    /// Like [`Hub::poll_transmit`], but appends the frame to `buf` (which
    /// may already hold frames) and returns its connection: a caller that
    /// reuses `buf` (writes it out, clears it) sends without allocating, as
    /// quinn's `poll_transmit` does.
    ///
    /// ```
    /// use std::time::Instant;
    /// use crdt_socket_sync::registry::MemoryRegistry;
    /// use crdt_socket_sync::server::{AllowAll, Hub, ServerConfig};
    /// use crdt_socket_sync::testing::OpLog;
    ///
    /// let mut hub = Hub::new(ServerConfig::default(), AllowAll);
    /// let mut registry = MemoryRegistry::new(|_: &str| OpLog::default());
    /// let now = Instant::now();
    /// let conn = hub.accept(now);
    /// hub.handle_input(conn, now, b"not a frame", &mut registry);
    /// let mut buf = Vec::new();
    /// // The session failed: its Close frame is waiting.
    /// assert_eq!(hub.poll_transmit_into(&mut buf), Some(conn));
    /// assert!(!buf.is_empty());
    /// buf.clear(); // after writing it to the socket
    /// assert_eq!(hub.poll_transmit_into(&mut buf), None);
    /// ```
    pub fn poll_transmit_into(&mut self, buf: &mut Vec<u8>) -> Option<ConnId> {
        loop {
            let conn = self.marks.first_ready(&mut self.sessions)?;
            let s = self.sessions.get_mut(&conn)?;
            if s.poll_frame_into(buf, &mut self.common) {
                self.marks.sent_from_first(s);
                self.marks
                    .drained(s, self.config.limits.max_outbound_bytes / 4);
                return Some(conn);
            }
        }
    }

    /// Like [`Hub::poll_transmit_for`], appending the frame to `buf`;
    /// `false` when `conn` has nothing to send.
    pub fn poll_transmit_for_into(&mut self, conn: ConnId, buf: &mut Vec<u8>) -> bool {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return false;
        };
        let sent = s.poll_frame_into(buf, &mut self.common);
        self.marks
            .drained(s, self.config.limits.max_outbound_bytes / 4);
        sent
    }

    /// The next frame to send on `conn` (for adapters with a task per
    /// connection).
    pub fn poll_transmit_for(&mut self, conn: ConnId) -> Option<Vec<u8>> {
        // An emptied session stays listed as ready until `poll_transmit`
        // reaches it: unlisting here would cost a search.
        let s = self.sessions.get_mut(&conn)?;
        let frame = s.poll_frame(&mut self.common);
        self.marks
            .drained(s, self.config.limits.max_outbound_bytes / 4);
        frame
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Everything in one call: a transmit, else an event, else the next
    /// timeout (`None`: nothing to do until input).
    pub fn poll_output(&mut self) -> Option<crate::Output<(ConnId, Vec<u8>), ServerEvent>> {
        if let Some(t) = self.poll_transmit() {
            return Some(crate::Output::Transmit(t));
        }
        if let Some(e) = self.poll_event() {
            return Some(crate::Output::Event(e));
        }
        self.poll_timeout().map(crate::Output::Timeout)
    }

    /// Closes `conn` with `reason`, queueing a `Close` frame for it.
    pub fn close(&mut self, conn: ConnId, now: Instant, reason: CloseReason) {
        self.clock(now);
        self.fail(conn, reason, CloseCause::Local(reason));
    }

    /// Closes every session with [`CloseReason::ServerShutdown`].
    pub fn shutdown(&mut self, now: Instant) {
        self.clock(now);
        let conns: Vec<ConnId> = self.sessions.keys().collect();
        for conn in conns {
            self.fail(
                conn,
                CloseReason::ServerShutdown,
                CloseCause::Local(CloseReason::ServerShutdown),
            );
        }
    }

    /// The transport of `conn` is gone: forget the session. Reports
    /// `ClientDisconnected` unless the session had already closed.
    pub fn connection_lost(&mut self, conn: ConnId, now: Instant) {
        self.clock(now);
        if let Some(s) = self.sessions.get_mut(&conn)
            && s.phase != Phase::Closed
        {
            s.phase = Phase::Closed;
            self.after_close(conn, CloseCause::TransportLost);
        }
        if let Some(s) = self.sessions.remove(&conn) {
            self.marks.forget(&s);
        }
    }

    // ---- internals ----

    fn mark_ready(&mut self, conn: ConnId) {
        if let Some(s) = self.sessions.get_mut(&conn)
            && s.has_output()
        {
            self.marks.ready(s);
        }
    }

    /// Queues a reply `conn` may not miss. Its queue is bounded like data:
    /// a peer that sends requests and does not read the answers is closed
    /// as a slow consumer when the next would pass its limit.
    fn send(&mut self, conn: ConnId, msg: &Message) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        if s.send(msg, &mut self.common).is_ok() {
            self.marks.ready(s);
        } else {
            self.slow_consumer(conn);
        }
    }

    /// Queues `msg` for `conn` if its queue is below its high-water mark;
    /// `false` when it was dropped (presence, application messages).
    fn send_ephemeral(&mut self, conn: ConnId, msg: &Message) -> bool {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return false;
        };
        if s.is_closed() {
            return false;
        }
        let queued = s
            .outbound
            .push(msg, Priority::Ephemeral, &mut self.common)
            .is_ok();
        if queued {
            self.marks.ready(s);
        }
        queued
    }

    /// Closes `conn`, whose queue cannot take what it may not miss.
    fn slow_consumer(&mut self, conn: ConnId) {
        self.fail(
            conn,
            CloseReason::SlowConsumer,
            CloseCause::Local(CloseReason::SlowConsumer),
        );
    }

    /// Closes `conn` (queueing `Close` with `reason`) and reports `cause`.
    fn fail(&mut self, conn: ConnId, reason: CloseReason, cause: CloseCause) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        let message = cause.to_string();
        if s.close(reason, &message, &mut self.common) {
            self.after_close(conn, cause);
        }
    }

    fn after_close(&mut self, conn: ConnId, cause: CloseCause) {
        if let Some(s) = self.sessions.get_mut(&conn) {
            self.marks.touch(s);
        }
        let docs: Vec<DocId> = self
            .sessions
            .get(&conn)
            .map(|s| s.docs.keys().collect())
            .unwrap_or_default();
        for doc in docs {
            self.unsubscribe(conn, doc);
        }
        if let Some(s) = self.sessions.get(&conn) {
            let session = s.session;
            if self.by_session.get(&session) == Some(&conn) {
                self.by_session.remove(&session);
            }
        }
        self.mark_ready(conn);
        self.events
            .push_back(ServerEvent::ClientDisconnected { conn, cause });
    }

    fn doc_error(
        &mut self,
        conn: ConnId,
        doc: Option<DocId>,
        seq: Option<u64>,
        code: ErrorCode,
        message: String,
    ) {
        if self.input == Some(conn) {
            if self.input_errors >= MAX_ERRORS_PER_INPUT {
                self.input_errors_dropped += 1;
                return;
            }
            self.input_errors += 1;
        }
        self.send(
            conn,
            &Message::Error {
                doc,
                seq,
                code,
                message: message.clone(),
            },
        );
        let name = doc.and_then(|d| self.doc_name(conn, d).cloned());
        self.events.push_back(ServerEvent::DocumentError {
            conn,
            name,
            seq,
            code,
            message,
        });
    }

    fn dispatch<R: Registry>(&mut self, conn: ConnId, msgs: &mut Vec<Message>, registry: &mut R) {
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        let mut batch_doc = DocId(0);
        for msg in msgs.drain(..) {
            if self.is_closed(conn) {
                break;
            }
            let handshaken = matches!(
                self.sessions.get(&conn).map(|s| s.phase),
                Some(Phase::Active)
            );
            if !handshaken {
                if !batch.is_empty() {
                    break;
                }
                match msg {
                    Message::Hello {
                        versions,
                        peer,
                        token,
                        compression,
                        limits,
                    } => self.on_hello(conn, &versions, peer, &token, &compression, limits),
                    Message::Close { reason, message } => self.on_peer_close(conn, reason, message),
                    other => self.fail(
                        conn,
                        CloseReason::ProtocolError,
                        CloseCause::Protocol(format!("{} before the handshake", other.name())),
                    ),
                }
                continue;
            }
            // Consecutive updates for one document are applied in one batch.
            match msg {
                Message::Update { doc, seq, data } => {
                    if !batch.is_empty() && batch_doc != doc {
                        self.apply_updates(conn, batch_doc, &mut batch, registry);
                    }
                    batch_doc = doc;
                    batch.push((seq, data));
                    continue;
                }
                Message::UpdateBatch {
                    doc,
                    first_seq,
                    data,
                } => {
                    if !batch.is_empty() && batch_doc != doc {
                        self.apply_updates(conn, batch_doc, &mut batch, registry);
                    }
                    batch_doc = doc;
                    for (i, d) in data.into_iter().enumerate() {
                        batch.push((first_seq.saturating_add(i as u64), d));
                    }
                    continue;
                }
                other => {
                    if !batch.is_empty() {
                        self.apply_updates(conn, batch_doc, &mut batch, registry);
                    }
                    self.on_message(conn, other, registry);
                }
            }
        }
        if !batch.is_empty() && !self.is_closed(conn) {
            self.apply_updates(conn, batch_doc, &mut batch, registry);
        }
        self.batch = batch;
    }

    fn on_peer_close(&mut self, conn: ConnId, reason: CloseReason, message: String) {
        if let Some(s) = self.sessions.get_mut(&conn)
            && s.phase != Phase::Closed
        {
            s.phase = Phase::Closed;
            s.transfers.clear();
            self.after_close(conn, CloseCause::Peer { reason, message });
        }
    }

    fn reject(&mut self, conn: ConnId, code: RejectCode, message: String) {
        self.send(
            conn,
            &Message::Reject {
                code,
                message: message.clone(),
            },
        );
        self.events.push_back(ServerEvent::HandshakeRejected {
            conn,
            code,
            message: message.clone(),
        });
        self.fail(
            conn,
            CloseReason::Rejected,
            CloseCause::Rejected { code, message },
        );
    }

    fn on_hello(
        &mut self,
        conn: ConnId,
        versions: &[u16],
        peer: String,
        token: &Bytes,
        offered: &[Compression],
        limits: crate::wire::PeerLimits,
    ) {
        let Some(version) = PROTOCOL_VERSIONS
            .iter()
            .rev()
            .find(|v| versions.contains(v))
            .copied()
        else {
            // At most a few of the peer's versions in the text (it is
            // logged and sent back).
            let shown = &versions[..versions.len().min(8)];
            let msg = format!("client speaks {shown:?}, server speaks {PROTOCOL_VERSIONS:?}");
            return self.reject(conn, RejectCode::UnsupportedVersion, msg);
        };
        if peer.len() > self.config.limits.max_name_len {
            return self.reject(conn, RejectCode::BadHello, "peer id too long".into());
        }
        if limits.max_frame_len < MIN_PEER_FRAME {
            let msg = format!("max_frame_len below {MIN_PEER_FRAME}");
            return self.reject(conn, RejectCode::BadHello, msg);
        }
        let identity = match self.auth.authenticate(&peer, token) {
            Ok(id) => id,
            Err(why) => return self.reject(conn, RejectCode::Unauthorized, why),
        };
        let compression = if self.config.compression == Compression::Deflate
            && offered.contains(&Compression::Deflate)
        {
            Compression::Deflate
        } else {
            Compression::None
        };
        let session = self.new_session_id();
        let heartbeat_ms = u32::try_from(self.config.heartbeat.as_millis()).unwrap_or(u32::MAX);
        let server_limits = self.config.limits.peer_limits();
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        s.phase = Phase::Active;
        s.session = session;
        s.identity = Some(identity.clone());
        s.peer = peer;
        // The client offered the compression it accepts, so even the frame
        // carrying the Welcome may use it.
        s.outbound.negotiate(limits, compression);
        self.by_session.insert(session, conn);
        let welcome = Message::Welcome {
            version,
            session,
            compression,
            limits: server_limits,
            heartbeat_ms,
        };
        self.send(conn, &welcome);
        self.events.push_back(ServerEvent::HandshakeCompleted {
            conn,
            session,
            identity,
        });
    }

    /// A session id no live session has, never zero (the id of a session
    /// before its handshake): random, from the seeded generator, so ids
    /// tell nothing about other sessions or how many there were.
    fn new_session_id(&mut self) -> SessionId {
        loop {
            let id = SessionId(self.rng.next_u64());
            // The generator's outputs do not repeat within 2^64 draws
            // (SplitMix64 is a bijection of a counter), so this skips at
            // most the live ids.
            if id.0 != 0 && !self.by_session.contains_key(&id) {
                return id;
            }
        }
    }

    fn on_message<R: Registry>(&mut self, conn: ConnId, msg: Message, registry: &mut R) {
        match msg {
            Message::Open {
                name,
                version,
                resume,
            } => self.on_open(conn, name, &version, resume, registry),
            Message::SyncDone { doc, version } => {
                let max = self.config.limits.max_stored_version_len;
                let Some(sub) = self.sub_mut(conn, doc) else {
                    return self.unknown_doc(conn, doc);
                };
                let first = !sub.synced;
                sub.synced = true;
                // A version too long to keep is dropped: with none known,
                // this subscriber keeps the document from being pruned.
                sub.client_version = (version.0.len() <= max).then(|| version.0.into_boxed_slice());
                if first && let Some(name) = self.doc_name(conn, doc).cloned() {
                    self.events
                        .push_back(ServerEvent::DocumentSynced { conn, name });
                }
            }
            Message::StatusRequest { doc, version } => {
                if self.sub_mut(conn, doc).is_none() {
                    return self.unknown_doc(conn, doc);
                }
                self.request_sync(conn, doc, version.0);
            }
            Message::CloseDoc { doc } => self.unsubscribe(conn, doc),
            Message::RefreshToken { token } => self.on_refresh(conn, &token),
            Message::Ping { t } => self.send(conn, &Message::Pong { echo: t }),
            Message::Pong { .. } => {}
            Message::Close { reason, message } => self.on_peer_close(conn, reason, message),
            Message::Error {
                code, mut message, ..
            } => {
                // A client-side error report; nothing to undo here. It
                // counts against the same per-input cap as the server's
                // own errors, and keeps only the start of its text.
                if self.input == Some(conn) {
                    if self.input_errors >= MAX_ERRORS_PER_INPUT {
                        self.input_errors_dropped += 1;
                        return;
                    }
                    self.input_errors += 1;
                }
                truncate_at_char(&mut message, MAX_PEER_ERROR_TEXT);
                self.events.push_back(ServerEvent::DocumentError {
                    conn,
                    name: None,
                    seq: None,
                    code,
                    message,
                });
            }
            Message::AwarenessSet { doc, clock, state } => {
                self.on_presence(conn, doc, clock, state)
            }
            Message::App {
                kind, route, data, ..
            } => self.on_app(conn, kind, route, data),
            Message::RelayJoin { .. }
            | Message::RelayPush { .. }
            | Message::RelaySnapshot { .. }
            | Message::RelayStateRequest { .. } => {
                let what = msg.name();
                self.doc_error(
                    conn,
                    None,
                    None,
                    ErrorCode::UnexpectedMessage,
                    format!("{what} is not supported by this server"),
                )
            }
            other => self.fail(
                conn,
                CloseReason::ProtocolError,
                CloseCause::Protocol(format!("{} is not a client message", other.name())),
            ),
        }
    }

    fn sub_mut(&mut self, conn: ConnId, doc: DocId) -> Option<&mut Subscription> {
        self.sessions.get_mut(&conn)?.docs.get_mut(&doc)
    }

    fn unknown_doc(&mut self, conn: ConnId, doc: DocId) {
        self.doc_error(
            conn,
            Some(doc),
            None,
            ErrorCode::UnknownDocument,
            format!("document handle {} is not open", doc.0),
        );
    }

    fn on_open<R: Registry>(
        &mut self,
        conn: ConnId,
        name: String,
        version: &Bytes,
        resume: Option<Resume>,
        registry: &mut R,
    ) {
        // Documents closed past the lingering allowance leave before
        // another loads, so one input cannot pile them up.
        if let Some(now) = self.now {
            self.unload_idle(now, registry);
        }
        let limits = self.config.limits;
        if name.is_empty() || name.len() > limits.max_name_len {
            let msg = format!("document name must be 1..={} bytes", limits.max_name_len);
            return self.refuse_open(conn, name, ErrorCode::LimitExceeded, msg);
        }
        let Some(s) = self.sessions.get(&conn) else {
            return;
        };
        // Opening a document again keeps its handle (and starts over).
        let already = self
            .directory
            .index(&name)
            .and_then(|i| s.docs.handle_of(i));
        if already.is_none() && s.docs.len() >= limits.max_docs_per_connection {
            let msg = format!(
                "at most {} documents per connection",
                limits.max_docs_per_connection
            );
            return self.refuse_open(conn, name, ErrorCode::LimitExceeded, msg);
        }
        let Some(identity) = s.identity.clone() else {
            return;
        };
        let Some(access) = self.auth.authorize(&identity, &name) else {
            let msg = format!("{} may not open {name:?}", identity.name());
            return self.refuse_open(conn, name, ErrorCode::Forbidden, msg);
        };
        if self.failed.contains(name.as_str()) {
            let msg = format!("document {name:?} failed and is unavailable");
            return self.refuse_open(conn, name, ErrorCode::Internal, msg);
        }
        // A CRDT that panics while loading fails this open only.
        let opened = catch_unwind(AssertUnwindSafe(|| registry.open(&name).map(|_| ())));
        let Ok(opened) = opened else {
            let msg = format!("document {name:?} failed to load");
            self.failed.insert(name.as_str().into());
            return self.refuse_open(conn, name, ErrorCode::Internal, msg);
        };
        if let Err(e) = opened {
            let code = match e {
                RegistryError::NotFound(_) => ErrorCode::DocumentNotFound,
                RegistryError::InvalidName(_) => ErrorCode::LimitExceeded,
                RegistryError::Storage(_) => ErrorCode::Storage,
                _ => ErrorCode::Internal,
            };
            let msg = e.to_string();
            return self.refuse_open(conn, name, code, msg);
        }
        let index = self.directory.insert(&name);
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        let sub = Subscription::new(index, access);
        let doc = match already {
            Some(doc) => {
                s.docs.replace(doc, sub);
                doc
            }
            None => s.docs.open(sub),
        };
        self.directory.subscribe(index, conn, doc);
        let name = self
            .directory
            .name(index)
            .map_or_else(|| name.into(), Arc::clone);
        self.send(
            conn,
            &Message::Opened {
                name: name.to_string(),
                doc,
                access,
            },
        );
        self.events.push_back(ServerEvent::DocumentOpened {
            conn,
            name: Arc::clone(&name),
            access,
        });
        self.send_presence_snapshot(conn, doc);
        // Resume an interrupted transfer from the client's last complete
        // chunk, then catch up with what changed since it was computed.
        if let Some(r) = resume
            && let Some(cached) = self.transfers.get(r.transfer)
            && cached.doc == index.key()
            && r.offset <= cached.payload.len() as u64
        {
            let cached = cached.clone();
            if let Some(s) = self.sessions.get_mut(&conn) {
                s.transfers.cancel(doc);
                s.transfers.push_back(Transfer {
                    doc,
                    id: r.transfer,
                    kind: cached.kind,
                    payload: cached.payload,
                    offset: r.offset as usize,
                    version: cached.version.clone(),
                });
            }
            self.events.push_back(ServerEvent::TransferResumed {
                conn,
                name,
                offset: r.offset,
            });
            // After the resumed transfer: computed once it was sent.
            return self.note_sync(doc, cached.version);
        }
        self.request_sync(conn, doc, version.0.clone());
    }

    fn refuse_open(&mut self, conn: ConnId, name: String, code: ErrorCode, message: String) {
        self.send(
            conn,
            &Message::OpenRefused {
                name: name.clone(),
                code,
                message: message.clone(),
            },
        );
        self.events.push_back(ServerEvent::DocumentError {
            conn,
            name: Some(name.into()),
            seq: None,
            code,
            message,
        });
    }

    /// The registry's document behind handle `doc`, with its name; reports
    /// an internal error to `conn` when the registry lost it.
    fn loaded<'r, R: Registry>(
        &mut self,
        conn: ConnId,
        doc: DocId,
        seq: Option<u64>,
        registry: &'r mut R,
    ) -> Option<(Arc<str>, &'r mut R::Doc)> {
        let name = self.doc_name(conn, doc).cloned()?;
        match registry.get(&name) {
            Some(d) => Some((name, d)),
            None => {
                let msg = "document not loaded".to_string();
                self.doc_error(conn, Some(doc), seq, ErrorCode::Internal, msg);
                None
            }
        }
    }

    /// `conn` asks for what it lacks of `doc` since `version` (`Open`,
    /// `StatusRequest`): the transfer in progress for `doc` is dropped, and
    /// the sync is computed once the current input is handled
    /// ([`Hub::run_requested_syncs`]). Requests for one document within
    /// one input replace each other: the last one is computed, once.
    fn request_sync(&mut self, conn: ConnId, doc: DocId, version: Vec<u8>) {
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.transfers.cancel(doc);
        }
        self.note_sync(doc, version);
    }

    /// Records that the current input asked for a sync of `doc` from
    /// `version`, replacing an earlier request for `doc`.
    fn note_sync(&mut self, doc: DocId, version: Vec<u8>) {
        match self.syncs_requested.iter_mut().find(|(d, _)| *d == doc) {
            Some(due) => due.1 = version,
            None => self.syncs_requested.push((doc, version)),
        }
    }

    /// Starts the syncs the input of `conn` asked for, in order: each is
    /// computed now if the session may take it ([`Hub::sync_gate`]), else
    /// it waits as the subscription's due catch-up ([`Hub::run_catch_ups`]).
    fn run_requested_syncs<R: Registry>(&mut self, conn: ConnId, registry: &mut R) {
        let mut requested = std::mem::take(&mut self.syncs_requested);
        for (doc, version) in requested.drain(..) {
            let Some(s) = self.sessions.get_mut(&conn) else {
                break;
            };
            if s.is_closed() {
                break;
            }
            let Some(sub) = s.docs.get_mut(&doc) else {
                continue;
            };
            // This sync covers whatever catch-up was due.
            sub.take_lagging();
            if self.sync_gate(conn) {
                self.queue_sync(conn, doc, &version, registry);
            } else if let Some(s) = self.sessions.get_mut(&conn)
                && let Some(sub) = s.docs.get_mut(&doc)
            {
                // The requested version is the peer's: one too long to keep
                // is replaced by the empty version (the catch-up is then
                // everything), so a held-back sync pins at most
                // `max_stored_version_len` bytes.
                let version = if version.len() <= self.config.limits.max_stored_version_len {
                    version
                } else {
                    Vec::new()
                };
                sub.set_lagging(version);
                s.lagging = true;
                // Held back by its rate, not by room: listed now (a drain
                // would never come).
                self.marks
                    .drained(s, self.config.limits.max_outbound_bytes / 4);
            }
        }
        self.syncs_requested = requested;
    }

    /// Whether a sync payload may be computed for `conn` now, taking a
    /// token of its sync rate if so. A session holds at most one computed
    /// payload beyond its bounded queue: a sync is computed only when no
    /// transfer waits for room and the queue is below its low-water mark,
    /// and at most `Limits::sync_rate` per second. One held back by the
    /// rate sets the hub's retry deadline.
    fn sync_gate(&mut self, conn: ConnId) -> bool {
        let (Some(now), low) = (self.now, self.low_water()) else {
            return false;
        };
        let limits = &self.config.limits;
        let Some(s) = self.sessions.get_mut(&conn) else {
            return false;
        };
        if s.phase != Phase::Active || !s.transfers.is_empty() || s.outbound.bytes() > low {
            return false;
        }
        if s.rates(limits, now).sync.allow(now) {
            return true;
        }
        let refill = Duration::from_secs(1) / limits.sync_rate.max(1);
        let retry = now.checked_add(refill);
        self.sync_retry = match (self.sync_retry, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        false
    }

    /// Queues what the client at `version` lacks: a delta, or a snapshot when
    /// no delta is computable, then `SyncDone` with the server's version.
    /// Multi-chunk payloads are cached for resumption.
    fn queue_sync<R: Registry>(
        &mut self,
        conn: ConnId,
        doc: DocId,
        version: &[u8],
        registry: &mut R,
    ) {
        let Some(key) = self.index_of(conn, doc).map(DocIndex::key) else {
            return;
        };
        let Some((name, d)) = self.loaded(conn, doc, None, registry) else {
            return;
        };
        let Ok(server_version) = catch_unwind(AssertUnwindSafe(|| d.version())) else {
            return self.sender_doc_panicked(conn, doc);
        };
        // Clients joining together from the same version share one payload
        // (and its transfer id, so any of them can resume it).
        let shared = self
            .transfers
            .find(key, version, &server_version)
            .map(|(id, t)| (id, t.kind, Arc::clone(&t.payload)));
        let (id, kind, payload, fresh) = match shared {
            Some((id, kind, payload)) => (id, kind, payload, false),
            None => {
                let computed = catch_unwind(AssertUnwindSafe(|| match d.delta_since(version) {
                    Ok(delta) => (SyncKind::Delta, delta),
                    Err(_) => (SyncKind::Snapshot, d.snapshot()),
                }));
                let Ok((kind, payload)) = computed else {
                    return self.sender_doc_panicked(conn, doc);
                };
                (self.rng.next_u64(), kind, Arc::new(payload), true)
            }
        };
        let bytes = payload.len();
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        if fresh && payload.len() > s.outbound.max_chunk(&self.common) {
            self.transfers.insert(
                id,
                conn,
                CachedTransfer {
                    doc: key,
                    kind,
                    payload: Arc::clone(&payload),
                    version: server_version.clone(),
                    from: version.to_vec(),
                },
            );
        }
        s.transfers.push_back(Transfer {
            doc,
            id,
            kind,
            payload,
            offset: 0,
            version: server_version,
        });
        s.pump_transfers(&mut self.common);
        self.marks.ready(s);
        if kind == SyncKind::Snapshot {
            self.events
                .push_back(ServerEvent::SnapshotSent { conn, name, bytes });
        }
    }

    /// A new token for `conn`. It takes effect before the next message:
    /// a token that no longer authenticates (revoked, expired, unknown)
    /// closes the session (`Close(Rejected)`, cause
    /// [`CloseCause::Rejected`] with [`RejectCode::Unauthorized`]: the
    /// credential is gone, so is the session); otherwise every open
    /// document is authorized again for the new identity, and one it may no
    /// longer open is closed (`Error(Forbidden)` then `CloseDoc`), one whose
    /// access changed is announced with a new `Opened`. An unchanged
    /// identity (name and grant) changes nothing. More than
    /// `Limits::refresh_rate` refreshes a second close the session with
    /// `LimitExceeded`.
    fn on_refresh(&mut self, conn: ConnId, token: &[u8]) {
        let (Some(now), Some(s)) = (self.now, self.sessions.get_mut(&conn)) else {
            return;
        };
        // Each refresh costs an authentication and possibly an
        // authorization per open document: past `Limits::refresh_rate` the
        // client is broken or hostile.
        if !s.rates(&self.config.limits, now).refresh.allow(now) {
            return self.fail(
                conn,
                CloseReason::LimitExceeded,
                CloseCause::Local(CloseReason::LimitExceeded),
            );
        }
        let identity = match self.auth.authenticate(&s.peer, token) {
            Ok(id) => id,
            Err(why) => {
                let message = format!("token refresh refused: {why}");
                let code = RejectCode::Unauthorized;
                return self.fail(
                    conn,
                    CloseReason::Rejected,
                    CloseCause::Rejected { code, message },
                );
            }
        };
        // The same identity (name and grant) is authorized as before: the
        // authorizer decides from the identity alone.
        if s.identity.as_ref() == Some(&identity) {
            return;
        }
        let docs: Vec<(DocId, Access)> = s.docs.iter().map(|(d, sub)| (d, sub.access)).collect();
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.identity = Some(identity.clone());
        }
        for (doc, old) in docs {
            let Some(name) = self.doc_name(conn, doc).cloned() else {
                continue;
            };
            match self.auth.authorize(&identity, &name) {
                Some(access) if access == old => {}
                Some(access) => {
                    if let Some(sub) = self.sub_mut(conn, doc) {
                        sub.access = access;
                    }
                    self.send(
                        conn,
                        &Message::Opened {
                            name: name.to_string(),
                            doc,
                            access,
                        },
                    );
                }
                None => {
                    // Reported while the handle still names the document.
                    self.doc_error(
                        conn,
                        Some(doc),
                        None,
                        ErrorCode::Forbidden,
                        "access revoked by the new token".into(),
                    );
                    self.revoke(conn, doc);
                    self.send(conn, &Message::CloseDoc { doc });
                }
            }
        }
    }

    /// Applies a batch of updates from `conn` to `doc`, fans the accepted
    /// ones out and schedules the acknowledgement.
    fn apply_updates<R: Registry>(
        &mut self,
        conn: ConnId,
        doc: DocId,
        updates: &mut Vec<(u64, Bytes)>,
        registry: &mut R,
    ) {
        // The general path (`apply_one` is the message-framing shortcut's;
        // tests/properties.rs compares the two).
        if let [(seq, data)] = updates.as_slice() {
            self.apply_batch(conn, doc, &[(*seq, data.as_ref())], registry);
        } else {
            let borrowed: Vec<(u64, &[u8])> =
                updates.iter().map(|(s, d)| (*s, d.as_ref())).collect();
            self.apply_batch(conn, doc, &borrowed, registry);
        }
        updates.clear();
    }

    fn apply_batch<R: Registry>(
        &mut self,
        conn: ConnId,
        doc: DocId,
        updates: &[(u64, &[u8])],
        registry: &mut R,
    ) {
        let first_seq = updates.first().map(|u| u.0);
        // One lookup of the subscription for the checks and the sequence
        // number (this runs for every update a server receives).
        let Some(sub) = self
            .sessions
            .get_mut(&conn)
            .and_then(|s| s.docs.get_mut(&doc))
        else {
            return self.unknown_doc(conn, doc);
        };
        if sub.access != Access::ReadWrite {
            let n = updates.len();
            return self.doc_error(
                conn,
                Some(doc),
                first_seq,
                ErrorCode::ReadOnly,
                format!("{n} update(s) refused: read-only access"),
            );
        }
        let Some(entry) = self.directory.get(sub.index) else {
            return self.unknown_doc(conn, doc);
        };
        let name = Arc::clone(&entry.name);
        let Some(d) = registry.get(&name) else {
            let msg = "document not loaded".to_string();
            return self.doc_error(conn, Some(doc), first_seq, ErrorCode::Internal, msg);
        };
        let last_seq = updates.iter().map(|u| u.0).max().unwrap_or(0);
        sub.last_seq = sub.last_seq.max(last_seq);
        // A subscriber about to pass its high-water mark switches to a
        // catch-up from the version before this batch.
        let incoming: usize = updates.iter().map(|(_, b)| b.len() + 16).sum();
        let high = self.high_water();
        let catch_up = entry
            .subscribers
            .iter()
            .filter(|(_, c)| *c != conn)
            .filter_map(|(h, c)| Some((h, self.sessions.get(&c)?)))
            .any(|(h, s)| {
                s.outbound.bytes() + incoming > high
                    && s.docs.get(&h).is_some_and(|sub| !sub.is_lagging())
            });
        let mut outcomes = std::mem::take(&mut self.outcomes);
        outcomes.clear();
        // A CRDT that panics fails its document, not the hub.
        let applied = catch_unwind(AssertUnwindSafe(|| {
            let pre_version = catch_up.then(|| d.version());
            let held_before = d.pending_bytes();
            if let [(_, one)] = updates {
                outcomes.push(d.apply(one));
            } else {
                let slices: Vec<&[u8]> = updates.iter().map(|(_, b)| *b).collect();
                d.apply_batch(&slices, &mut outcomes);
            }
            let server_version = outcomes
                .iter()
                .any(|o| matches!(o, ApplyOutcome::Pending { .. }))
                .then(|| d.version());
            (pre_version, server_version, held_before, d.pending_bytes())
        }));
        let Ok((pre_version, server_version, held_before, held)) = applied else {
            outcomes.clear();
            self.outcomes = outcomes;
            return self.sender_doc_panicked(conn, doc);
        };
        // Updates waiting for missing dependencies are bounded: a session
        // whose updates grow the held bytes past the limit is closed (its
        // client re-syncs on reconnect); others go on.
        let over_pending = held > held_before && held > self.config.limits.max_pending_bytes;
        self.settle_batch(
            conn,
            doc,
            name,
            updates,
            &mut outcomes,
            Settled {
                pre_version,
                server_version,
                over_pending,
                last_seq,
            },
            registry,
        );
        self.outcomes = outcomes;
    }

    /// The usual update of a live connection, with as little code as
    /// possible: one update, to a document the session may write, no
    /// subscriber near its high-water mark, nothing held for missing
    /// dependencies, applied cleanly. Anything else goes the general way
    /// ([`Hub::apply_batch`], or [`Hub::settle_batch`] once applied).
    ///
    /// Why a second path: next to a real CRDT, whose own code evicts ours
    /// from the instruction cache between updates, every instruction here
    /// is fetched cold, so the cost is in the code executed, not only in the
    /// work done (`benches/apply_path.rs`).
    fn apply_one<R: Registry>(
        &mut self,
        conn: ConnId,
        doc: DocId,
        seq: u64,
        data: &[u8],
        registry: &mut R,
    ) {
        let sub = self.sessions.get(&conn).and_then(|s| s.docs.get(&doc));
        // The sender first: a session that may not write this document
        // costs no look at the others (the general path reports why).
        let Some(entry) = sub
            .filter(|sub| sub.access == Access::ReadWrite)
            .and_then(|sub| self.directory.get(sub.index))
        else {
            return self.apply_batch(conn, doc, &[(seq, data)], registry);
        };
        // The same test as `apply_batch`'s catch-up check, for everyone.
        let high = self.high_water();
        let incoming = data.len() + 16;
        let near_high = entry.subscribers.iter().any(|(_, c)| {
            c != conn
                && self
                    .sessions
                    .get(&c)
                    .is_some_and(|s| s.outbound.bytes() + incoming > high)
        });
        let d = match registry.get(&entry.name) {
            Some(d) if !near_high && d.pending_bytes() == 0 => d,
            _ => return self.apply_batch(conn, doc, &[(seq, data)], registry),
        };
        // A CRDT that panics fails its document, not the hub.
        let Ok(outcome) = catch_unwind(AssertUnwindSafe(|| d.apply(data))) else {
            return self.sender_doc_panicked(conn, doc);
        };
        let name = Arc::clone(&entry.name);
        if !matches!(outcome, ApplyOutcome::Applied) || d.pending_bytes() != 0 {
            // Held, duplicate or invalid: the general bookkeeping.
            let server_version =
                matches!(outcome, ApplyOutcome::Pending { .. }).then(|| d.version());
            let over_pending = d.pending_bytes() > self.config.limits.max_pending_bytes;
            if let Some(sub) = self.sub_mut(conn, doc) {
                sub.last_seq = sub.last_seq.max(seq);
            }
            let mut outcomes = std::mem::take(&mut self.outcomes);
            outcomes.clear();
            outcomes.push(outcome);
            self.settle_batch(
                conn,
                doc,
                name,
                &[(seq, data)],
                &mut outcomes,
                Settled {
                    pre_version: None,
                    server_version,
                    over_pending,
                    last_seq: seq,
                },
                registry,
            );
            self.outcomes = outcomes;
            return;
        }
        let stored = registry.update_applied(&name, data);
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.stats.updates_applied += 1;
            if let Some(sub) = s.docs.get_mut(&doc) {
                sub.last_seq = sub.last_seq.max(seq);
                sub.set_out_of_sync_sent(None);
            }
        }
        self.fan_out(conn, doc, data, None);
        if let Err(e) = stored {
            self.storage_error(conn, doc, seq, &e);
        }
        self.applied(
            conn,
            doc,
            ServerEvent::UpdatesApplied {
                conn,
                name,
                last_seq: seq,
                applied: 1,
                duplicates: 0,
                pending: 0,
            },
        );
    }

    /// The CRDT of `doc` panicked: the document may be in any state, so it
    /// is never touched again while the hub runs. Its subscribers get an
    /// [`ErrorCode::Internal`] error and are unsubscribed (`CloseDoc`),
    /// opens of it are refused; every other document and session goes on.
    fn doc_panicked(&mut self, index: DocIndex) {
        let Some(entry) = self.directory.get(index) else {
            return;
        };
        let name = Arc::clone(&entry.name);
        self.failed.insert(Arc::clone(&name));
        let subscribers: Vec<(DocId, ConnId)> = entry.subscribers.iter().collect();
        let message = format!("document {name:?} failed: its CRDT panicked");
        for (doc, conn) in subscribers {
            // Reported while the handle still names the document; the
            // handle is retired (the client may still be sending under it).
            self.doc_error(conn, Some(doc), None, ErrorCode::Internal, message.clone());
            self.revoke(conn, doc);
            self.send(conn, &Message::CloseDoc { doc });
        }
        self.events.push_back(ServerEvent::DocumentFailed { name });
    }

    /// [`Hub::doc_panicked`] for the document `conn` has open as `doc`.
    fn sender_doc_panicked(&mut self, conn: ConnId, doc: DocId) {
        if let Some(index) = self.index_of(conn, doc) {
            self.doc_panicked(index);
        }
    }

    /// The store refused update `seq` (applied and forwarded all the same):
    /// a document error to its sender.
    fn storage_error(&mut self, conn: ConnId, doc: DocId, seq: u64, e: &impl ToString) {
        let message = e.to_string();
        self.doc_error(conn, Some(doc), Some(seq), ErrorCode::Storage, message);
    }

    /// Updates of `conn` on `doc` were handled: an ack is due at the next
    /// flush, and the application hears `event`.
    fn applied(&mut self, conn: ConnId, doc: DocId, event: ServerEvent) {
        if !self.acks_due.contains(&(conn, doc)) {
            self.acks_due.push((conn, doc));
        }
        self.events.push_back(event);
    }

    /// What follows applying `updates` (with `outcomes`, one each, drained
    /// here): storage, fan-out, errors for the rejected ones, `OutOfSync`
    /// for a gap, the ack and the event.
    #[allow(clippy::too_many_arguments)]
    fn settle_batch<R: Registry>(
        &mut self,
        conn: ConnId,
        doc: DocId,
        name: Arc<str>,
        updates: &[(u64, &[u8])],
        outcomes: &mut Vec<ApplyOutcome>,
        settled: Settled,
        registry: &mut R,
    ) {
        let Settled {
            pre_version,
            server_version,
            over_pending,
            last_seq,
        } = settled;
        let (mut applied, mut duplicates, mut pending) = (0u32, 0u32, 0u32);
        // The first refused update and how many were refused: one error
        // per batch, however many it carried.
        let mut rejected = None;
        let mut invalid = 0u32;
        let mut storage_error = None;
        for (&(seq, data), outcome) in updates.iter().zip(outcomes.drain(..)) {
            match outcome {
                ApplyOutcome::Applied | ApplyOutcome::Pending { .. } => {
                    if matches!(outcome, ApplyOutcome::Applied) {
                        applied += 1;
                    } else {
                        pending += 1;
                    }
                    if let Err(e) = registry.update_applied(&name, data) {
                        storage_error = Some((seq, e));
                    }
                    self.fan_out(conn, doc, data, pre_version.as_deref());
                }
                ApplyOutcome::Duplicate => duplicates += 1,
                ApplyOutcome::Invalid(e) => {
                    invalid += 1;
                    rejected.get_or_insert((seq, e));
                }
            }
        }
        let mut too_many_invalid = false;
        if let Some((seq, e)) = rejected {
            let message = if invalid == 1 {
                e.to_string()
            } else {
                format!("{invalid} updates refused, the first: {e}")
            };
            self.doc_error(
                conn,
                Some(doc),
                Some(seq),
                ErrorCode::InvalidUpdate,
                message,
            );
            too_many_invalid = self.count_invalid(conn, invalid);
        }
        if let Some((seq, e)) = storage_error {
            self.storage_error(conn, doc, seq, &e);
        }
        // Missing dependencies: ask the client for what we lack, again only
        // if the gap persists past `resync_after`.
        let resync_after = self.config.resync_after;
        let now = self.now;
        let mut out_of_sync = None;
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.stats.updates_applied += u64::from(applied);
            s.stats.duplicates += u64::from(duplicates);
            if let Some(sub) = s.docs.get_mut(&doc) {
                if let Some(version) = server_version {
                    let resend = sub.out_of_sync_sent().is_none_or(|at| {
                        at.checked_add(resync_after)
                            .zip(now)
                            .is_some_and(|(t, now)| now >= t)
                    });
                    if resend {
                        sub.set_out_of_sync_sent(now);
                        out_of_sync = Some(version);
                    }
                } else if applied > 0 {
                    sub.set_out_of_sync_sent(None);
                }
            }
        }
        if let Some(version) = out_of_sync {
            self.send(
                conn,
                &Message::OutOfSync {
                    doc,
                    version: Bytes(version),
                },
            );
        }
        self.applied(
            conn,
            doc,
            ServerEvent::UpdatesApplied {
                conn,
                name,
                last_seq,
                applied,
                duplicates,
                pending,
            },
        );
        if over_pending {
            self.fail(
                conn,
                CloseReason::LimitExceeded,
                CloseCause::Local(CloseReason::LimitExceeded),
            );
        }
        if too_many_invalid {
            let limit = self.config.limits.max_invalid_updates;
            self.fail(
                conn,
                CloseReason::ProtocolError,
                CloseCause::Protocol(format!("more than {limit} invalid updates")),
            );
        }
    }

    /// Adds `n` to the invalid updates `conn` sent; whether that is more
    /// than `Limits::max_invalid_updates`.
    fn count_invalid(&mut self, conn: ConnId, n: u32) -> bool {
        let (Some(now), Some(s)) = (self.now, self.sessions.get_mut(&conn)) else {
            return false;
        };
        let rates = s.rates(&self.config.limits, now);
        rates.invalid_updates = rates.invalid_updates.saturating_add(n);
        rates.invalid_updates > self.config.limits.max_invalid_updates
    }

    /// Sends `data` from `from` (its handle `doc`) to every other
    /// subscriber, encoded once per distinct handle among them (usually
    /// once). Subscribers over their high-water mark stop receiving
    /// individual updates and are marked for a catch-up from `pre_version`.
    fn fan_out(&mut self, from: ConnId, doc: DocId, data: &[u8], pre_version: Option<&[u8]>) {
        let Some(entry) = self.index_of(from, doc).and_then(|i| self.directory.get(i)) else {
            return;
        };
        let high = self.high_water();
        let mut slow = Vec::new();
        for (handle, run) in entry.subscribers.runs() {
            // Runs are sorted by connection: the sender is found by search.
            let sender = handle == doc && run.binary_search(&(doc, from)).is_ok();
            let recipients = run.len() - usize::from(sender);
            if recipients == 0 {
                continue;
            }
            // Encoded once for many recipients; a single recipient gets it
            // encoded straight into its queue.
            let shared = (recipients > 1).then(|| encode_broadcast_shared(handle, data));
            let len = shared.as_ref().map_or_else(
                || crate::wire::hot::broadcast_len(handle, data),
                |e| e.len(),
            );
            for &(_, conn) in run.iter().filter(|(_, c)| !sender || *c != from) {
                let Some(s) = self.sessions.get_mut(&conn) else {
                    continue;
                };
                let queued = s.outbound.bytes();
                let Some(sub) = s.docs.get_mut(&handle) else {
                    continue;
                };
                if sub.is_lagging() {
                    continue;
                }
                if queued + len > high
                    && let Some(v) = pre_version
                {
                    sub.set_lagging(v.to_vec());
                    s.lagging = true;
                    // A queue already drained (the update alone passes the
                    // high-water mark) gets its catch-up without a drain.
                    self.marks
                        .drained(s, self.config.limits.max_outbound_bytes / 4);
                    self.events.push_back(ServerEvent::SubscriberLagging {
                        conn,
                        name: Arc::clone(&entry.name),
                        queued,
                    });
                    continue;
                }
                let sent = match &shared {
                    Some(encoded) => s.send_shared(encoded, &self.common),
                    None => s.outbound.push_broadcast(handle, data, &mut self.common),
                };
                if sent.is_err() {
                    slow.push(conn);
                } else {
                    self.marks.ready(s);
                }
            }
        }
        for conn in slow {
            self.fail(
                conn,
                CloseReason::SlowConsumer,
                CloseCause::Local(CloseReason::SlowConsumer),
            );
        }
    }

    /// Drops the acknowledgements due to `conn` for its handle `doc`, which
    /// it closed: the handle may name another document next. Those waiting
    /// for a commit are looked for only when some were (`in_flight`).
    fn forget_acks(&mut self, conn: ConnId, doc: DocId, in_flight: bool) {
        self.acks_due.retain(|a| *a != (conn, doc));
        if in_flight {
            for commit in &mut self.in_flight {
                commit.acks.retain(|a| (a.0, a.1) != (conn, doc));
                commit.distinct = commit.distinct.min(commit.acks.len());
            }
        }
    }

    /// Takes the documents whose unload linger ended out of the directory
    /// and tells the registry to unload them (it keeps what only it holds:
    /// a memory registry its written documents, a durable one its writes
    /// not yet on disk until they are).
    fn unload_idle<R: Registry>(&mut self, now: Instant, registry: &mut R) {
        while let Some((index, name)) = self.directory.pop_expired(now) {
            // Nothing server-wide may outlive the document's slot.
            self.transfers.forget(index.key());
            registry.unload(&name);
        }
    }

    /// Queue size above which a subscriber stops receiving individual
    /// updates (and `wants_input` turns false).
    fn high_water(&self) -> usize {
        self.config.limits.max_outbound_bytes / 2
    }

    /// Queue size below which a lagging subscriber gets its catch-up.
    fn low_water(&self) -> usize {
        self.config.limits.max_outbound_bytes / 4
    }

    /// Whether `s` has a catch-up due and room for it (its sync rate
    /// aside): it lags, no transfer waits for room and its queue is below
    /// the low-water mark.
    fn catch_up_waiting(&self, s: &ServerSession) -> bool {
        s.phase == Phase::Active
            && s.transfers.is_empty()
            && s.outbound.bytes() <= self.low_water()
            && s.docs.iter().any(|(_, sub)| sub.is_lagging())
    }

    /// Sends the due catch-ups (lagging subscribers, syncs held back) of
    /// the sessions [`Marks`] lists as drained, one at a time per session
    /// while [`Hub::sync_gate`] lets them through; the other sessions are
    /// not looked at. A session held back by its sync rate waits for the
    /// retry deadline ([`Marks::hold_for_rate`]); one held back by a full
    /// queue or a pending transfer is listed again by the drain that makes
    /// room.
    fn run_catch_ups<R: Registry>(&mut self, registry: &mut R) {
        if !self.marks.catch_up_due() {
            return;
        }
        for conn in self.marks.take_catch_ups() {
            loop {
                let Some(doc) = self.next_lagging(conn) else {
                    if let Some(s) = self.sessions.get_mut(&conn) {
                        s.lagging = false;
                    }
                    break;
                };
                if !self.sync_gate(conn) {
                    if let Some(s) = self.sessions.get(&conn)
                        && self.catch_up_waiting(s)
                    {
                        self.marks.hold_for_rate(conn);
                    }
                    break;
                }
                let Some(since) = self.sub_mut(conn, doc).and_then(|sub| sub.take_lagging()) else {
                    break;
                };
                if let Some(name) = self.doc_name(conn, doc).cloned() {
                    self.events
                        .push_back(ServerEvent::CatchUpQueued { conn, name });
                }
                self.queue_sync(conn, doc, &since, registry);
                self.send_presence_snapshot(conn, doc);
            }
        }
    }

    /// A document of `conn` whose catch-up is due.
    fn next_lagging(&self, conn: ConnId) -> Option<DocId> {
        let s = self.sessions.get(&conn)?;
        s.docs
            .iter()
            .find(|(_, sub)| sub.is_lagging())
            .map(|(doc, _)| doc)
    }

    /// Prunes every document down to the version all its subscribers
    /// confirmed (documents whose CRDT supports it), handing the registry a
    /// snapshot. Documents with a subscriber that has not confirmed any
    /// version are left alone.
    fn prune<R: Registry>(&mut self, registry: &mut R) {
        let mut panicked = Vec::new();
        for (index, entry) in self.directory.entries() {
            if entry.subscribers.is_empty() {
                continue;
            }
            let versions: Option<Vec<&[u8]>> = entry
                .subscribers
                .iter()
                .map(|(doc, c)| {
                    self.sessions
                        .get(&c)?
                        .docs
                        .get(&doc)?
                        .client_version
                        .as_deref()
                })
                .collect();
            let Some(versions) = versions else {
                continue;
            };
            let Some(d) = registry.get(&entry.name) else {
                continue;
            };
            // A CRDT that panics fails its document, not the hub.
            let pruned = catch_unwind(AssertUnwindSafe(|| {
                let common = d.common_version(&versions)?;
                (d.prune_to(&common) == Ok(true)).then(|| d.snapshot())
            }));
            let snapshot = match pruned {
                Ok(Some(snapshot)) => snapshot,
                Ok(None) => continue,
                Err(_) => {
                    panicked.push(index);
                    continue;
                }
            };
            let snapshot_bytes = snapshot.len();
            if let Err(e) = registry.snapshot_taken(&entry.name, &snapshot) {
                self.events.push_back(ServerEvent::StorageError {
                    name: Some(Arc::clone(&entry.name)),
                    message: e.to_string(),
                });
                continue;
            }
            self.events.push_back(ServerEvent::HistoryPruned {
                name: Arc::clone(&entry.name),
                snapshot_bytes,
            });
        }
        for index in panicked {
            self.doc_panicked(index);
        }
    }

    /// Commits storage once for everything applied since the last flush
    /// (waiting for the disk when `wait`), then sends one cumulative `Ack`
    /// per (session, document).
    fn finish_acks<R: Registry>(&mut self, registry: &mut R, wait: bool) {
        // (A waiting flush also settles commits still in flight.)
        if self.acks_due.is_empty() && (!wait || self.in_flight.is_empty()) {
            return;
        }
        let outcome = if wait {
            registry.flush().map(|durable| {
                if durable {
                    Commit::Durable
                } else {
                    Commit::NotDurable
                }
            })
        } else {
            registry.commit()
        };
        let (durable, pending) = match outcome {
            Ok(Commit::Durable) => (true, None),
            Ok(Commit::Pending(id)) => (false, Some(id)),
            Ok(_) => (false, None),
            Err(e) => {
                let due = self.acks_due.clone();
                for (conn, doc) in due {
                    self.doc_error(conn, Some(doc), None, ErrorCode::Storage, e.to_string());
                }
                self.events.push_back(ServerEvent::StorageError {
                    name: None,
                    message: e.to_string(),
                });
                (false, None)
            }
        };
        // What earlier commits handed over is on disk too.
        let mut advanced = if durable {
            self.settle(None)
        } else {
            Vec::new()
        };
        let mut due = std::mem::take(&mut self.acks_due);
        if !advanced.is_empty() {
            // Acked below with the others.
            let mut sorted = due.clone();
            sorted.sort_unstable();
            advanced.retain(|a| sorted.binary_search(a).is_err());
        }
        let mut waiting = Vec::new();
        let mut slow = Vec::new();
        for (conn, doc) in due.drain(..) {
            // One lookup per ack: this runs after every batch of input.
            let Some(s) = self.sessions.get_mut(&conn) else {
                continue;
            };
            let Some(sub) = s.docs.get_mut(&doc) else {
                continue;
            };
            if durable {
                sub.durable_seq = sub.last_seq;
            }
            if pending.is_some() && sub.last_seq > sub.durable_seq {
                waiting.push((conn, doc, sub.last_seq));
            }
            let (applied, durable) = (sub.last_seq, sub.durable_seq);
            if s.outbound
                .push_ack(doc, applied, durable, &mut self.common)
                .is_err()
            {
                slow.push(conn);
            }
            self.marks.ready(s);
        }
        for conn in slow {
            self.slow_consumer(conn);
        }
        self.acks_due = due;
        for (conn, doc) in advanced {
            self.send_ack(conn, doc);
        }
        if let Some(id) = pending
            && !waiting.is_empty()
        {
            self.track(id, waiting);
        }
    }

    /// Queues the cumulative `Ack` of (`conn`, `doc`).
    fn send_ack(&mut self, conn: ConnId, doc: DocId) {
        let Some(sub) = self.sub_mut(conn, doc) else {
            return;
        };
        let ack = Message::Ack {
            doc,
            applied: sub.last_seq,
            durable: sub.durable_seq,
        };
        self.send(conn, &ack);
    }

    /// Remembers the acknowledgements commit `id` will make durable. Past
    /// the limit they join the newest tracked commit, whose id becomes `id`
    /// (later commits complete later: never too early).
    fn track(&mut self, id: CommitId, acks: Vec<(ConnId, DocId, u64)>) {
        let full = self.in_flight.len() >= self.config.limits.max_commits_in_flight.max(1);
        match self.in_flight.back_mut() {
            Some(last) if last.id == id || full => {
                last.id = last.id.max(id);
                last.acks.extend(acks);
                // One entry per (session, document) is enough: compact when
                // the list doubled, so merging stays linear overall.
                if last.acks.len() > 2 * last.distinct.max(64) {
                    dedup_acks(&mut last.acks);
                    last.distinct = last.acks.len();
                }
            }
            _ => {
                let distinct = acks.len();
                self.in_flight.push_back(InFlight { id, acks, distinct });
            }
        }
    }

    /// Marks the acknowledgements of the tracked commits up to `through`
    /// (all when `None`) durable; returns the (session, document) pairs
    /// whose `durable` advanced.
    fn settle(&mut self, through: Option<CommitId>) -> Vec<(ConnId, DocId)> {
        let mut advanced = Vec::new();
        while let Some(front) = self.in_flight.front() {
            if through.is_some_and(|t| front.id > t) {
                break;
            }
            let Some(done) = self.in_flight.pop_front() else {
                break;
            };
            for (conn, doc, seq) in done.acks {
                let Some(sub) = self.sub_mut(conn, doc) else {
                    continue;
                };
                // A subscription reopened since counts from its own start.
                let seq = seq.min(sub.last_seq);
                if seq > sub.durable_seq {
                    sub.durable_seq = seq;
                    advanced.push((conn, doc));
                }
            }
        }
        advanced.sort_unstable();
        advanced.dedup();
        advanced
    }

    /// The tracked commits up to `through` failed: their sessions get a
    /// `Storage` error, and their acknowledgements are dropped.
    fn commit_failed(&mut self, through: CommitId, e: &RegistryError) {
        // Per (session, document): the highest sequence number lost.
        let mut errors: Vec<(ConnId, DocId, u64)> = Vec::new();
        while self.in_flight.front().is_some_and(|f| f.id <= through) {
            let Some(failed) = self.in_flight.pop_front() else {
                break;
            };
            errors.extend(failed.acks);
        }
        dedup_acks(&mut errors);
        let message = e.to_string();
        for (conn, doc, seq) in errors {
            if self.sub_mut(conn, doc).is_some() {
                let msg = format!("not stored durably: {message}");
                self.doc_error(conn, Some(doc), Some(seq), ErrorCode::Storage, msg);
            }
        }
        self.events.push_back(ServerEvent::StorageError {
            name: None,
            message,
        });
    }
}

impl<A> core::fmt::Debug for Hub<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Hub")
            .field("sessions", &self.sessions.len())
            .field("docs", &self.directory.len())
            .finish()
    }
}
