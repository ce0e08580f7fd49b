//! The client session state machine.
//!
//! Over 800 lines: one state machine whose handlers share the per-document
//! state (outbox, transfers, held broadcasts, presence); splitting it by
//! message kind is planned with the rooms redesign, which gives the server
//! session the same shape.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::time::Instant;

use crate::close::CloseCause;
use crate::document::{ApplyOutcome, Document};
use crate::inbound::Inbound;
use crate::outbound::{Outbound, Priority};
use crate::registry::Registry;
use crate::rng::Rng;
use crate::wire::compress::InflateScratch;
use crate::wire::{
    Access, AwarenessEntry, Bytes, CloseReason, Compression, DocId, ErrorCode, Message,
    PROTOCOL_VERSIONS, PeerLimits, RejectCode, Resume, Route, SessionId, SyncKind,
};

use super::presence::{Peer, Presence};
use super::{AppTarget, ClientConfig, ClientEvent, CommandError, Status};

/// What one held broadcast costs beyond its bytes (its `Vec` and allocation),
/// charged against the held-bytes bound so that empty broadcasts count too.
const HELD_OVERHEAD: usize = 32;

/// Where one document is in its sync with the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DocStatus {
    /// Waiting for a connection to send `Open`.
    Waiting,
    /// `Open` sent, no answer yet.
    Opening,
    /// Receiving what it lacks from the server.
    Syncing,
    /// In sync; live updates flow.
    Synced,
    /// The server refused to open it (see the `DocumentError` event).
    Refused,
}

/// Counters of a client session.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClientStats {
    /// Frames sent.
    pub frames_out: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Smoothed round-trip time from ping/pong.
    pub rtt: Option<Duration>,
    /// Remote updates applied.
    pub remote_updates: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Handshaking {
        deadline: Option<Instant>,
    },
    Connected,
    /// No connection. `reconnect_at`: when to ask for a dial; `dialing`: a
    /// `Dial` event was emitted and the application is opening a transport.
    Disconnected {
        reconnect_at: Option<Instant>,
        dialing: bool,
    },
    Closed,
}

struct TransferBuf {
    id: u64,
    kind: SyncKind,
    total: u64,
    data: Vec<u8>,
    /// This connection asked the server to resume it (rather than it
    /// starting here).
    resumed: bool,
}

struct ClientDoc {
    name: Arc<str>,
    status: DocStatus,
    handle: Option<DocId>,
    access: Access,
    /// Local updates not yet acknowledged, with their sequence numbers.
    outbox: VecDeque<(u64, Vec<u8>)>,
    outbox_bytes: usize,
    next_seq: u64,
    /// A partial initial-sync transfer, kept across reconnections to be
    /// resumed. Its bytes count towards `ClientSession::transfer_bytes`.
    transfer: Option<TransferBuf>,
    /// A transfer of this connection dropped to keep every document's
    /// partial transfers within `Limits::max_transfer_len`: the rest of its
    /// chunks are discarded and its `SyncDone` is followed by a catch-up
    /// request instead.
    transfer_dropped: Option<u64>,
    /// Broadcasts received while syncing, applied after the transfer. All
    /// documents together hold at most `Limits::max_pending_bytes` (each
    /// broadcast charged its length plus `HELD_OVERHEAD`, see
    /// `ClientSession::held_bytes`); past it the document drops what it
    /// holds and asks for what it lacks once the sync is done
    /// (`held_overflow`).
    held: Vec<Vec<u8>>,
    held_bytes: usize,
    held_overflow: bool,
    /// When a `SyncRequest` for missing dependencies was last sent.
    status_requested: Option<Instant>,
    /// The version changed since it was last reported to the server.
    version_dirty: bool,
    presence: Presence,
}

impl ClientDoc {
    fn new(name: Arc<str>) -> Self {
        ClientDoc {
            name,
            status: DocStatus::Waiting,
            handle: None,
            access: Access::ReadWrite,
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            next_seq: 1,
            transfer: None,
            transfer_dropped: None,
            held: Vec::new(),
            held_bytes: 0,
            held_overflow: false,
            status_requested: None,
            version_dirty: false,
            presence: Presence::default(),
        }
    }

    /// Empties the outbox of updates the server will never take, returning
    /// the event that reports them (`None`: it was empty).
    fn reject_outbox(&mut self, code: ErrorCode) -> Option<ClientEvent> {
        let first_seq = self.outbox.front()?.0;
        let last_seq = self.outbox.back().map_or(first_seq, |(s, _)| *s);
        let event = ClientEvent::UpdatesRejected {
            name: Arc::clone(&self.name),
            first_seq,
            last_seq,
            count: self.outbox.len(),
            bytes: self.outbox_bytes,
            code,
        };
        self.outbox.clear();
        self.outbox_bytes = 0;
        Some(event)
    }

    /// Frees the held broadcasts; returns the bytes they were charged.
    fn drop_held(&mut self) -> usize {
        self.held = Vec::new();
        std::mem::take(&mut self.held_bytes)
    }

    /// Frees the partial transfer; returns the bytes it was charged.
    fn drop_transfer(&mut self) -> usize {
        self.transfer.take().map_or(0, |t| t.data.len())
    }

    fn reset_connection(&mut self) {
        if self.status != DocStatus::Refused {
            self.status = DocStatus::Waiting;
        }
        self.handle = None;
        // A partial transfer is kept: the next Open asks to resume it.
        self.drop_held();
        self.held_overflow = false;
        // The next Open asks for a fresh sync of a dropped transfer.
        self.transfer_dropped = None;
        self.status_requested = None;
    }
}

