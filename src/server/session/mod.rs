//! The server side of one connection, a state machine of its own, the
//! sibling of [`ClientSession`](crate::client::ClientSession): it decodes
//! its input within the limits, checks the `Hello` and answers it
//! (`Welcome` once the hub authenticated the peer, or `Reject`), answers
//! pings, keeps its rate limits, its bounded send queue, its subscriptions
//! under its own document handles ([`subscriptions`]) and the sync payloads
//! it sends in chunks ([`transfers`]), owns its deadlines (handshake, idle,
//! incomplete input) and closes itself once. It holds ids only: the
//! documents, the authorizer and the other sessions are the
//! [`Hub`](super::Hub)'s, which routes each decoded message here or to the
//! document it is about.

use std::sync::Arc;

use crate::time::Instant;

use crate::Limits;
use crate::awareness::RateLimit;
use crate::close::CloseCause;
use crate::inbound::{Charge, Inbound, InboundError, ReassemblyBudget, Rules};
use crate::outbound::{Common, MAX_CLOSE_TEXT, Priority, Queue, QueueFull};
use crate::wire::compress::InflateScratch;
use crate::wire::{
    Bytes, CloseReason, Compression, DocId, Message, PROTOCOL_VERSIONS, PeerLimits, RejectCode,
    SessionId,
};

use super::hub::truncate_at_char;
use super::{ConnId, Identity, ServerConfig};

mod subscriptions;
mod transfers;

pub(crate) use subscriptions::{Subscription, Subscriptions};
pub(crate) use transfers::{Transfer, Transfers};

/// Where a session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Waiting for `Hello` until the deadline.
    Handshake {
        /// When the connection is closed if no `Hello` arrived (`None`: the
        /// timeout is too large to represent, so never).
        deadline: Option<Instant>,
    },
    /// Handshake done.
    Active,
    /// Closed; only the remaining transmits (a `Close` frame) are left.
    Closed,
}

/// Counters of one session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Bytes received.
    pub bytes_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Updates from this session that changed a document.
    pub updates_applied: u64,
    /// Updates from this session that were already known.
    pub duplicates: u64,
}

/// A session's rate limits and budgets ([`ServerSession::rates`]).
pub(crate) struct Rates {
    pub(crate) presence: RateLimit,
    pub(crate) app: RateLimit,
    /// Sync payloads (deltas, snapshots) computed for this session.
    pub(crate) sync: RateLimit,
    /// Token refreshes (`RefreshToken`) from this session.
    pub(crate) refresh: RateLimit,
    /// Updates from this session its documents refused as invalid.
    pub(crate) invalid_updates: u32,
}

/// The server side of one connection.
///
/// Created by the hub when it accepts a transport; inspect it with
/// [`Hub::session`](super::Hub::session).
pub struct ServerSession {
    conn: ConnId,
    phase: Phase,
    session: SessionId,
    identity: Option<Identity>,
    peer: String,
    inbound: Inbound,
    outbound: Queue,
    docs: Subscriptions,
    transfers: Transfers,
    /// When the last whole valid frame arrived (the idle deadline's start).
    last_rx: Instant,
    stats: SessionStats,
    /// Rate limits of presence and application messages; `None` until the
    /// first one (see [`ServerSession::rates`]).
    rates: Option<Box<Rates>>,
    /// Where the hub lists this session ([`super::marks::Marks`]).
    listed: Listed,
}

/// The hub's lists a session is on ([`super::marks::Marks`]), kept in the
/// session so listing is a flag test rather than a search.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Listed {
    /// In the hub's ready queue.
    pub(crate) ready: bool,
    /// In the hub's touched list.
    pub(crate) touched: bool,
    /// Some subscription was set lagging since the last catch-up: the hub
    /// lists the session's catch-up as due when its queue drains.
    pub(crate) lagging: bool,
}

