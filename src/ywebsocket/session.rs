//! [`YjsSession`]: one y-websocket connection, translated into this crate's
//! protocol for the [`Hub`](crate::server::Hub).
//!
//! The translator stands where a native client would: it sends the hub a
//! `Hello` and an `Open` for the room, turns the Yjs client's sync steps,
//! updates and awareness into `Update`s, `SyncRequest`s and
//! `AwarenessSet`s, and the hub's sync transfers, broadcasts and presence
//! back into y-protocols messages. yrs versions and updates are the same
//! lib0 v1 bytes Yjs speaks, so payloads pass through untouched; every
//! update still goes through the hub, so its limits, bounded queues,
//! coalesced catch-ups, deadlines and typed closes apply unchanged.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::Limits;
use crate::wire::compress::InflateScratch;
use crate::wire::{
    Bytes, CloseReason, Compression, DocId, EncodeError, Encoder, Message, PROTOCOL_VERSIONS,
    SessionId, decode_frame,
};

use super::json::is_json;
use super::protocol::{AwarenessEntries, AwarenessEntry, YDecodeError, YMessage, encode_awareness};

/// Bytes charged against [`YjsConfig::max_held_bytes`] per held message
/// besides its own (its `Vec` and the allocator's share).
const HELD_OVERHEAD: usize = 48;

/// The peer name a translated connection announces in its `Hello`.
pub const YJS_PEER: &str = "y-websocket";

/// Settings of a [`YjsSession`].
///
/// ```
/// use crdt_socket_sync::ywebsocket::YjsConfig;
/// let config = YjsConfig::default();
/// assert_eq!(config.client_idle_timeout.as_secs(), 60);
/// ```
#[derive(Clone, Debug)]
pub struct YjsConfig {
    /// The hub's limits: the frames built for the hub stay within them,
    /// and awareness updates carry at most `max_presence_states` entries.
    pub limits: Limits,
    /// The translator pings the hub for the Yjs client (y-protocols has no
    /// ping) every heartbeat the `Welcome` asks for, but only while the
    /// client sent something within this long; past it the hub's idle
    /// deadline closes the connection (`IdleTimeout`). Yjs providers renew
    /// their awareness every 15 s. Default 60 s.
    pub client_idle_timeout: Duration,
    /// When nothing went to the client for this long, an empty awareness
    /// update goes (at the next heartbeat): y-websocket providers reconnect
    /// after 30 s without a message. Default 10 s.
    pub keepalive: Duration,
    /// Bytes of client messages held until the hub opened the room (they
    /// arrive before the handshake ends), each charged 48 bytes more for
    /// its allocation; past it the connection closes. Default 1 MiB.
    pub max_held_bytes: usize,
    /// Milliseconds since the Unix epoch when the session starts (the
    /// transport reads the wall clock; the core reads none). Yjs clients
    /// keep the clock of every awareness client id they saw, across
    /// reconnections, and ignore a state whose clock is not higher; the
    /// clocks the translator gives other sessions' states are this plus the
    /// milliseconds elapsed (made strictly increasing), so a reconnecting
    /// client accepts them. Default 0.
    pub wall_clock_ms: u64,
}

impl Default for YjsConfig {
    fn default() -> Self {
        YjsConfig {
            limits: Limits::default(),
            client_idle_timeout: Duration::from_secs(60),
            keepalive: Duration::from_secs(10),
            max_held_bytes: 1 << 20,
            wall_clock_ms: 0,
        }
    }
}

/// Why a translated connection ends.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum YjsError {
    /// The Yjs client sent bytes that are not a y-protocols message.
    #[error("bad y-protocols message: {0}")]
    Malformed(#[from] YDecodeError),
    /// The Yjs client sent a message a client may not send.
    #[error("unexpected message from a Yjs client")]
    Unexpected,
    /// More than [`YjsConfig::max_held_bytes`] arrived before the room was
    /// open.
    #[error("too much input before the document was open")]
    TooMuchEarlyInput,
    /// The hub sent something the translator cannot use (a bug, not the
    /// peer's doing).
    #[error("bad frame from the hub: {0}")]
    Hub(String),
}

impl YjsError {
    /// The close reason this error maps to.
    pub fn close_reason(&self) -> CloseReason {
        match self {
            YjsError::TooMuchEarlyInput => CloseReason::LimitExceeded,
            _ => CloseReason::ProtocolError,
        }
    }
}