/// One client connection carrying many documents, surviving transport loss.
///
/// Documents live in a [`Registry`] the application owns and lends to the
/// calls that need them. See the crate docs for the driving contract.
///
/// ```
/// use std::time::Instant;
/// use crdt_socket_sync::client::{ClientConfig, ClientEvent, ClientSession, Status};
///
/// let now = Instant::now();
/// let mut client = ClientSession::new(ClientConfig { peer: "me".into(), ..Default::default() }, now);
/// client.connect(now); // the transport is up: the Hello is queued
/// let hello = client.poll_transmit().unwrap();
/// assert!(!hello.is_empty());
/// assert_eq!(client.poll_event(), Some(ClientEvent::Status(Status::Connecting)));
/// ```
pub struct ClientSession {
    config: ClientConfig,
    phase: Phase,
    inbound: Inbound,
    /// Lent to `inbound` for each input, as a hub does; kept across
    /// reconnections (it holds nothing of a connection between inputs).
    inflate: InflateScratch,
    outbound: Outbound,
    events: VecDeque<ClientEvent>,
    docs: BTreeMap<Arc<str>, ClientDoc>,
    handles: BTreeMap<DocId, Arc<str>>,
    epoch: Instant,
    now: Instant,
    /// When the last whole, valid frame arrived. Liveness counts frames,
    /// not bytes: a frame that never completes (a corrupted length, a peer
    /// trickling bytes) does not keep the connection alive.
    last_frame: Instant,
    next_ping: Option<Instant>,
    ping_interval: Duration,
    session: Option<SessionId>,
    stats: ClientStats,
    scratch: Vec<Message>,
    rng: Rng,
    /// Failed or short-lived connection attempts in a row.
    attempts: u32,
    /// Sum of every document's `held_bytes`.
    held_bytes: usize,
    /// Bytes of every document's partial transfer together (kept across
    /// reconnections, as the transfers are); at most
    /// `Limits::max_transfer_len`.
    transfer_bytes: usize,
    connected_at: Option<Instant>,
    /// What the last `Welcome` said about durability (`None` before the
    /// first handshake; kept while offline).
    server_durable: Option<bool>,
}

impl ClientSession {
    /// A session with no transport yet.
    pub fn new(config: ClientConfig, now: Instant) -> Self {
        let inbound = Inbound::new(config.framing);
        let outbound = Outbound::new(&config.limits);
        ClientSession {
            phase: Phase::Idle,
            inbound,
            inflate: InflateScratch::default(),
            outbound,
            events: VecDeque::new(),
            docs: BTreeMap::new(),
            handles: BTreeMap::new(),
            epoch: now,
            now,
            last_frame: now,
            next_ping: None,
            ping_interval: config.ping_interval.unwrap_or(Duration::from_secs(2)),
            session: None,
            stats: ClientStats::default(),
            scratch: Vec::new(),
            rng: Rng::new(config.seed),
            attempts: 0,
            held_bytes: 0,
            transfer_bytes: 0,
            connected_at: None,
            server_durable: None,
            config,
        }
    }

    /// The current status.
    pub fn status(&self) -> Status {
        match self.phase {
            Phase::Idle => Status::Idle,
            Phase::Handshaking { .. } => Status::Connecting,
            Phase::Connected => Status::Connected,
            Phase::Disconnected {
                reconnect_at: None,
                dialing: false,
            } => Status::Disconnected,
            Phase::Disconnected { .. } => Status::Reconnecting,
            Phase::Closed => Status::Closed,
        }
    }

    /// The session id of the current connection.
    pub fn session_id(&self) -> Option<SessionId> {
        self.session
    }

