//! The hub: many server sessions, the document directory and fan-out.
//!
//! The hub owns every [`ServerSession`] and routes between them; it borrows
//! the [`Registry`] for each call that may touch documents. It performs no
//! I/O and reads no clock.
//!
//! This file holds the driving API (input, timers, output) and the dispatch
//! of decoded messages; each concern behind it has a file of its own:
//! [`handshake`] (hello, token refresh), [`sync`] (open, syncs and
//! catch-ups), [`apply`] (updates, fan-out, pruning), [`acks`] (applied and
//! durable acknowledgements), [`presence`] (presence, application
//! messages), [`directory`] (documents, leaving them and their unload).
//!
//! Over 800 lines because the hub still drives every session's logic
//! (handshake, dispatch, deadlines) itself; giving sessions a state machine
//! of their own (the rooms issue) moves that out.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use crate::time::Instant;

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

mod acks;
mod apply;
mod directory;
mod handshake;
mod presence;
mod sync;
#[cfg(test)]
mod timer_tests;
use super::{Authorizer, ConnId, ServerConfig, ServerEvent};
use acks::InFlight;
use directory::Directory;
pub(crate) use directory::DocIndex;
pub use presence::{AppHook, AppMessage, AppVerdict};

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
pub(crate) fn truncate_at_char(text: &mut String, max: usize) {
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
    /// Syncs the current input asked for (`Open`, `SyncRequest`), one per
    /// document, the latest version winning: computed once the input is
    /// handled, so repeated requests cost one computation.
    syncs_requested: Vec<(DocId, Vec<u8>)>,
    /// When a sync held back by its session's sync rate may go ahead.
    sync_retry: Option<Instant>,
    /// Documents whose CRDT panicked: never touched again while the hub
    /// runs; opens are refused with [`ErrorCode::Internal`].
    failed: BTreeSet<Arc<str>>,
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
            !s.is_closed() && s.outbound.bytes() <= high_water(&self.config.limits)
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
            self.marks.drained(s, low_water(&self.config.limits));
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
                self.marks.drained(s, low_water(&self.config.limits));
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
        self.marks.drained(s, low_water(&self.config.limits));
        sent
    }

    /// The next frame to send on `conn` (for adapters with a task per
    /// connection).
    pub fn poll_transmit_for(&mut self, conn: ConnId) -> Option<Vec<u8>> {
        // An emptied session stays listed as ready until `poll_transmit`
        // reaches it: unlisting here would cost a search.
        let s = self.sessions.get_mut(&conn)?;
        let frame = s.poll_frame(&mut self.common);
        self.marks.drained(s, low_water(&self.config.limits));
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
        self.report_error(conn, doc, seq, code, message, false);
    }

    /// Sends `conn` an `Error` and tells the application
    /// ([`ServerEvent::DocumentError`]); an `ephemeral` one is dropped when
    /// the queue is past its high-water mark.
    fn report_error(
        &mut self,
        conn: ConnId,
        doc: Option<DocId>,
        seq: Option<u64>,
        code: ErrorCode,
        message: String,
        ephemeral: bool,
    ) {
        let error = Message::Error {
            doc,
            seq,
            code,
            message: message.clone(),
        };
        if ephemeral {
            self.send_ephemeral(conn, &error);
        } else {
            self.send(conn, &error);
        }
        let name = doc.and_then(|d| self.doc_name(conn, d).cloned());
        self.events.push_back(ServerEvent::DocumentError {
            conn,
            name,
            seq,
            code,
            message,
        });
    }

    /// Sends `conn` the `Opened` for its handle `doc` on `name`.
    fn send_opened(&mut self, conn: ConnId, name: &str, doc: DocId, access: Access) {
        self.send(
            conn,
            &Message::Opened {
                name: name.to_string(),
                doc,
                access,
            },
        );
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
                    } => {
                        let durable = registry.is_durable();
                        self.on_hello(conn, &versions, peer, &token, &compression, limits, durable)
                    }
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
            Message::VersionReport { doc, version } => {
                let max = self.config.limits.max_stored_version_len;
                let Some(sub) = self.sub_mut(conn, doc) else {
                    return self.unknown_doc(conn, doc);
                };
                // Only a synced subscriber's report counts: before its
                // `SyncDone` the client does not hold the document yet.
                if sub.synced {
                    sub.client_version =
                        (version.0.len() <= max).then(|| version.0.into_boxed_slice());
                }
            }
            Message::SyncRequest { doc, version } => {
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
}

/// Queue size above which a subscriber stops receiving individual updates
/// (and `wants_input` turns false).
fn high_water(limits: &crate::Limits) -> usize {
    limits.max_outbound_bytes / 2
}

/// Queue size below which a lagging subscriber gets its catch-up.
fn low_water(limits: &crate::Limits) -> usize {
    limits.max_outbound_bytes / 4
}

impl<A> core::fmt::Debug for Hub<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Hub")
            .field("sessions", &self.sessions.len())
            .field("docs", &self.directory.len())
            .finish()
    }
}