/// Where the connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// `Hello` sent; waiting for `Welcome`.
    Handshake,
    /// `Open` sent; waiting for `Opened`.
    Opening,
    /// The room is open under `DocId`.
    Open(DocId),
    /// Closed (by the hub or by bad input).
    Closed,
}

/// A peer's presence as last told to the Yjs client, for
/// query-awareness.
#[derive(Clone, Debug)]
struct Known {
    clock: u64,
    state: Option<Bytes>,
}

/// One y-websocket connection, translated (sans-IO).
///
/// Feed it the Yjs client's WebSocket messages ([`YjsSession::handle_client`])
/// and the hub's frames for this connection ([`YjsSession::handle_server`]);
/// send what [`YjsSession::poll_to_server`] returns to the hub (as this
/// connection's input) and what [`YjsSession::poll_to_client`] returns to
/// the Yjs client; call [`YjsSession::handle_timeout`] at
/// [`YjsSession::poll_timeout`]. [`YjsSession::closed`] says when the
/// connection is over.
///
/// Memory per connection: its queues hold what one input produced (the
/// adapter drains them after each call), a sync transfer or fragmented
/// message being reassembled (as large as the hub sends, at most
/// `max_transfer_len` / `max_message_len`), the client messages held before
/// the room opened (at most [`YjsConfig::max_held_bytes`]) and the presence
/// states the client was told of (at most `max_presence_states` of at most
/// `max_presence_len` bytes, as the hub holds them).
///
/// ```
/// use std::time::Instant;
/// use crdt_socket_sync::adapters::yrs::YrsDocument;
/// use crdt_socket_sync::registry::MemoryRegistry;
/// use crdt_socket_sync::server::{AllowAll, Hub, ServerConfig};
/// use crdt_socket_sync::ywebsocket::{YMessage, YjsConfig, YjsSession};
///
/// let now = Instant::now();
/// let mut docs = MemoryRegistry::new(|_: &str| YrsDocument::server());
/// let mut hub = Hub::new(ServerConfig::default(), AllowAll);
/// let conn = hub.accept(now);
/// let mut yjs = YjsSession::new("room", Vec::new(), YjsConfig::default(), now);
///
/// // The Yjs client's sync step 1 with an empty state vector.
/// let mut step1 = Vec::new();
/// YMessage::SyncStep1(&[0]).encode(&mut step1);
/// yjs.handle_client(&step1, now).unwrap();
/// let mut to_client = Vec::new();
/// for _ in 0..4 {
///     while let Some(frame) = yjs.poll_to_server() {
///         hub.handle_input(conn, now, &frame, &mut docs);
///     }
///     while let Some((_, frame)) = hub.poll_transmit() {
///         yjs.handle_server(&frame, now).unwrap();
///     }
///     while let Some(msg) = yjs.poll_to_client() {
///         to_client.push(msg);
///     }
/// }
/// // The client got sync step 2 (the room's content) and the server's step 1.
/// assert!(matches!(YMessage::decode(&to_client[0]), Ok(YMessage::SyncStep2(_))));
/// assert!(matches!(YMessage::decode(&to_client[1]), Ok(YMessage::SyncStep1(_))));
/// assert_eq!(hub.subscribers("room"), 1);
/// ```
#[derive(Debug)]
pub struct YjsSession {
    config: YjsConfig,
    room: String,
    phase: Phase,
    /// The client's first state vector, once it arrived (the `Open` waits
    /// for it and for the `Welcome`).
    first_sv: Option<Vec<u8>>,
    /// Client messages that arrived before the room was open.
    held: Vec<Vec<u8>>,
    held_bytes: usize,
    seq: u64,
    encoder: Encoder,
    inflate: InflateScratch,
    to_server: VecDeque<Vec<u8>>,
    to_client: VecDeque<Vec<u8>>,
    /// A query-awareness waits for its answer. The answer is built when it
    /// is sent (after what is queued), so any number of unread queries
    /// costs one answer of the current states, not one each.
    awareness_query: bool,
    /// Transfer id, total and bytes of the sync transfer being received.
    transfer: Option<(u64, u64, Vec<u8>)>,
    /// Id, total and bytes of the fragmented message being received.
    fragment: Option<(u32, u64, Vec<u8>)>,
    next_fragment: u32,
    session: Option<SessionId>,
    /// The Yjs client id whose awareness this connection publishes (the
    /// first one its awareness updates name).
    client_id: Option<u64>,
    /// The presence clock sent to the hub.
    presence_clock: u32,
    peers: BTreeMap<SessionId, Known>,
    last_from_client: Instant,
    last_to_client: Instant,
    started: Instant,
    /// The hub's heartbeat (from its `Welcome`) and when to ping next.
    heartbeat: Duration,
    next_ping: Option<Instant>,
    close: Option<(CloseReason, String)>,
}