    /// Whether the server stores documents durably, as its last `Welcome`
    /// announced; `None` before the first handshake. Against a server that
    /// says `false`, acknowledgements never report updates durable.
    pub fn server_durable(&self) -> Option<bool> {
        self.server_durable
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// The sync status of a document.
    pub fn doc_status(&self, name: &str) -> Option<DocStatus> {
        self.docs.get(name).map(|d| d.status)
    }

    /// Local updates of `name` not yet acknowledged by the server.
    pub fn unacknowledged(&self, name: &str) -> usize {
        self.docs.get(name).map_or(0, |d| d.outbox.len())
    }

    /// Bytes queued for sending.
    pub fn queued_bytes(&self) -> usize {
        self.outbound.bytes()
    }

    /// Whether the session can take more input: `false` while its send
    /// queue is over half its limit (stop reading until a drain).
    pub fn wants_input(&self) -> bool {
        self.outbound.bytes() <= self.config.limits.max_outbound_bytes / 2
    }

    fn set_status(&mut self, phase: Phase) {
        let before = self.status();
        self.phase = phase;
        let after = self.status();
        if before != after {
            self.events.push_back(ClientEvent::Status(after));
        }
    }

    fn tick(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }

    fn send(&mut self, msg: &Message) {
        let _ = self.outbound.push(msg, Priority::Control);
    }

    // ---- commands ----

    /// A new transport is up: starts the handshake. Any previous
    /// connection's unsent frames are dropped; unacknowledged updates stay
    /// in the outbox and reach the server after the documents re-sync.
    pub fn connect(&mut self, now: Instant) {
        self.tick(now);
        if self.phase == Phase::Closed {
            return;
        }
        if matches!(self.phase, Phase::Handshaking { .. } | Phase::Connected) {
            self.lose_connection(CloseCause::TransportLost);
        }
        self.inbound = Inbound::new(self.config.framing);
        self.outbound.reset(&self.config.limits);
        self.last_frame = self.now;
        self.next_ping = None;
        let compression = if self.config.offer_deflate {
            vec![Compression::Deflate, Compression::None]
        } else {
            vec![Compression::None]
        };
        self.send(&Message::Hello {
            versions: PROTOCOL_VERSIONS.to_vec(),
            peer: self.config.peer.clone(),
            token: Bytes(self.config.token.clone()),
            compression,
            limits: self.config.limits.peer_limits(),
        });
        let deadline = self.now.checked_add(self.config.handshake_timeout);
        self.set_status(Phase::Handshaking { deadline });
    }

    /// The transport went away without a `Close`.
    pub fn transport_lost(&mut self, now: Instant) {
        self.tick(now);
        if matches!(self.phase, Phase::Handshaking { .. } | Phase::Connected) {
            self.lose_connection(CloseCause::TransportLost);
        }
    }

    /// Closes the connection for good, queueing a `Close` for the server.
    pub fn close(&mut self, now: Instant) {
        self.tick(now);
        match self.phase {
            Phase::Closed => {}
            Phase::Handshaking { .. } | Phase::Connected => {
                self.send(&Message::Close {
                    reason: CloseReason::Normal,
                    message: String::new(),
                });
                self.end_connection(CloseCause::Local(CloseReason::Normal));
                self.set_status(Phase::Closed);
            }
            _ => self.set_status(Phase::Closed),
        }
    }

    /// Starts syncing document `name` from `registry` (opened there if
    /// needed). Works offline: the document opens on the next connection.
    pub fn open<R: Registry>(
        &mut self,
        registry: &mut R,
        name: &str,
        now: Instant,
    ) -> Result<(), CommandError> {
        self.tick(now);
        if self.phase == Phase::Closed {
            return Err(CommandError::Closed);
        }
        if name.is_empty() || name.len() > self.config.limits.max_name_len {
            return Err(CommandError::LimitExceeded(format!(
                "document name must be 1..={} bytes",
                self.config.limits.max_name_len
            )));
        }
        if self.docs.contains_key(name) {
            return Ok(());
        }
        if self.docs.len() >= self.config.limits.max_docs_per_connection {
            return Err(CommandError::LimitExceeded(format!(
                "at most {} documents",
                self.config.limits.max_docs_per_connection
            )));
        }
        let version = registry.open(name)?.version();
        let name: Arc<str> = name.into();
        let mut doc = ClientDoc::new(Arc::clone(&name));
        if self.phase == Phase::Connected {
            doc.status = DocStatus::Opening;
            self.send(&Message::Open {
                name: name.to_string(),
                version: Bytes(version),
                resume: None,
            });
        }
        self.docs.insert(name, doc);
        Ok(())
    }

    /// Stops syncing `name` (the connection stays open).
    pub fn close_doc(&mut self, name: &str) -> Result<(), CommandError> {
        let doc = self
            .docs
            .remove(name)
            .ok_or_else(|| CommandError::UnknownDocument(name.to_string()))?;
        self.held_bytes -= doc.held_bytes;
        self.transfer_bytes -= doc.transfer.as_ref().map_or(0, |t| t.data.len());
        if let Some(handle) = doc.handle {
            self.handles.remove(&handle);
            if self.phase == Phase::Connected {
                self.send(&Message::CloseDoc { doc: handle });
            }
        }
        Ok(())
    }

    /// Sends the local edits made to `name` with the native CRDT API since
    /// the last call ([`Document::take_local_update`]). Returns the update's
    /// sequence number, or `None` when there was nothing to send. Offline,
    /// the update waits in the outbox.
    pub fn flush_local<R: Registry>(
        &mut self,
        registry: &mut R,
        name: &str,
        now: Instant,
    ) -> Result<Option<u64>, CommandError> {
        self.tick(now);
        self.check_writable(name)?;
        let Some(d) = registry.get(name) else {
            return Err(CommandError::UnknownDocument(name.to_string()));
        };
        match d.take_local_update() {
            Some(update) => self.queue_update(name, update).map(Some),
            None => Ok(None),
        }
    }

    /// Sends an update the application encoded itself.
    pub fn send_update(
        &mut self,
        name: &str,
        update: Vec<u8>,
        now: Instant,
    ) -> Result<u64, CommandError> {
        self.tick(now);
        self.check_writable(name)?;
        self.queue_update(name, update)
    }

    fn check_writable(&self, name: &str) -> Result<(), CommandError> {
        if self.phase == Phase::Closed {
            return Err(CommandError::Closed);
        }
        let doc = self
            .docs
            .get(name)
            .ok_or_else(|| CommandError::UnknownDocument(name.to_string()))?;
        if doc.access != Access::ReadWrite {
            return Err(CommandError::ReadOnly(name.to_string()));
        }
        let limits = &self.config.limits;
        if doc.outbox_bytes >= limits.max_outbox_bytes
            || doc.outbox.len() >= limits.max_outbox_updates
        {
            return Err(CommandError::Backpressure {
                name: name.to_string(),
                queued: doc.outbox_bytes,
                limit: limits.max_outbox_bytes,
            });
        }
        if doc.status == DocStatus::Synced && !self.outbound.has_room(0) {
            return Err(CommandError::Backpressure {
                name: name.to_string(),
                queued: self.outbound.bytes(),
                limit: limits.max_outbound_bytes,
            });
        }
        Ok(())
    }

    /// Puts `update` in the outbox and, when the document is synced, on the
    /// wire.
    fn queue_update(&mut self, name: &str, update: Vec<u8>) -> Result<u64, CommandError> {
        let connected = self.phase == Phase::Connected;
        let Some(doc) = self.docs.get_mut(name) else {
            return Err(CommandError::UnknownDocument(name.to_string()));
        };
        let seq = doc.next_seq;
        doc.next_seq += 1;
        if connected
            && doc.status == DocStatus::Synced
            && let Some(handle) = doc.handle
        {
            let msg = Message::Update {
                doc: handle,
                seq,
                data: Bytes(update.clone()),
            };
            // Room was checked; control priority keeps the update from being
            // lost between the check and the push.
            let _ = self.outbound.push(&msg, Priority::Control);
        }
        doc.outbox_bytes += update.len();
        doc.outbox.push_back((seq, update));
        doc.version_dirty = true;
        Ok(seq)
    }

    /// Asks the server for everything `name` lacks (e.g. after suspecting
    /// divergence).
    pub fn request_sync<R: Registry>(
        &mut self,
        registry: &mut R,
        name: &str,
    ) -> Result<(), CommandError> {
        let doc = self
            .docs
            .get(name)
            .ok_or_else(|| CommandError::UnknownDocument(name.to_string()))?;
        let (Some(handle), Phase::Connected) = (doc.handle, self.phase) else {
            return Ok(()); // A sync happens anyway on (re)connect.
        };
        let version = registry
            .get(name)
            .ok_or_else(|| CommandError::UnknownDocument(name.to_string()))?
            .version();
        self.send(&Message::SyncRequest {
            doc: handle,
            version: Bytes(version),
        });
        Ok(())
    }

    /// Sends a new auth token; the server re-authorizes every open document
    /// without reconnecting.
    pub fn refresh_token(&mut self, token: Vec<u8>) {
        self.config.token = token.clone();
        if self.phase == Phase::Connected {
            self.send(&Message::RefreshToken {
                token: Bytes(token),
            });
        }
    }

    // ---- input ----

    /// Bytes received from the transport.
    pub fn handle_input<R: Registry>(&mut self, now: Instant, bytes: &[u8], registry: &mut R) {
        self.tick(now);
        if !matches!(self.phase, Phase::Handshaking { .. } | Phase::Connected) {
            return;
        }
        self.stats.bytes_in += bytes.len() as u64;
        let mut msgs = std::mem::take(&mut self.scratch);
        msgs.clear();
        let fed =
            self.inbound
                .feed_frames(bytes, &self.config.limits, &mut self.inflate, &mut msgs);
        if matches!(fed, Ok(n) if n > 0) {
            self.last_frame = self.now;
        }
        for msg in msgs.drain(..) {
            if !matches!(self.phase, Phase::Handshaking { .. } | Phase::Connected) {
                break;
            }
            self.on_message(msg, registry);
        }
        self.scratch = msgs;
        if let Err(e) = fed {
            self.fail(CloseReason::ProtocolError, CloseCause::Inbound(e));
        }
    }

    fn fail(&mut self, reason: CloseReason, cause: CloseCause) {
        if !matches!(self.phase, Phase::Handshaking { .. } | Phase::Connected) {
            return;
        }
        self.send(&Message::Close {
            reason,
            message: cause.to_string(),
        });
        self.lose_connection(cause);
    }

    /// Ends the current connection: reports `Closed` once and resets every
    /// document to wait for the next connection.
    fn lose_connection(&mut self, cause: CloseCause) {
        let stable = match (self.connected_at, &self.config.reconnect) {
            (Some(at), Some(policy)) => at
                .checked_add(policy.reset_after)
                .is_some_and(|t| self.now >= t),
            _ => false,
        };
        if stable {
            self.attempts = 0;
        }
        // Retrying cannot fix a refused token or version; only an
        // unavailable server is worth retrying.
        let retry = !matches!(
            cause,
            CloseCause::Rejected { code, .. } if code != RejectCode::Unavailable
        );
        self.end_connection(cause);
        if retry {
            self.schedule_reconnect();
        } else {
            self.set_status(Phase::Disconnected {
                reconnect_at: None,
                dialing: false,
            });
        }
    }

    /// Picks the next dial time from the backoff policy (or gives up).
    fn schedule_reconnect(&mut self) {
        let Some(policy) = self.config.reconnect else {
            return self.set_status(Phase::Disconnected {
                reconnect_at: None,
                dialing: false,
            });
        };
        self.attempts = self.attempts.saturating_add(1);
        match policy.delay(self.attempts, &mut self.rng) {
            Some(delay) => {
                let at = self.now.checked_add(delay);
                self.set_status(Phase::Disconnected {
                    reconnect_at: at,
                    dialing: false,
                });
            }
            None => {
                self.events.push_back(ClientEvent::GaveUp {
                    attempts: self.attempts - 1,
                });
                self.set_status(Phase::Disconnected {
                    reconnect_at: None,
                    dialing: false,
                });
            }
        }
    }

    /// The transport the application tried to open after a `Dial` event
    /// could not be established: schedules the next attempt.
    pub fn dial_failed(&mut self, now: Instant) {
        self.tick(now);
        if let Phase::Disconnected { dialing: true, .. } = self.phase {
            self.schedule_reconnect();
        }
    }

    /// Ends the connection (queueing `Close` for the server) and cancels
    /// automatic reconnection; [`ClientSession::connect`] starts again.
    /// Unlike [`ClientSession::close`], the session stays usable.
    pub fn disconnect(&mut self, now: Instant) {
        self.tick(now);
        match self.phase {
            Phase::Handshaking { .. } | Phase::Connected => {
                self.send(&Message::Close {
                    reason: CloseReason::Normal,
                    message: String::new(),
                });
                self.end_connection(CloseCause::Local(CloseReason::Normal));
            }
            Phase::Closed => return,
            _ => {}
        }
        self.set_status(Phase::Disconnected {
            reconnect_at: None,
            dialing: false,
        });
    }

    fn end_connection(&mut self, cause: CloseCause) {
        self.events.push_back(ClientEvent::Closed { cause });
        self.connected_at = None;
        self.handles.clear();
        self.session = None;
        self.next_ping = None;
        self.held_bytes = 0;
        for doc in self.docs.values_mut() {
            doc.reset_connection();
            // Our state is re-published on the next connection.
            doc.presence.last_sent = None;
            doc.presence.dirty = doc.presence.local.is_some();
            let name = Arc::clone(&doc.name);
            for (session, (_, peer)) in std::mem::take(&mut doc.presence.peers) {
                self.events.push_back(ClientEvent::PresenceChanged {
                    name: Arc::clone(&name),
                    session,
                    identity: peer.identity,
                    state: None,
                });
            }
        }
    }

    fn on_message<R: Registry>(&mut self, msg: Message, registry: &mut R) {
        if let Phase::Handshaking { .. } = self.phase {
            return match msg {
                Message::Welcome {
                    version,
                    session,
                    compression,
                    limits,
                    heartbeat_ms,
                    durable,
                } => self.on_welcome(
                    version,
                    session,
                    compression,
                    (limits, heartbeat_ms, durable),
                    registry,
                ),
                Message::Reject { code, message } => {
                    self.lose_connection(CloseCause::Rejected { code, message });
                }
                Message::Close { reason, message } => {
                    self.lose_connection(CloseCause::Peer { reason, message });
                }
                other => self.fail(
                    CloseReason::ProtocolError,
                    CloseCause::Protocol(format!("{} before Welcome", other.name())),
                ),
            };
        }
        match msg {
            Message::Broadcast { doc, data } => self.on_broadcast(doc, data.0, registry),
            Message::Ack {
                doc,
                applied,
                durable,
            } => self.on_ack(doc, applied, durable),
            Message::Ping { t } => self.send(&Message::Pong { echo: t }),
            Message::Pong { echo } => {
                self.on_pong(echo);
                self.report_versions(registry);
            }
            Message::Opened { name, doc, access } => self.on_opened(&name, doc, access),
            Message::OpenRefused {
                name,
                code,
                message,
            } => {
                let mut freed = 0;
                let name = self.docs.get_mut(name.as_str()).map(|d| {
                    // A refused document is not opened again: what it
                    // holds for a resumption is of no more use.
                    d.status = DocStatus::Refused;
                    freed = d.drop_transfer();
                    Arc::clone(&d.name)
                });
                self.transfer_bytes -= freed;
                self.events.push_back(ClientEvent::DocumentError {
                    name,
                    seq: None,
                    code,
                    message,
                });
            }
            Message::SyncChunk {
                doc,
                transfer,
                kind,
                offset,
                total,
                data,
            } => self.on_chunk(doc, transfer, kind, offset, total, data.0),
            Message::SyncDone { doc, version } => self.on_sync_done(doc, &version, registry),
            Message::SyncRequest { doc, version } => self.send_missing(doc, &version, registry),
            Message::CloseDoc { doc } => {
                if let Some(name) = self.handles.remove(&doc) {
                    if let Some(d) = self.docs.get_mut(&name) {
                        d.handle = None;
                        d.status = DocStatus::Refused;
                        let freed = d.drop_held();
                        self.held_bytes -= freed;
                        let freed = d.drop_transfer();
                        self.transfer_bytes -= freed;
                    }
                    // The server retires a handle it closed on its own until
                    // we close it too (an update of ours may still be on its
                    // way under it): closing frees it for the next document.
                    self.send(&Message::CloseDoc { doc });
                }
            }
            Message::Error {
                doc,
                seq,
                code,
                message,
            } => self.on_error(doc, seq, code, message),
            Message::Close { reason, message } => {
                self.lose_connection(CloseCause::Peer { reason, message });
            }
            Message::Awareness { doc, entries } => self.on_awareness(doc, entries),
            Message::App {
                kind,
                route,
                from,
                data,
            } => {
                let doc = match route {
                    Route::Document(h) => self.handles.get(&h).cloned(),
                    _ => None,
                };
                self.events.push_back(ClientEvent::AppMessage {
                    kind,
                    from,
                    doc,
                    data: data.0,
                });
            }
            other => self.fail(
                CloseReason::ProtocolError,
                CloseCause::Protocol(format!("{} is not a server message here", other.name())),
            ),
        }
    }

    fn on_welcome<R: Registry>(
        &mut self,
        version: u16,
        session: SessionId,
        compression: Compression,
        (limits, heartbeat_ms, durable): (PeerLimits, u32, bool),
        registry: &mut R,
    ) {
        if !PROTOCOL_VERSIONS.contains(&version)
            || (compression == Compression::Deflate && !self.config.offer_deflate)
        {
            return self.fail(
                CloseReason::ProtocolError,
                CloseCause::Protocol(
                    "server chose a version or compression we did not offer".into(),
                ),
            );
        }
        // Our frames are cut to the server's limit (a larger one is capped
        // by our own); one below the minimum would fragment everything.
        if limits.max_frame_len < PeerLimits::MIN_FRAME_LEN {
            return self.fail(
                CloseReason::ProtocolError,
                CloseCause::Protocol(format!(
                    "server max_frame_len {} is below {}",
                    limits.max_frame_len,
                    PeerLimits::MIN_FRAME_LEN
                )),
            );
        }
        self.outbound
            .negotiate(limits, compression, self.config.compress_threshold);
        self.session = Some(session);
        self.ping_interval = self
            .config
            .ping_interval
            .unwrap_or(Duration::from_millis(u64::from(heartbeat_ms.max(100))));
        self.next_ping = self.now.checked_add(self.ping_interval);
        self.connected_at = Some(self.now);
        self.server_durable = Some(durable);
        self.set_status(Phase::Connected);
        self.events.push_back(ClientEvent::Connected {
            session,
            version,
            compression,
            durable,
        });
        let names: Vec<Arc<str>> = self.docs.keys().cloned().collect();
        for name in names {
            let Some(d) = registry.get(&name) else {
                continue;
            };
            let version = d.version();
            let mut resume = None;
            if let Some(doc) = self.docs.get_mut(&name) {
                if doc.status == DocStatus::Refused {
                    continue;
                }
                doc.status = DocStatus::Opening;
                resume = doc
                    .transfer
                    .as_mut()
                    .filter(|t| !t.data.is_empty())
                    .map(|t| {
                        t.resumed = true;
                        Resume {
                            transfer: t.id,
                            offset: t.data.len() as u64,
                        }
                    });
            }
            self.send(&Message::Open {
                name: name.to_string(),
                version: Bytes(version),
                resume,
            });
        }
    }

    fn on_opened(&mut self, name: &str, handle: DocId, access: Access) {
        let Some(doc) = self.docs.get_mut(name) else {
            // Opened for a document closed meanwhile: tell the server.
            self.send(&Message::CloseDoc { doc: handle });
            return;
        };
        doc.handle = Some(handle);
        doc.access = access;
        if doc.status == DocStatus::Opening {
            doc.status = DocStatus::Syncing;
        }
        let rejected = if access == Access::ReadWrite {
            None
        } else {
            doc.reject_outbox(ErrorCode::ReadOnly)
        };
        let name = Arc::clone(&doc.name);
        self.handles.insert(handle, Arc::clone(&name));
        self.events
            .push_back(ClientEvent::DocumentOpened { name, access });
        self.events.extend(rejected);
        self.flush_presence();
    }

    fn doc_by_handle(&mut self, handle: DocId) -> Option<&mut ClientDoc> {
        let name = self.handles.get(&handle)?;
        self.docs.get_mut(name)
    }

    fn on_chunk(
        &mut self,
        handle: DocId,
        id: u64,
        kind: SyncKind,
        offset: u64,
        total: u64,
        data: Vec<u8>,
    ) {
        let max = self.config.limits.max_transfer_len;
        let Some(doc) = self.doc_by_handle(handle) else {
            return self.fail(
                CloseReason::ProtocolError,
                CloseCause::Protocol("sync chunk for an unknown document".into()),
            );
        };
        let name = Arc::clone(&doc.name);
        if total > max {
            let freed = doc.drop_transfer();
            self.transfer_bytes -= freed;
            return self.fail(
                CloseReason::LimitExceeded,
                CloseCause::Protocol(format!(
                    "transfer for {name:?} of {total} bytes exceeds {max}"
                )),
            );
        }
        if offset != 0 && doc.transfer_dropped == Some(id) {
            // The rest of a transfer dropped for the budget: the document
            // catches up after its `SyncDone` instead.
            return;
        }
        let mut freed = 0;
        if offset == 0 {
            freed = doc.drop_transfer();
            doc.transfer_dropped = None;
            doc.transfer = Some(TransferBuf {
                id,
                kind,
                total,
                data: Vec::new(),
                resumed: false,
            });
        }
        let fits = match &doc.transfer {
            Some(t) => {
                t.id == id
                    && t.total == total
                    && t.data.len() as u64 == offset
                    && offset.saturating_add(data.len() as u64) <= total
            }
            None => false,
        };
        if !fits {
            // A transfer that went wrong cannot be resumed (after a server
            // restart, a resumed id may name another payload): the next
            // connection syncs afresh instead of failing the same way again.
            freed += doc.drop_transfer();
            self.transfer_bytes -= freed;
            return self.fail(
                CloseReason::ProtocolError,
                CloseCause::Protocol("sync chunk out of order".into()),
            );
        }
        self.transfer_bytes -= freed;
        // This transfer's bytes after the chunk are at most `total`, so
        // dropping the others always makes room.
        let budget = usize::try_from(max).unwrap_or(usize::MAX);
        let needed = self.transfer_bytes.saturating_add(data.len());
        if needed > budget {
            self.drop_other_transfers(&name, needed - budget);
        }
        if let Some(t) = self
            .docs
            .get_mut(&name)
            .and_then(|doc| doc.transfer.as_mut())
        {
            t.data.extend_from_slice(&data);
            self.transfer_bytes += data.len();
        }
    }

    /// Drops the partial transfers of documents other than `keep`, largest
    /// first, until at least `excess` bytes are freed. An honest server
    /// sends one transfer at a time, so what is dropped is a transfer kept
    /// from an earlier connection for resumption (or a hostile server's).
    fn drop_other_transfers(&mut self, keep: &str, excess: usize) {
        let mut partial: Vec<(usize, Arc<str>)> = self
            .docs
            .iter()
            .filter(|(name, _)| &***name != keep)
            .filter_map(|(name, doc)| Some((doc.transfer.as_ref()?.data.len(), Arc::clone(name))))
            .collect();
        // Largest first; ties in name order (deterministic).
        partial.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let mut freed = 0;
        for (_, name) in partial {
            if freed >= excess {
                break;
            }
            let Some(doc) = self.docs.get_mut(&name) else {
                continue;
            };
            // The server may still send the rest (this connection's Open
            // asked to resume it): those chunks are discarded.
            doc.transfer_dropped = doc.transfer.as_ref().map(|t| t.id);
            let bytes = doc.drop_transfer();
            self.transfer_bytes -= bytes;
            freed += bytes;
        }
    }

    fn on_sync_done<R: Registry>(
        &mut self,
        handle: DocId,
        server_version: &[u8],
        registry: &mut R,
    ) {
        let Some(doc) = self.doc_by_handle(handle) else {
            return self.fail(
                CloseReason::ProtocolError,
                CloseCause::Protocol("sync done for an unknown document".into()),
            );
        };
        let name = Arc::clone(&doc.name);
        let transfer = doc.transfer.take();
        let dropped = doc.transfer_dropped.take().is_some();
        let held = std::mem::take(&mut doc.held);
        let overflow = std::mem::replace(&mut doc.held_overflow, false);
        self.held_bytes -= std::mem::take(&mut doc.held_bytes);
        self.transfer_bytes -= transfer.as_ref().map_or(0, |t| t.data.len());
        let Some(d) = registry.get(&name) else {
            return;
        };
        // A gap the sync closed may be re-requested at once; one it did not
        // close (the server lacks the dependency too) only after
        // `resync_after`, so two clients cannot keep each other re-syncing.
        if d.pending_bytes() == 0
            && let Some(doc) = self.docs.get_mut(&name)
        {
            doc.status_requested = None;
        }
        let Some(d) = registry.get(&name) else {
            return;
        };
        let mut refetch = overflow || dropped;
        if let Some(t) = transfer {
            if t.data.len() as u64 != t.total {
                return self.fail(
                    CloseReason::ProtocolError,
                    CloseCause::Protocol("sync done before the transfer completed".into()),
                );
            }
            let result = match t.kind {
                SyncKind::Snapshot => d.load_snapshot(&t.data).err(),
                _ => match d.apply(&t.data) {
                    ApplyOutcome::Invalid(e) => Some(e),
                    _ => None,
                },
            };
            if let Some(e) = result {
                // A resumed transfer whose parts do not fit together: ask
                // once for a fresh sync (not resumed, so it cannot recur).
                refetch |= t.resumed;
                self.events.push_back(ClientEvent::DocumentError {
                    name: Some(Arc::clone(&name)),
                    seq: None,
                    code: ErrorCode::InvalidUpdate,
                    message: format!("initial sync payload refused: {e}"),
                });
            }
        }
        if !held.is_empty() {
            let slices: Vec<&[u8]> = held.iter().map(|h| h.as_slice()).collect();
            let mut outcomes = Vec::with_capacity(slices.len());
            d.apply_batch(&slices, &mut outcomes);
            self.stats.remote_updates += outcomes.len() as u64;
        }
        let first = self
            .docs
            .get(&name)
            .is_some_and(|doc| doc.status != DocStatus::Synced);
        if let Some(doc) = self.docs.get_mut(&name) {
            doc.status = DocStatus::Synced;
        }
        // Send what the server lacks, then our version.
        self.send_missing(handle, server_version, registry);
        let Some(d) = registry.get(&name) else {
            return;
        };
        let version = d.version();
        self.send(&Message::SyncDone {
            doc: handle,
            version: Bytes(version.clone()),
        });
        if refetch {
            self.send(&Message::SyncRequest {
                doc: handle,
                version: Bytes(version),
            });
        }
        if first {
            self.events.push_back(ClientEvent::Synced { name });
        }
    }

    /// Sends what the server (at `server_version`) lacks as one new outbox
    /// update. It covers every older unacknowledged update, so those are not
    /// resent; the cumulative ack of the new one clears them all.
    fn send_missing<R: Registry>(
        &mut self,
        handle: DocId,
        server_version: &[u8],
        registry: &mut R,
    ) {
        let Some(doc) = self.doc_by_handle(handle) else {
            return;
        };
        if doc.access != Access::ReadWrite {
            return;
        }
        let acks_awaited = !doc.outbox.is_empty();
        let name = Arc::clone(&doc.name);
        let Some(d) = registry.get(&name) else {
            return;
        };
        // Nothing the server lacks and no acknowledgement awaited: no update
        // (an unacknowledged outbox still gets one, whose cumulative ack
        // settles it).
        if !acks_awaited && d.contained_in(server_version) {
            return;
        }
        let delta = match d.delta_since(server_version) {
            Ok(delta) => delta,
            Err(_) => d.snapshot(),
        };
        let Some(doc) = self.docs.get_mut(&name) else {
            return;
        };
        let seq = doc.next_seq;
        doc.next_seq += 1;
        doc.outbox_bytes += delta.len();
        doc.outbox.push_back((seq, delta.clone()));
        self.send(&Message::Update {
            doc: handle,
            seq,
            data: Bytes(delta),
        });
    }

    fn on_broadcast<R: Registry>(&mut self, handle: DocId, data: Vec<u8>, registry: &mut R) {
        let max_held = self.config.limits.max_pending_bytes;
        let held_total = self.held_bytes;
        let Some(doc) = self.doc_by_handle(handle) else {
            // A broadcast racing our CloseDoc; harmless.
            return;
        };
        if doc.status != DocStatus::Synced {
            let cost = data.len().saturating_add(HELD_OVERHEAD);
            if doc.held_overflow {
                return;
            }
            if held_total.saturating_add(cost) > max_held {
                // The sync is followed by a catch-up request instead: what
                // is held is of no more use, free it now.
                doc.held_overflow = true;
                let freed = doc.drop_held();
                self.held_bytes -= freed;
            } else {
                doc.held_bytes += cost;
                doc.held.push(data);
                self.held_bytes += cost;
            }
            return;
        }
        let name = Arc::clone(&doc.name);
        let Some(d) = registry.get(&name) else {
            return;
        };
        let outcome = d.apply(&data);
        self.stats.remote_updates += 1;
        if let Some(doc) = self.docs.get_mut(&name) {
            doc.version_dirty = true;
        }
        if matches!(outcome, ApplyOutcome::Pending { .. }) {
            let version = d.version();
            if let Some(doc) = self.docs.get_mut(&name)
                && doc.status_requested.is_none_or(|at| {
                    at.checked_add(self.config.resync_after)
                        .is_some_and(|t| self.now >= t)
                })
            {
                doc.status_requested = Some(self.now);
                self.send(&Message::SyncRequest {
                    doc: handle,
                    version: Bytes(version),
                });
            }
        }
        if let ApplyOutcome::Invalid(e) = &outcome {
            self.events.push_back(ClientEvent::DocumentError {
                name: Some(Arc::clone(&name)),
                seq: None,
                code: ErrorCode::InvalidUpdate,
                message: format!("remote update refused: {e}"),
            });
            return;
        }
        self.events
            .push_back(ClientEvent::RemoteUpdate { name, outcome });
    }

    fn on_ack(&mut self, handle: DocId, applied: u64, durable: u64) {
        let Some(doc) = self.doc_by_handle(handle) else {
            return;
        };
        while let Some((seq, update)) = doc.outbox.front() {
            if *seq > applied {
                break;
            }
            doc.outbox_bytes -= update.len();
            doc.outbox.pop_front();
        }
        let name = Arc::clone(&doc.name);
        self.events.push_back(ClientEvent::Acknowledged {
            name,
            applied,
            durable,
        });
    }

    /// Tells the server the version of every synced document that changed
    /// since the last report (once per ping round trip), so it knows what
    /// this client holds (history pruning).
    fn report_versions<R: Registry>(&mut self, registry: &mut R) {
        let dirty: Vec<(DocId, Arc<str>)> = self
            .docs
            .values_mut()
            .filter(|d| d.version_dirty && d.status == DocStatus::Synced)
            .filter_map(|d| {
                d.version_dirty = false;
                d.handle.map(|h| (h, Arc::clone(&d.name)))
            })
            .collect();
        for (handle, name) in dirty {
            if let Some(d) = registry.get(&name) {
                let version = Bytes(d.version());
                self.send(&Message::VersionReport {
                    doc: handle,
                    version,
                });
            }
        }
    }

    fn on_pong(&mut self, echo: u64) {
        // `echo` is the peer's copy of our timestamp: anything may come back.
        let Some(sent) = self.epoch.checked_add(Duration::from_micros(echo)) else {
            return;
        };
        if let Some(sample) = self.now.checked_duration_since(sent) {
            self.stats.rtt = Some(match self.stats.rtt {
                None => sample,
                Some(srtt) => (srtt * 7 + sample) / 8,
            });
        }
    }

    fn on_error(
        &mut self,
        handle: Option<DocId>,
        seq: Option<u64>,
        code: ErrorCode,
        message: String,
    ) {
        let name = handle.and_then(|h| self.handles.get(&h).cloned());
        if let Some(name) = &name
            && let Some(doc) = self.docs.get_mut(name)
        {
            match (code, seq) {
                // The server will never take this update: drop it.
                (ErrorCode::InvalidUpdate, Some(seq)) => {
                    if let Some(i) = doc.outbox.iter().position(|(s, _)| *s == seq)
                        && let Some((_, u)) = doc.outbox.remove(i)
                    {
                        doc.outbox_bytes -= u.len();
                    }
                }
                (ErrorCode::ReadOnly, _) => {
                    doc.access = Access::ReadOnly;
                    let rejected = doc.reject_outbox(ErrorCode::ReadOnly);
                    self.events.extend(rejected);
                }
                _ => {}
            }
        }
        self.events.push_back(ClientEvent::DocumentError {
            name,
            seq,
            code,
            message,
        });
    }

    // ---- presence and application messages ----

    /// Sets (or, with `None`, clears) this client's presence state in
    /// document `name`: a cursor, a selection, a user name... It reaches the
    /// other subscribers at most every `presence_throttle` (the latest state
    /// always goes out), is renewed before the server expires it, and is
    /// re-published after a reconnect. It is never persisted.
    pub fn set_presence(
        &mut self,
        name: &str,
        state: Option<Vec<u8>>,
        now: Instant,
    ) -> Result<(), CommandError> {
        self.tick(now);
        let limit = self.config.limits.max_presence_len;
        if let Some(s) = &state
            && s.len() > limit
        {
            return Err(CommandError::LimitExceeded(format!(
                "presence state of {} bytes exceeds {limit}",
                s.len()
            )));
        }
        let doc = self
            .docs
            .get_mut(name)
            .ok_or_else(|| CommandError::UnknownDocument(name.to_string()))?;
        doc.presence.set(state.map(Bytes));
        self.flush_presence();
        Ok(())
    }

    /// Everyone else's presence in document `name`, by session.
    pub fn presence(&self, name: &str) -> Vec<(SessionId, Peer)> {
        self.docs.get(name).map_or_else(Vec::new, |d| {
            d.presence
                .peers
                .iter()
                .map(|(s, (_, p))| (*s, p.clone()))
                .collect()
        })
    }

    /// Sends an application message (needs a live connection).
    pub fn send_app(
        &mut self,
        target: AppTarget,
        kind: u32,
        data: Vec<u8>,
    ) -> Result<(), CommandError> {
        if self.phase != Phase::Connected {
            return Err(CommandError::NotConnected);
        }
        let limit = self.config.limits.max_app_message_len;
        if data.len() > limit {
            return Err(CommandError::LimitExceeded(format!(
                "application message of {} bytes exceeds {limit}",
                data.len()
            )));
        }
        let route = match target {
            AppTarget::Server => Route::Server,
            AppTarget::Session(s) => Route::Session(s),
            AppTarget::Document(name) => {
                let handle = self
                    .docs
                    .get(name.as_str())
                    .and_then(|d| d.handle)
                    .ok_or(CommandError::UnknownDocument(name))?;
                Route::Document(handle)
            }
        };
        let msg = Message::App {
            kind,
            route,
            from: None,
            data: Bytes(data),
        };
        self.outbound
            .push(&msg, Priority::Data)
            .map_err(|_| CommandError::Backpressure {
                name: String::new(),
                queued: self.outbound.bytes(),
                limit: self.config.limits.max_outbound_bytes,
            })
    }

    /// Sends every due presence change or renewal.
    fn flush_presence(&mut self) {
        if self.phase != Phase::Connected {
            return;
        }
        let (now, throttle, renew) = (
            self.now,
            self.config.presence_throttle,
            self.config.presence_renew,
        );
        let mut out = Vec::new();
        for doc in self.docs.values_mut() {
            let Some(handle) = doc.handle else {
                continue;
            };
            let p = &mut doc.presence;
            if p.next_send(now, throttle, renew).is_some_and(|t| t <= now) {
                if !p.dirty && p.local.is_none() {
                    continue;
                }
                out.push(Message::AwarenessSet {
                    doc: handle,
                    clock: p.clock,
                    state: p.local.clone(),
                });
                p.dirty = false;
                p.last_sent = Some(now);
            }
        }
        for m in out {
            self.send(&m);
        }
    }

    fn next_presence_send(&self) -> Option<Instant> {
        if self.phase != Phase::Connected {
            return None;
        }
        let (throttle, renew) = (self.config.presence_throttle, self.config.presence_renew);
        self.docs
            .values()
            .filter(|d| d.handle.is_some())
            .filter_map(|d| d.presence.next_send(self.now, throttle, renew))
            .min()
    }

    fn on_awareness(&mut self, handle: DocId, entries: Vec<AwarenessEntry>) {
        let own = self.session;
        let limits = &self.config.limits;
        let (max_states, max_len) = (limits.max_presence_states, limits.max_presence_len);
        let Some(doc) = self.doc_by_handle(handle) else {
            return;
        };
        let name = Arc::clone(&doc.name);
        for e in doc.presence.apply(own, entries, max_states, max_len) {
            self.events.push_back(ClientEvent::PresenceChanged {
                name: Arc::clone(&name),
                session: e.session,
                identity: e.identity,
                state: e.state,
            });
        }
    }

    // ---- time ----

    /// Fires expired deadlines: handshake timeout, pings, dead-connection
    /// detection. Calling it early does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tick(now);
        match self.phase {
            Phase::Handshaking {
                deadline: Some(deadline),
            } if self.now >= deadline => {
                self.fail(
                    CloseReason::HandshakeTimeout,
                    CloseCause::Local(CloseReason::HandshakeTimeout),
                );
            }
            Phase::Disconnected {
                reconnect_at: Some(at),
                ..
            } if self.now >= at => {
                self.phase = Phase::Disconnected {
                    reconnect_at: None,
                    dialing: true,
                };
                self.events.push_back(ClientEvent::Dial {
                    attempt: self.attempts,
                });
            }
            Phase::Connected => {
                if self
                    .last_frame
                    .checked_add(self.config.dead_after)
                    .is_some_and(|t| self.now >= t)
                {
                    return self.fail(
                        CloseReason::DeadConnection,
                        CloseCause::Local(CloseReason::DeadConnection),
                    );
                }
                self.flush_presence();
                if self.next_ping.is_some_and(|t| self.now >= t) {
                    let t = u64::try_from(self.now.duration_since(self.epoch).as_micros())
                        .unwrap_or(u64::MAX);
                    self.send(&Message::Ping { t });
                    self.next_ping = self.now.checked_add(self.ping_interval);
                }
            }
            _ => {}
        }
    }