/// What a `Hello` settles once its checks passed
/// ([`ServerSession::check_hello`]); the hub authenticates the peer before
/// [`ServerSession::accept`] answers with it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HelloTerms {
    version: u16,
    compression: Compression,
    limits: PeerLimits,
}

impl ServerSession {
    pub(crate) fn new(conn: ConnId, config: &ServerConfig, now: Instant) -> Self {
        ServerSession {
            conn,
            phase: Phase::Handshake {
                deadline: now.checked_add(config.handshake_timeout),
            },
            session: SessionId(0),
            identity: None,
            peer: String::new(),
            inbound: Inbound::new(config.framing),
            outbound: Queue::new(&config.limits),
            docs: Subscriptions::default(),
            transfers: Transfers::default(),
            last_rx: now,
            stats: SessionStats::default(),
            rates: None,
            listed: Listed::default(),
        }
    }

    /// The connection id.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// The session id sent to the client (zero before the handshake).
    pub fn session_id(&self) -> SessionId {
        self.session
    }

    /// The authenticated identity, once the handshake succeeded.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// Where the session is in its life.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Bytes queued for sending (encoded, not yet framed).
    pub fn queued_bytes(&self) -> usize {
        self.outbound.bytes()
    }

    /// Messages queued for sending.
    pub fn queued_messages(&self) -> usize {
        self.outbound.len()
    }

    /// Bytes held for received input that is not complete yet: a partial
    /// frame (stream framing) and a fragmented message being reassembled
    /// (their buffers' capacity, which is what they cost). Nothing once
    /// the session is closed.
    pub fn buffered_input(&self) -> usize {
        self.inbound.buffered()
    }

    /// Bytes of incomplete input received and held (a partial frame and a
    /// fragmented message being reassembled), without the room reserved
    /// around them: what the peer actually sent of them.
    pub fn received_input(&self) -> usize {
        self.inbound.received()
    }

    /// Heap bytes held for received input: the buffer of a partial frame
    /// (what it reserved, not only what arrived) and of a fragmented message
    /// being reassembled. What a peer's unfinished input costs the server.
    pub fn held_input(&self) -> usize {
        self.inbound.held()
    }

    /// Documents this session has open.
    pub fn open_documents(&self) -> usize {
        self.docs.values().count()
    }

    /// The peer id the client gave in its `Hello` (empty before).
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The bounded send queue.
    pub(crate) fn queue(&self) -> &Queue {
        &self.outbound
    }

    pub(crate) fn queue_mut(&mut self) -> &mut Queue {
        &mut self.outbound
    }

    /// The subscriptions, under this connection's document handles.
    pub(crate) fn docs(&self) -> &Subscriptions {
        &self.docs
    }

    pub(crate) fn docs_mut(&mut self) -> &mut Subscriptions {
        &mut self.docs
    }

    /// The sync payloads being sent.
    pub(crate) fn transfers(&self) -> &Transfers {
        &self.transfers
    }

    pub(crate) fn transfers_mut(&mut self) -> &mut Transfers {
        &mut self.transfers
    }

    pub(crate) fn stats_mut(&mut self) -> &mut SessionStats {
        &mut self.stats
    }

    /// The hub's lists this session is on.
    pub(crate) fn listed(&self) -> &Listed {
        &self.listed
    }

    pub(crate) fn listed_mut(&mut self) -> &mut Listed {
        &mut self.listed
    }

    /// The identity a refreshed token authenticated.
    pub(crate) fn set_identity(&mut self, identity: Identity) {
        self.identity = Some(identity);
    }