impl YjsSession {
    /// A connection for document `room` (y-websocket's room: the URL path
    /// after the endpoint), authenticating with `token` (opaque to the
    /// translator, handed to the hub's authorizer). Queues the `Hello`.
    pub fn new(room: &str, token: Vec<u8>, config: YjsConfig, now: Instant) -> Self {
        let encoder = Encoder::new(&config.limits);
        let mut s = YjsSession {
            room: room.to_string(),
            phase: Phase::Handshake,
            first_sv: None,
            held: Vec::new(),
            held_bytes: 0,
            seq: 0,
            encoder,
            inflate: InflateScratch::default(),
            to_server: VecDeque::new(),
            to_client: VecDeque::new(),
            awareness_query: false,
            transfer: None,
            fragment: None,
            next_fragment: 0,
            session: None,
            client_id: None,
            presence_clock: 0,
            peers: BTreeMap::new(),
            last_from_client: now,
            last_to_client: now,
            started: now,
            heartbeat: Duration::from_secs(2),
            next_ping: None,
            close: None,
            config,
        };
        let hello = Message::Hello {
            versions: PROTOCOL_VERSIONS.to_vec(),
            peer: YJS_PEER.into(),
            token: Bytes(token),
            compression: vec![Compression::None],
            limits: s.config.limits.peer_limits(),
        };
        s.send(&hello);
        s
    }

    /// The document (room) name.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// `Some` once the connection is over: the reason and detail. Drain
    /// both queues, then close the WebSocket.
    pub fn closed(&self) -> Option<&(CloseReason, String)> {
        self.close.as_ref()
    }

    /// The next frame for the hub (this connection's input).
    pub fn poll_to_server(&mut self) -> Option<Vec<u8>> {
        self.to_server.pop_front()
    }

    /// Whether messages wait for the Yjs client.
    pub fn has_client_output(&self) -> bool {
        !self.to_client.is_empty() || self.awareness_query
    }

    /// The next y-protocols message for the Yjs client.
    pub fn poll_to_client(&mut self) -> Option<Vec<u8>> {
        if let Some(msg) = self.to_client.pop_front() {
            return Some(msg);
        }
        if std::mem::take(&mut self.awareness_query) {
            return Some(self.known_awareness());
        }
        None
    }

    /// One WebSocket message from the Yjs client. On error the connection
    /// is closed: a `Close` for the hub is queued and [`YjsSession::closed`]
    /// holds the reason.
    pub fn handle_client(&mut self, bytes: &[u8], now: Instant) -> Result<(), YjsError> {
        if self.phase == Phase::Closed {
            return Ok(());
        }
        self.last_from_client = self.last_from_client.max(now);
        let result = self.client_message(bytes);
        if let Err(e) = &result {
            self.fail(e);
        }
        result
    }

    fn client_message(&mut self, bytes: &[u8]) -> Result<(), YjsError> {
        let msg = YMessage::decode(bytes)?;
        if let YMessage::PermissionDenied(_) = msg {
            return Err(YjsError::Unexpected);
        }
        let Phase::Open(doc) = self.phase else {
            if self.first_sv.is_none() {
                // The provider's first message is its step 1; if another
                // comes first, the hub sends the whole document.
                self.first_sv = Some(match msg {
                    YMessage::SyncStep1(sv) => sv.to_vec(),
                    _ => vec![0],
                });
                self.open_when_ready();
                if matches!(msg, YMessage::SyncStep1(_)) {
                    return Ok(());
                }
            }
            // Each held message also costs its allocation: a flood of
            // one-byte messages is charged for that too.
            self.held_bytes += bytes.len() + HELD_OVERHEAD;
            if self.held_bytes > self.config.max_held_bytes {
                return Err(YjsError::TooMuchEarlyInput);
            }
            self.held.push(bytes.to_vec());
            return Ok(());
        };
        match msg {
            YMessage::SyncStep1(sv) => self.send(&Message::SyncRequest {
                doc,
                version: Bytes::from(sv),
            }),
            YMessage::SyncStep2(update) | YMessage::Update(update) => {
                // Two zero bytes: the empty update (nothing was missing).
                if update != [0, 0] {
                    self.seq += 1;
                    let seq = self.seq;
                    self.send(&Message::Update {
                        doc,
                        seq,
                        data: Bytes::from(update),
                    });
                }
            }
            YMessage::Awareness(update) => self.client_awareness(doc, update)?,
            YMessage::QueryAwareness => self.awareness_query = true,
            YMessage::PermissionDenied(_) => return Err(YjsError::Unexpected),
        }
        Ok(())
    }