    /// When [`ClientSession::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Handshaking { deadline } => deadline,
            Phase::Connected => [
                self.last_frame.checked_add(self.config.dead_after),
                self.next_ping,
                self.next_presence_send(),
            ]
            .into_iter()
            .flatten()
            .min(),
            Phase::Disconnected { reconnect_at, .. } => reconnect_at,
            _ => None,
        }
    }

    // ---- output ----

    /// The next frame to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let mut frame = Vec::new();
        self.poll_transmit_into(&mut frame).then_some(frame)
    }

    /// Like [`ClientSession::poll_transmit`], but appends the frame to
    /// `buf` (which may already hold frames); `false` when there is none. A
    /// caller that reuses `buf` sends without allocating.
    ///
    /// ```
    /// use std::time::Instant;
    /// use crdt_socket_sync::client::{ClientConfig, ClientSession};
    ///
    /// let now = Instant::now();
    /// let mut session = ClientSession::new(ClientConfig::default(), now);
    /// session.connect(now);
    /// let mut buf = Vec::new();
    /// assert!(session.poll_transmit_into(&mut buf)); // the Hello
    /// assert!(!session.poll_transmit_into(&mut buf));
    /// ```
    pub fn poll_transmit_into(&mut self, buf: &mut Vec<u8>) -> bool {
        let start = buf.len();
        if !self.outbound.poll_frame_into(buf) {
            return false;
        }
        self.stats.frames_out += 1;
        self.stats.bytes_out += (buf.len() - start) as u64;
        true
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Everything in one call: a transmit, else an event, else the next
    /// timeout (`None`: nothing to do until input or a command).
    pub fn poll_output(&mut self) -> Option<crate::Output<Vec<u8>, ClientEvent>> {
        if let Some(t) = self.poll_transmit() {
            return Some(crate::Output::Transmit(t));
        }
        if let Some(e) = self.poll_event() {
            return Some(crate::Output::Event(e));
        }
        self.poll_timeout().map(crate::Output::Timeout)
    }
}

impl core::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientSession")
            .field("status", &self.status())
            .field("docs", &self.docs.len())
            .field("queued_bytes", &self.outbound.bytes())
            .finish()
    }
}