    /// Checks a `Hello` against what this server speaks and allows: a
    /// common protocol version, a peer id within
    /// [`Limits::max_name_len`], a usable frame length. `Err` carries the
    /// `Reject` to send; `Ok` the terms [`ServerSession::accept`] answers
    /// with once the hub authenticated the peer.
    pub(crate) fn check_hello(
        &self,
        versions: &[u16],
        peer: &str,
        offered: &[Compression],
        limits: PeerLimits,
        config: &ServerConfig,
    ) -> Result<HelloTerms, (RejectCode, String)> {
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
            return Err((RejectCode::UnsupportedVersion, msg));
        };
        if peer.len() > config.limits.max_name_len {
            return Err((RejectCode::BadHello, "peer id too long".into()));
        }
        let min = PeerLimits::MIN_FRAME_LEN;
        if limits.max_frame_len < min {
            return Err((RejectCode::BadHello, format!("max_frame_len below {min}")));
        }
        let compression = if config.compression == Compression::Deflate
            && offered.contains(&Compression::Deflate)
        {
            Compression::Deflate
        } else {
            Compression::None
        };
        Ok(HelloTerms {
            version,
            compression,
            limits,
        })
    }

    /// Ends the handshake: the peer `peer` authenticated as `identity`
    /// gets session id `session` and a `Welcome` with `terms` (its frames
    /// compressed from this one on, when agreed: the client offered it).
    /// `durable` says whether acknowledgements can become durable. `Err`
    /// when the queue cannot take the `Welcome` (the caller closes the
    /// session).
    #[allow(clippy::too_many_arguments)] // the handshake's outcome, field by field
    pub(crate) fn accept(
        &mut self,
        terms: HelloTerms,
        peer: String,
        session: SessionId,
        identity: Identity,
        durable: bool,
        config: &ServerConfig,
        common: &mut Common,
    ) -> Result<(), QueueFull> {
        if !matches!(self.phase, Phase::Handshake { .. }) {
            return Ok(());
        }
        self.phase = Phase::Active;
        self.session = session;
        self.identity = Some(identity);
        self.peer = peer;
        self.outbound.negotiate(terms.limits, terms.compression);
        let welcome = Message::Welcome {
            version: terms.version,
            session,
            compression: terms.compression,
            limits: config.limits.peer_limits(),
            heartbeat_ms: u32::try_from(config.heartbeat.as_millis()).unwrap_or(u32::MAX),
            durable,
        };
        self.send(&welcome, common)
    }

    /// A `Ping` arrived: queues its `Pong`.
    pub(crate) fn on_ping(&mut self, t: u64, common: &mut Common) -> Result<(), QueueFull> {
        self.send(&Message::Pong { echo: t }, common)
    }

    /// The peer sent `Close`: nothing more is sent but what is queued.
    /// Returns `false` when the session was closed already (so the close is
    /// reported once).
    pub(crate) fn on_peer_close(&mut self) -> bool {
        if self.phase == Phase::Closed {
            return false;
        }
        self.phase = Phase::Closed;
        self.transfers.clear();
        true
    }

    /// The transport is gone: closed without a `Close` frame. Returns
    /// `false` when the session was closed already.
    pub(crate) fn transport_lost(&mut self) -> bool {
        if self.phase == Phase::Closed {
            return false;
        }
        self.phase = Phase::Closed;
        true
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The rate limits of presence and application messages, created full
    /// at the first such message: exactly what buckets created at accept
    /// time would hold then (nothing took from them, and they refill only
    /// up to full), without their 64 bytes on sessions that never send one.
    pub(crate) fn rates(&mut self, limits: &Limits, now: Instant) -> &mut Rates {
        self.rates.get_or_insert_with(|| {
            Box::new(Rates {
                presence: RateLimit::new(limits.presence_rate, now),
                app: RateLimit::new(limits.app_rate, now),
                sync: RateLimit::new(limits.sync_rate.max(1), now),
                refresh: RateLimit::new(limits.refresh_rate.max(1), now),
                invalid_updates: 0,
            })
        })
    }

    /// A whole valid frame arrived at `now`: the idle deadline restarts
    /// from it. Only whole frames count, so a peer cannot keep a session
    /// alive with the bytes of a frame it never finishes. (The session
    /// keeps no clock: the hub's, which never goes backwards, is passed
    /// where one is needed.)
    pub(crate) fn received_at(&mut self, now: Instant) {
        self.last_rx = now;
    }

    /// Decodes `bytes` received at `now` within `limits`, inflating with
    /// `inflate` and charging fragmented messages to `budget` under its
    /// connection id (all the hub's: a session keeps no copy of the limits
    /// and no inflate memory). Making room may revoke larger holders'
    /// charges: the caller closes them ([`ReassemblyBudget::take_revoked`]).
    /// Before the handshake, frames are held to
    /// [`Limits::max_handshake_frame_len`] and fragments refused. Returns
    /// the whole valid frames decoded, which restart the idle deadline.
    pub(crate) fn feed(
        &mut self,
        bytes: &[u8],
        now: Instant,
        limits: &Limits,
        budget: &ReassemblyBudget,
        inflate: &mut InflateScratch,
        out: &mut Vec<Message>,
    ) -> Result<usize, InboundError> {
        self.stats.bytes_in += bytes.len() as u64;
        let rules = Rules {
            handshake: matches!(self.phase, Phase::Handshake { .. }),
            now: Some(now),
            budget: Some(Charge {
                budget,
                owner: self.conn.0,
            }),
        };
        let frames = self.inbound.feed_with(bytes, limits, rules, inflate, out)?;
        if frames > 0 {
            self.received_at(now);
        }
        Ok(frames)
    }

    /// [`Inbound::single_update`], counted like [`ServerSession::feed`].
    pub(crate) fn feed_single_update<'a>(
        &mut self,
        bytes: &'a [u8],
        limits: &Limits,
    ) -> Option<(DocId, u64, &'a [u8])> {
        let update = self.inbound.single_update(bytes, limits)?;
        self.stats.bytes_in += bytes.len() as u64;
        Some(update)
    }

    /// Queues `msg`, a reply the peer may not miss ([`Priority::Reply`]),
    /// encoded into one of the hub's spare buffers. Refused when the queue
    /// is full (the caller closes the session: its peer does not read).
    /// Nothing is queued after the `Close` of a closed session.
    pub(crate) fn send(&mut self, msg: &Message, common: &mut Common) -> Result<(), QueueFull> {
        if self.phase == Phase::Closed {
            return Ok(());
        }
        self.outbound.push(msg, Priority::Reply, common)
    }

    /// Queues bytes encoded once for many sessions, if they fit.
    pub(crate) fn send_shared(
        &mut self,
        encoded: &Arc<[u8]>,
        common: &Common,
    ) -> Result<(), QueueFull> {
        self.outbound.push_shared(encoded, common)
    }

    /// Queues `Close` and moves to [`Phase::Closed`]. Returns `false` when
    /// already closed (so the caller reports the close only once).
    pub(crate) fn close(
        &mut self,
        reason: CloseReason,
        message: &str,
        common: &mut Common,
    ) -> bool {
        if self.phase == Phase::Closed {
            return false;
        }
        let mut message = message.to_string();
        truncate_at_char(&mut message, MAX_CLOSE_TEXT);
        let close = Message::Close { reason, message };
        // The one message allowed past the bound (the reserve): at most one
        // per session, and short.
        let _ = self.outbound.push(&close, Priority::Control, common);
        self.phase = Phase::Closed;
        self.transfers.clear();
        self.inbound.discard();
        true
    }

    /// When this session next needs `handle_timeout`.
    pub(crate) fn next_timeout(&self, config: &ServerConfig) -> Option<Instant> {
        match self.phase {
            Phase::Handshake { deadline } => deadline,
            Phase::Active => {
                let idle = self.last_rx.checked_add(config.idle_timeout);
                idle.into_iter()
                    .chain(self.incomplete_deadline(config))
                    .min()
            }
            Phase::Closed => None,
        }
    }

    /// When the oldest incomplete input held (a partial frame or a
    /// fragmented message) has been held too long.
    fn incomplete_deadline(&self, config: &ServerConfig) -> Option<Instant> {
        self.inbound
            .incomplete_since()?
            .checked_add(config.incomplete_input_timeout)
    }

    /// Fires the deadlines expired at `now`; returns the cause when the
    /// session closed.
    pub(crate) fn on_timeout(
        &mut self,
        config: &ServerConfig,
        now: Instant,
        common: &mut Common,
    ) -> Option<CloseCause> {
        match self.phase {
            Phase::Handshake {
                deadline: Some(deadline),
            } if now >= deadline => {
                self.close(CloseReason::HandshakeTimeout, "no hello in time", common);
                Some(CloseCause::Local(CloseReason::HandshakeTimeout))
            }
            Phase::Active
                if self
                    .last_rx
                    .checked_add(config.idle_timeout)
                    .is_some_and(|t| now >= t)
                    || self.incomplete_deadline(config).is_some_and(|t| now >= t) =>
            {
                // Idle with part of a frame or message held: the peer
                // started something it does not finish.
                let (cause, message) = if self.inbound.is_incomplete() {
                    let held = self.inbound.buffered();
                    let cause = CloseCause::IncompleteInput { held };
                    (cause, "incomplete input held too long")
                } else {
                    (CloseCause::Local(CloseReason::IdleTimeout), "no traffic")
                };
                self.close(CloseReason::IdleTimeout, message, common);
                Some(cause)
            }
            _ => None,
        }
    }

    /// Moves chunks of pending transfers into the outbound queue while it
    /// is below its high-water mark (the other half is room for replies,
    /// which may not be dropped); finishes each transfer with `SyncDone`.
    pub(crate) fn pump_transfers(&mut self, common: &mut Common) {
        let chunk = self.outbound.max_chunk(common);
        while let Some(t) = self.transfers.front_mut() {
            while t.offset < t.payload.len() {
                let end = (t.offset + chunk).min(t.payload.len());
                if !self.outbound.below_high_water(end - t.offset, common) {
                    return;
                }
                let msg = Message::SyncChunk {
                    doc: t.doc,
                    transfer: t.id,
                    kind: t.kind,
                    offset: t.offset as u64,
                    total: t.payload.len() as u64,
                    data: Bytes(t.payload[t.offset..end].to_vec()),
                };
                if self.outbound.push(&msg, Priority::Data, common).is_err() {
                    return;
                }
                t.offset = end;
            }
            let done = Message::SyncDone {
                doc: t.doc,
                version: Bytes(std::mem::take(&mut t.version)),
            };
            if self.outbound.push(&done, Priority::Reply, common).is_err() {
                // Sent after the next drain.
                if let Message::SyncDone { version, .. } = done {
                    t.version = version.0;
                }
                return;
            }
            self.transfers.pop_front();
        }
    }

    pub(crate) fn poll_frame(&mut self, common: &mut Common) -> Option<Vec<u8>> {
        let mut frame = Vec::new();
        self.poll_frame_into(&mut frame, common).then_some(frame)
    }

    /// Appends the next frame to `out`; `false` when there is none. The
    /// drained message buffers go back to `common`.
    pub(crate) fn poll_frame_into(&mut self, out: &mut Vec<u8>, common: &mut Common) -> bool {
        let start = out.len();
        if !self.outbound.poll_frame_into(out, common) {
            return false;
        }
        self.stats.frames_out += 1;
        self.stats.bytes_out += (out.len() - start) as u64;
        if !self.transfers.is_empty() {
            self.pump_transfers(common);
        }
        true
    }

    pub(crate) fn has_output(&self) -> bool {
        !self.outbound.is_empty()
    }
}

impl core::fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServerSession")
            .field("conn", &self.conn)
            .field("phase", &self.phase)
            .field("session", &self.session)
            .field("docs", &self.docs.len())
            .field("queued_bytes", &self.outbound.bytes())
            .finish()
    }
}

#[cfg(test)]
mod tests;