    /// The client's awareness: entries of the client id this connection
    /// speaks for (the first it named) become this session's presence;
    /// entries for other ids are ignored (one connection, one presence,
    /// stamped by the hub with the authenticated identity).
    fn client_awareness(&mut self, doc: DocId, update: &[u8]) -> Result<(), YjsError> {
        let entries = AwarenessEntries::decode(update, self.config.limits.max_presence_states)?;
        let mut latest: Option<AwarenessEntry<'_>> = None;
        for e in entries {
            let own = *self.client_id.get_or_insert(e.client);
            if e.client == own && latest.is_none_or(|l| e.clock >= l.clock) {
                latest = Some(e);
            }
        }
        if let Some(e) = latest {
            self.presence_clock = self.presence_clock.wrapping_add(1);
            let state = (e.state != "null").then(|| Bytes::from(e.state.as_bytes()));
            self.send(&Message::AwarenessSet {
                doc,
                clock: self.presence_clock,
                state,
            });
        }
        Ok(())
    }

    /// When [`YjsSession::handle_timeout`] is next due (`None`: closed, or
    /// not yet welcomed).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Closed {
            return None;
        }
        self.next_ping
    }

    /// The heartbeat: pings the hub for a client heard from within
    /// [`YjsConfig::client_idle_timeout`], and sends the client an empty
    /// awareness update when nothing went to it for
    /// [`YjsConfig::keepalive`]. Early or spurious calls do nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(due) = self.next_ping else {
            return;
        };
        if now < due || self.phase == Phase::Closed {
            return;
        }
        if now.saturating_duration_since(self.last_from_client) <= self.config.client_idle_timeout {
            let t = now.saturating_duration_since(self.started).as_micros();
            self.send(&Message::Ping {
                t: u64::try_from(t).unwrap_or(u64::MAX),
            });
        }
        if now.saturating_duration_since(self.last_to_client) >= self.config.keepalive {
            let mut empty = Vec::new();
            encode_awareness(&[], &mut empty);
            self.tell_client(YMessage::Awareness(&empty), now);
        }
        self.next_ping = now.checked_add(self.heartbeat);
    }

    /// One frame from the hub for this connection.
    pub fn handle_server(&mut self, frame: &[u8], now: Instant) -> Result<(), YjsError> {
        // A buffer of its own per frame: a session kept per idle
        // connection holds none.
        let mut decoded = Vec::new();
        let result = decode_frame(frame, &self.config.limits, &mut self.inflate, &mut decoded)
            .map_err(|e| YjsError::Hub(e.to_string()));
        let result = result.and_then(|()| {
            decoded
                .into_iter()
                .try_for_each(|m| self.server_message(m, now))
        });
        if let Err(e) = &result {
            self.fail(e);
        }
        result
    }

    fn server_message(&mut self, msg: Message, now: Instant) -> Result<(), YjsError> {
        match msg {
            Message::Welcome {
                session,
                limits,
                heartbeat_ms,
                ..
            } => {
                self.session = Some(session);
                self.heartbeat = Duration::from_millis(u64::from(heartbeat_ms.max(100)));
                self.next_ping = now.checked_add(self.heartbeat);
                self.encoder.apply_peer_limits(limits);
                if self.phase == Phase::Handshake {
                    self.phase = Phase::Opening;
                    self.open_when_ready();
                }
            }
            Message::Opened { doc, .. } => {
                self.phase = Phase::Open(doc);
                for held in std::mem::take(&mut self.held) {
                    self.client_message(&held)?;
                }
                self.held_bytes = 0;
            }
            Message::Reject { message, .. } | Message::OpenRefused { message, .. } => {
                self.tell_client(YMessage::PermissionDenied(&message), now);
                self.phase = Phase::Closed;
                self.close = Some((CloseReason::Rejected, message));
            }
            Message::SyncChunk {
                transfer,
                offset,
                total,
                data,
                ..
            } => self.sync_chunk(transfer, offset, total, &data, now)?,
            Message::SyncDone { version, .. } | Message::SyncRequest { version, .. } => {
                // The client answers with what the hub lacks (step 2).
                self.tell_client(YMessage::SyncStep1(&version), now);
            }
            Message::Broadcast { data, .. } => self.tell_client(YMessage::Update(&data), now),
            Message::Awareness { entries, .. } => self.server_awareness(entries, now),
            Message::Ping { t } => self.send(&Message::Pong { echo: t }),
            Message::Close { reason, message } => {
                self.phase = Phase::Closed;
                self.close = Some((reason, message));
            }
            Message::Fragment {
                id,
                offset,
                total,
                data,
            } => {
                if let Some(whole) = self.fragment(id, offset, total, data)? {
                    let msg = postcard::from_bytes::<Message>(&whole)
                        .map_err(|e| YjsError::Hub(e.to_string()))?;
                    if !matches!(msg, Message::Fragment { .. }) {
                        self.server_message(msg, now)?;
                    }
                }
            }
            // Acks, errors (the hub also reports them as events), pongs,
            // application and relay messages have no y-protocols
            // counterpart.
            _ => {}
        }
        Ok(())
    }

    fn sync_chunk(
        &mut self,
        transfer: u64,
        offset: u64,
        total: u64,
        data: &[u8],
        now: Instant,
    ) -> Result<(), YjsError> {
        if total > self.config.limits.max_transfer_len {
            return Err(YjsError::Hub("transfer over max_transfer_len".into()));
        }
        if offset == 0 {
            self.transfer = Some((transfer, total, Vec::new()));
        }
        let Some((id, want, buf)) = &mut self.transfer else {
            return Err(YjsError::Hub("sync chunk without its start".into()));
        };
        if *id != transfer || *want != total || buf.len() as u64 != offset {
            return Err(YjsError::Hub("sync chunk out of order".into()));
        }
        if buf.len() as u64 + data.len() as u64 > total {
            return Err(YjsError::Hub("sync chunk past its total".into()));
        }
        if offset == 0 && data.len() as u64 == total {
            // The usual case: the whole transfer in one chunk.
            self.transfer = None;
            self.tell_client(YMessage::SyncStep2(data), now);
            return Ok(());
        }
        buf.extend_from_slice(data);
        if buf.len() as u64 == total {
            let whole = std::mem::take(buf);
            self.transfer = None;
            self.tell_client(YMessage::SyncStep2(&whole), now);
        }
        Ok(())
    }

    fn fragment(
        &mut self,
        id: u32,
        offset: u64,
        total: u64,
        data: Bytes,
    ) -> Result<Option<Vec<u8>>, YjsError> {
        if total > self.config.limits.max_message_len {
            return Err(YjsError::Hub("fragmented message too large".into()));
        }
        if offset == 0 {
            self.fragment = Some((id, total, Vec::new()));
        }
        let Some((want_id, want, buf)) = &mut self.fragment else {
            return Err(YjsError::Hub("fragment without its start".into()));
        };
        if *want_id != id || *want != total || buf.len() as u64 != offset {
            return Err(YjsError::Hub("fragment out of order".into()));
        }
        if buf.len() as u64 + data.len() as u64 > total {
            return Err(YjsError::Hub("fragment past its total".into()));
        }
        buf.extend_from_slice(&data);
        if buf.len() as u64 == total {
            let whole = std::mem::take(buf);
            self.fragment = None;
            return Ok(Some(whole));
        }
        Ok(None)
    }

    /// Presence from the hub, to the Yjs client: every other session as a
    /// Yjs client id of its own ([`yjs_client_id`]); states that are not
    /// JSON text (a native client may publish any bytes) are not passed on.
    fn server_awareness(&mut self, entries: Vec<crate::wire::AwarenessEntry>, now: Instant) {
        let max = self.config.limits.max_presence_states;
        let mut out: Vec<(u64, u64, Option<Bytes>)> = Vec::new();
        for e in entries {
            if Some(e.session) == self.session {
                continue;
            }
            let state = e.state.filter(|s| is_json(s));
            let known_clock = self.peers.get(&e.session).map(|k| k.clock);
            let elapsed = now.saturating_duration_since(self.started).as_millis();
            let wall = self
                .config
                .wall_clock_ms
                .saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX));
            let clock = known_clock.map_or(wall, |c| wall.max(c + 1));
            if state.is_none() {
                if known_clock.is_none() {
                    continue;
                }
                self.peers.remove(&e.session);
            } else if known_clock.is_some() || self.peers.len() < max {
                self.peers.insert(
                    e.session,
                    Known {
                        clock,
                        state: state.clone(),
                    },
                );
            } else {
                continue;
            }
            out.push((yjs_client_id(e.session), clock, state));
        }
        if out.is_empty() {
            return;
        }
        let entries: Vec<AwarenessEntry<'_>> = out
            .iter()
            .map(|(client, clock, state)| AwarenessEntry {
                client: *client,
                clock: *clock,
                state: state
                    .as_deref()
                    .and_then(|s| std::str::from_utf8(s).ok())
                    .unwrap_or("null"),
            })
            .collect();
        let mut update = Vec::new();
        encode_awareness(&entries, &mut update);
        self.tell_client(YMessage::Awareness(&update), now);
    }

    /// The awareness message answering a query: every state the client
    /// was told of.
    fn known_awareness(&self) -> Vec<u8> {
        let entries: Vec<AwarenessEntry<'_>> = self
            .peers
            .iter()
            .filter_map(|(session, k)| {
                let state = std::str::from_utf8(k.state.as_deref()?).ok()?;
                Some(AwarenessEntry {
                    client: yjs_client_id(*session),
                    clock: k.clock,
                    state,
                })
            })
            .collect();
        let mut update = Vec::new();
        encode_awareness(&entries, &mut update);
        let mut msg = Vec::new();
        YMessage::Awareness(&update).encode(&mut msg);
        msg
    }

    /// Sends the `Open` once the hub welcomed the connection and the
    /// client's state vector is known.
    fn open_when_ready(&mut self) {
        if self.phase != Phase::Opening {
            return;
        }
        let Some(sv) = self.first_sv.clone() else {
            return;
        };
        let open = Message::Open {
            name: self.room.clone(),
            version: Bytes(sv),
            resume: None,
        };
        self.send(&open);
    }

    fn tell_client(&mut self, msg: YMessage<'_>, now: Instant) {
        let mut out = Vec::new();
        msg.encode(&mut out);
        self.to_client.push_back(out);
        self.last_to_client = self.last_to_client.max(now);
    }

    /// Encodes `msg` into a frame for the hub, in fragments when it is
    /// larger than a frame.
    fn send(&mut self, msg: &Message) {
        let mut frame = Vec::new();
        match self.encoder.encode(std::slice::from_ref(msg), &mut frame) {
            Ok(_) => self.to_server.push_back(frame),
            Err(EncodeError::TooLarge { .. }) => self.send_fragments(msg),
            // Postcard cannot fail on our own messages otherwise; the hub
            // would refuse what it cannot read anyway.
            Err(_) => {}
        }
    }

    fn send_fragments(&mut self, msg: &Message) {
        let mut body = Vec::new();
        if crate::wire::encode_message(msg, &mut body).is_err() {
            return;
        }
        let id = self.next_fragment;
        self.next_fragment = self.next_fragment.wrapping_add(1);
        // Room for the fragment's envelope and the frame around it.
        let chunk = (self.encoder.max_frame_len() as usize)
            .saturating_sub(64)
            .max(1);
        let total = body.len() as u64;
        for (i, piece) in body.chunks(chunk).enumerate() {
            let frag = Message::Fragment {
                id,
                offset: (i * chunk) as u64,
                total,
                data: Bytes::from(piece),
            };
            let mut frame = Vec::new();
            if self.encoder.encode(&[frag], &mut frame).is_ok() {
                self.to_server.push_back(frame);
            }
        }
    }

    /// Bad input or a broken hub frame: tell the hub, end the connection.
    fn fail(&mut self, e: &YjsError) {
        let reason = e.close_reason();
        let message = e.to_string();
        self.send(&Message::Close {
            reason,
            message: message.clone(),
        });
        self.phase = Phase::Closed;
        self.close = Some((reason, message));
    }
}

/// The Yjs client id under which session `session` appears to Yjs clients
/// (its low 32 bits: Yjs client ids are 32-bit random numbers too).
///
/// ```
/// use crdt_socket_sync::wire::SessionId;
/// use crdt_socket_sync::ywebsocket::yjs_client_id;
/// assert_eq!(yjs_client_id(SessionId(0x1_0000_0007)), 7);
/// ```
pub fn yjs_client_id(session: SessionId) -> u64 {
    session.0 & 0xffff_ffff
}
