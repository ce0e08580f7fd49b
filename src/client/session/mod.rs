//! The client session state machine, one concept per file:
//!
//! - this file: the session's state (per-document `ClientDoc`, the
//!   connection `Phase`), accessors, input dispatch, timers and output;
//! - `connection`: handshake, loss, close, dialing with the backoff;
//! - `sync`: opening documents, initial sync, broadcasts;
//! - `outbox`: local updates until acknowledged, storage hook, acks;
//! - `awareness`: presence and application messages.
//!
//! Every file adds methods to the one [`ClientSession`]: its handlers
//! share the per-document state, which lives here.

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

mod awareness;
mod connection;
mod outbox;
mod sync;

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
    /// Never connected. `dialing`: a `Dial` event asked for the first
    /// transport and the application is opening it.
    Idle {
        dialing: bool,
    },
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
    /// The highest sequence number the server acknowledged as durable (its
    /// acks are cumulative; kept across connections, as `next_seq` is).
    durable_seq: u64,
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
            durable_seq: 0,
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
            phase: Phase::Idle { dialing: false },
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
            Phase::Idle { .. } => Status::Idle,
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

    /// The highest sequence number of `name`'s local updates the server
    /// acknowledged as durable (every update up to it is on the server's
    /// disk); 0 before the first such acknowledgement, `None` for a
    /// document not open here.
    pub fn durable_seq(&self, name: &str) -> Option<u64> {
        self.docs.get(name).map(|d| d.durable_seq)
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
