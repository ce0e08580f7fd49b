//! The server side of one connection: framing, handshake state, liveness
//! deadlines, the bounded outbound queue and the per-document subscriptions.
//! Document work (apply, fan-out) is the [`Hub`](super::Hub)'s.
//!
//! Over 800 lines with its unit tests, which check private state (sizes,
//! subscriptions, transfers) that integration tests cannot see.

use crate::time::Instant;
use std::collections::VecDeque;
use std::sync::Arc;

use crate::Limits;
use crate::awareness::RateLimit;
use crate::close::CloseCause;
use crate::inbound::{Charge, Inbound, InboundError, ReassemblyBudget, Rules};
use crate::outbound::{Common, MAX_CLOSE_TEXT, Priority, Queue, QueueFull};
use crate::wire::compress::InflateScratch;
use crate::wire::{Access, Bytes, CloseReason, DocId, Message, SessionId, SyncKind};

use super::hub::{DocIndex, truncate_at_char};
use super::{ConnId, Identity, ServerConfig};

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

/// A session's subscription to one document.
///
/// One is kept per open document of every idle connection: the state only a
/// subscription in trouble needs is boxed ([`Recovery`]), and the handle is
/// the entry's position in [`Subscriptions`], which keeps an entry at 48
/// bytes.
#[derive(Clone, Debug)]
pub(crate) struct Subscription {
    /// The document in the hub's directory (set once).
    pub(crate) index: DocIndex,
    pub(crate) access: Access,
    /// Highest client sequence number received.
    pub(crate) last_seq: u64,
    /// Highest sequence number reported durable.
    pub(crate) durable_seq: u64,
    /// The client completed its half of the initial sync.
    pub(crate) synced: bool,
    /// The version the client reported at the end of its sync (a boxed
    /// slice: no spare capacity kept, 8 bytes less than a `Vec`).
    pub(crate) client_version: Option<Box<[u8]>>,
    /// `None` while nothing is being recovered.
    recovery: Option<Box<Recovery>>,
}

/// What a subscription keeps only while it recovers from a gap or from
/// falling behind.
#[derive(Clone, Debug, Default)]
struct Recovery {
    /// When a `SyncRequest` was sent that no cleanly applied update answered
    /// yet.
    out_of_sync_sent: Option<Instant>,
    /// The subscriber fell behind: broadcasts are no longer queued for it,
    /// and once its queue drains it gets one catch-up from this server
    /// version.
    lagging: Option<Vec<u8>>,
}

impl Subscription {
    /// A fresh subscription to the document at `index` with `access`:
    /// nothing received, not synced.
    pub(crate) fn new(index: DocIndex, access: Access) -> Self {
        Subscription {
            index,
            access,
            last_seq: 0,
            durable_seq: 0,
            synced: false,
            client_version: None,
            recovery: None,
        }
    }

    /// When a `SyncRequest` was sent that no cleanly applied update answered
    /// yet.
    pub(crate) fn out_of_sync_sent(&self) -> Option<Instant> {
        self.recovery.as_ref()?.out_of_sync_sent
    }

    /// Records when a `SyncRequest` was sent (`None`: answered). Inlined:
    /// every clean update calls it, and then it is one test.
    #[inline]
    pub(crate) fn set_out_of_sync_sent(&mut self, at: Option<Instant>) {
        if at.is_some() || self.recovery.is_some() {
            self.recovery().out_of_sync_sent = at;
            self.tidy();
        }
    }

    /// Whether the subscriber fell behind and waits for a catch-up.
    pub(crate) fn is_lagging(&self) -> bool {
        self.recovery.as_ref().is_some_and(|r| r.lagging.is_some())
    }

    /// The subscriber fell behind: no more broadcasts until a catch-up from
    /// server version `since`.
    pub(crate) fn set_lagging(&mut self, since: Vec<u8>) {
        self.recovery().lagging = Some(since);
    }

    /// The version a catch-up is due from, if the subscriber is lagging; it
    /// no longer is.
    pub(crate) fn take_lagging(&mut self) -> Option<Vec<u8>> {
        let since = self.recovery.as_mut()?.lagging.take();
        self.tidy();
        since
    }

    fn recovery(&mut self) -> &mut Recovery {
        self.recovery.get_or_insert_with(Box::default)
    }

    /// Drops the recovery state once nothing is recovered.
    fn tidy(&mut self) {
        if self
            .recovery
            .as_ref()
            .is_some_and(|r| r.out_of_sync_sent.is_none() && r.lagging.is_none())
        {
            self.recovery = None;
        }
    }
}

/// A session's subscriptions, indexed by the session's own document handle
/// (the `doc` of its messages, like a QUIC stream id): a new document gets
/// the smallest free handle, so a connection's first 128 documents take
/// one byte on the wire, and handles say nothing about other connections.
/// Nothing is kept past the highest handle in use. A vector rather than a
/// map: a connection has a few documents, a lookup is an index, and a
/// B-tree's first leaf costs about 1 KiB per idle connection where this
/// costs one entry.
#[derive(Clone, Debug, Default)]
pub(crate) struct Subscriptions(Vec<Slot>);

/// One handle of a session.
#[derive(Clone, Debug)]
enum Slot {
    Free,
    Open(Subscription),
    /// Closed by the server (access revoked) while the client may still
    /// send under it: not given out again until the client closes it too
    /// (`CloseDoc`) or disconnects, so its late updates cannot land in
    /// another document. Counts as open against the limit.
    Retired,
}

impl Slot {
    fn sub(&self) -> Option<&Subscription> {
        match self {
            Slot::Open(sub) => Some(sub),
            _ => None,
        }
    }
}

impl Subscriptions {
    pub(crate) fn get(&self, doc: &DocId) -> Option<&Subscription> {
        self.0.get(doc.0 as usize)?.sub()
    }

    pub(crate) fn get_mut(&mut self, doc: &DocId) -> Option<&mut Subscription> {
        match self.0.get_mut(doc.0 as usize)? {
            Slot::Open(sub) => Some(sub),
            _ => None,
        }
    }

    /// The handle under which the document at `index` is open.
    pub(crate) fn handle_of(&self, index: DocIndex) -> Option<DocId> {
        self.iter().find(|(_, s)| s.index == index).map(|(d, _)| d)
    }

    /// Adds `sub` under the smallest free handle, which it returns.
    pub(crate) fn open(&mut self, sub: Subscription) -> DocId {
        let free = self.0.iter().position(|s| matches!(s, Slot::Free));
        let at = free.unwrap_or(self.0.len());
        if at == self.0.len() {
            // The first few grow one entry at a time: `Vec`'s first
            // growth makes room for four (192 bytes), and most sessions
            // hold one or two.
            if self.0.len() < 4 {
                self.0.reserve_exact(1);
            }
            self.0.push(Slot::Open(sub));
        } else {
            self.0[at] = Slot::Open(sub);
        }
        // At most `max_docs_per_connection` handles are in use at once.
        DocId(u32::try_from(at).unwrap_or(u32::MAX))
    }

    /// Replaces the subscription under handle `doc` (the client opened the
    /// document again).
    pub(crate) fn replace(&mut self, doc: DocId, sub: Subscription) {
        if let Some(slot @ Slot::Open(_)) = self.0.get_mut(doc.0 as usize) {
            *slot = Slot::Open(sub);
        }
    }

    /// Removes the subscription under `doc`, freeing the handle (also a
    /// retired one, which returns `None`).
    pub(crate) fn remove(&mut self, doc: &DocId) -> Option<Subscription> {
        let slot = std::mem::replace(self.0.get_mut(doc.0 as usize)?, Slot::Free);
        while self.0.last().is_some_and(|s| matches!(s, Slot::Free)) {
            self.0.pop();
        }
        if self.0.is_empty() {
            // Nothing held for a connection that closed its documents.
            self.0 = Vec::new();
        }
        match slot {
            Slot::Open(sub) => Some(sub),
            _ => None,
        }
    }

    /// Removes the subscription under `doc` and retires the handle.
    pub(crate) fn retire(&mut self, doc: &DocId) -> Option<Subscription> {
        let slot = self.0.get_mut(doc.0 as usize)?;
        if !matches!(slot, Slot::Open(_)) {
            return None;
        }
        match std::mem::replace(slot, Slot::Retired) {
            Slot::Open(sub) => Some(sub),
            _ => None,
        }
    }

    /// Handles in use, retired ones included (a scan: at most
    /// `max_docs_per_connection` entries, counted when a document is
    /// opened).
    pub(crate) fn len(&self) -> usize {
        self.0.iter().filter(|s| !matches!(s, Slot::Free)).count()
    }

    /// Open documents' handles.
    pub(crate) fn keys(&self) -> impl Iterator<Item = DocId> + '_ {
        self.iter().map(|(d, _)| d)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Subscription> {
        self.0.iter().filter_map(Slot::sub)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (DocId, &Subscription)> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((DocId(i as u32), s.sub()?)))
    }
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

/// A sync payload being sent in chunks as the outbound queue drains.
pub(crate) struct Transfer {
    pub(crate) doc: DocId,
    pub(crate) id: u64,
    pub(crate) kind: SyncKind,
    pub(crate) payload: Arc<Vec<u8>>,
    pub(crate) offset: usize,
    pub(crate) version: Vec<u8>,
}

/// A session's sync payloads being sent, oldest first. Boxed, and dropped
/// when the last one is sent: only an initial sync or a catch-up has any,
/// and a session is kept per idle connection (8 bytes here, not 32).
#[derive(Default)]
// The box is the point: the extra allocation is made only during a sync.
#[allow(clippy::box_collection)]
pub(crate) struct Transfers(Option<Box<VecDeque<Transfer>>>);

impl Transfers {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub(crate) fn push_back(&mut self, transfer: Transfer) {
        self.0.get_or_insert_default().push_back(transfer);
    }

    /// Drops the transfers of `doc`.
    pub(crate) fn cancel(&mut self, doc: DocId) {
        if let Some(q) = &mut self.0 {
            q.retain(|t| t.doc != doc);
            if q.is_empty() {
                self.0 = None;
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.0 = None;
    }

    fn front_mut(&mut self) -> Option<&mut Transfer> {
        self.0.as_mut()?.front_mut()
    }

    /// Drops the first transfer (sent).
    fn pop_front(&mut self) {
        if let Some(q) = &mut self.0 {
            q.pop_front();
            if q.is_empty() {
                self.0 = None;
            }
        }
    }
}

/// The server side of one connection.
pub struct ServerSession {
    pub(crate) conn: ConnId,
    pub(crate) phase: Phase,
    pub(crate) session: SessionId,
    pub(crate) identity: Option<Identity>,
    pub(crate) peer: String,
    pub(crate) inbound: Inbound,
    pub(crate) outbound: Queue,
    pub(crate) docs: Subscriptions,
    pub(crate) transfers: Transfers,
    pub(crate) last_rx: Instant,
    pub(crate) stats: SessionStats,
    /// Rate limits of presence and application messages; `None` until the
    /// first one (see [`ServerSession::rates`]).
    rates: Option<Box<Rates>>,
    /// Listed in the hub's ready queue ([`super::marks::Marks`]).
    pub(crate) in_ready: bool,
    /// Listed in the hub's touched list.
    pub(crate) in_touched: bool,
    /// Some subscription was set lagging since the last catch-up: the hub
    /// lists the session's catch-up as due when its queue drains.
    pub(crate) lagging: bool,
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
            in_ready: false,
            in_touched: false,
            lagging: false,
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
mod tests {
    use super::*;

    fn sub(doc: u32) -> Subscription {
        Subscription::new(DocIndex(doc), Access::ReadWrite)
    }

    /// A session whose queue drained keeps no room for messages.
    #[test]
    fn a_drained_session_keeps_no_queue() {
        let config = ServerConfig::default();
        let mut s = ServerSession::new(ConnId(1), &config, Instant::now());
        let mut common = Common::new(&config.limits, config.compress_threshold, 4);
        for t in 0..3 {
            let shared = crate::outbound::encode_shared(&Message::Ping { t });
            s.send_shared(&shared, &common).unwrap();
        }
        assert!(s.outbound.capacity() > 0);
        while s.poll_frame(&mut common).is_some() {}
        assert_eq!(s.outbound.capacity(), 0);
    }

    /// After a burst of its own messages (a frame of a few KiB) a session
    /// holds no message buffer: the drained ones went back to the hub's
    /// spares, where one spare per session kept up to 4 KiB per idle
    /// connection (workload C of the comparison).
    #[test]
    fn an_idle_session_holds_no_spare_buffer_after_a_burst() {
        let config = ServerConfig::default();
        let mut s = ServerSession::new(ConnId(1), &config, Instant::now());
        let mut common = Common::new(&config.limits, config.compress_threshold, 4);
        let big = Message::Error {
            doc: None,
            seq: None,
            code: crate::wire::ErrorCode::Internal,
            message: "x".repeat(1500),
        };
        s.send(&big, &mut common).unwrap();
        s.send(&Message::Pong { echo: 1 }, &mut common).unwrap();
        let frame = s.poll_frame(&mut common).unwrap();
        assert!(frame.len() > 1500);
        assert!(s.poll_frame(&mut common).is_none());
        assert_eq!(s.outbound.held(), 0, "no buffer left in the session");
        assert_eq!(common.spares(), 1, "the burst's buffer went back");
    }

    /// Every session is boxed for the life of its connection: its size is
    /// memory per idle connection (workload C of the comparison). It was 688
    /// bytes with a copy of the limits in its decoder and its rate limits
    /// inline, 400 with a spare buffer and a copy of the queue bounds in its
    /// queue, a clock of its own and its transfer queue inline, 312 with
    /// the inflate state's box and buffer in its decoder.
    #[test]
    fn a_session_stays_small() {
        let size = std::mem::size_of::<ServerSession>();
        eprintln!("ServerSession: {size} bytes");
        assert!(size <= 288, "ServerSession of {size} bytes");
    }

    /// A session that received compressed frames holds no inflate state
    /// and no inflate buffer: the hub lends its own to each decode. Each
    /// session used to keep ~10 KiB of state and up to 64 KiB of buffer for
    /// the rest of its connection.
    #[test]
    fn a_session_holds_no_inflate_memory() {
        use crate::Framing;
        use crate::registry::MemoryRegistry;
        use crate::server::{AllowAll, Hub};
        use crate::testing::OpLog;
        use crate::wire::compress::KEEP_BUFFER_CAPACITY;
        use crate::wire::{Compression, Encoder, MessageDecoder, PROTOCOL_VERSIONS};

        // The decoder is a tag and a box, the fragments a box.
        assert!(std::mem::size_of::<Inbound>() <= 16);
        let state = std::mem::size_of::<miniz_oxide::inflate::core::DecompressorOxide>();
        let frame = |msgs: &[Message], threshold| {
            let mut encoder = Encoder::new(&Limits::default());
            encoder.set_compression(Compression::Deflate, threshold);
            let mut out = Vec::new();
            encoder.encode(msgs, &mut out).unwrap();
            out
        };
        let hello = frame(
            &[Message::Hello {
                versions: PROTOCOL_VERSIONS.to_vec(),
                peer: "p".into(),
                token: Bytes::default(),
                compression: vec![Compression::Deflate],
                limits: Limits::default().peer_limits(),
            }],
            usize::MAX,
        );
        // ~11 KiB of pings, a few hundred bytes deflated.
        let pings: Vec<_> = (0..1000)
            .map(|k| Message::Ping { t: u64::MAX - k })
            .collect();
        let pings = frame(&pings, 1024);
        // 1 MiB for a document that is not open (answered with an error).
        let big = frame(
            &[Message::Update {
                doc: DocId(7),
                seq: 1,
                data: Bytes(vec![9; 1 << 20]),
            }],
            1024,
        );
        assert!(pings.len() < 2000 && big.len() < 10_000, "deflated");

        for framing in [Framing::Datagram, Framing::Stream] {
            let config = ServerConfig {
                framing,
                ..ServerConfig::default()
            };
            let mut hub = Hub::new(config, AllowAll);
            let mut reg = MemoryRegistry::new(|_: &str| OpLog::new(0));
            let now = Instant::now();
            let conn = hub.accept(now);
            hub.handle_input(conn, now, &hello, &mut reg);
            hub.handle_input(conn, now, &pings, &mut reg);
            let mut decoder = MessageDecoder::new(Limits::default());
            let mut got = Vec::new();
            while let Some((_, f)) = hub.poll_transmit() {
                decoder.decode(&f, &mut got).unwrap();
            }
            let pongs = got.iter().filter(|m| matches!(m, Message::Pong { .. }));
            assert_eq!(pongs.count(), 1000, "{framing:?}: the pings were decoded");
            let session_holds = |hub: &Hub<AllowAll>| hub.session(conn).unwrap().inbound.held();
            // A stream session keeps its reader (the partial frame), empty.
            let reader = match framing {
                Framing::Datagram => 0,
                _ => Inbound::STREAM_STATE,
            };
            assert_eq!(session_holds(&hub), reader, "{framing:?}");
            let shared = hub.inflate_held();
            assert!(shared > state && shared <= state + KEEP_BUFFER_CAPACITY);

            hub.handle_input(conn, now, &big, &mut reg);
            assert!(hub.session(conn).unwrap().phase() == Phase::Active);
            assert_eq!(session_holds(&hub), reader, "{framing:?}");
            assert_eq!(hub.inflate_held(), state, "the 1 MiB buffer was dropped");
        }
    }

    /// Transfers are held only while a sync is being sent.
    #[test]
    fn transfers_are_held_only_while_sent() {
        let config = ServerConfig::default();
        let mut s = ServerSession::new(ConnId(1), &config, Instant::now());
        let mut common = Common::new(&config.limits, config.compress_threshold, 4);
        let transfer = |doc| Transfer {
            doc: DocId(doc),
            id: 1,
            kind: SyncKind::Snapshot,
            payload: Arc::new(vec![1; 10]),
            offset: 0,
            version: Vec::new(),
        };
        s.transfers.push_back(transfer(0));
        s.transfers.push_back(transfer(1));
        s.transfers.cancel(DocId(0));
        assert!(!s.transfers.is_empty());
        s.transfers.cancel(DocId(1));
        assert!(s.transfers.0.is_none());
        s.transfers.push_back(transfer(2));
        s.pump_transfers(&mut common);
        assert!(s.transfers.0.is_none(), "sent: nothing kept");
        let frame = s.poll_frame(&mut common).unwrap();
        assert!(frame.len() > 10);
    }

    /// One entry per open document of every idle connection. It was 96
    /// bytes with the recovery state inline and the document beside it.
    #[test]
    fn a_subscription_stays_small() {
        let size = std::mem::size_of::<Subscription>();
        eprintln!("Subscription: {size} bytes");
        assert!(size <= 48, "Subscription of {size} bytes");
    }

    /// The recovery state exists only while something is recovered, and
    /// each part of it is cleared on its own.
    #[test]
    fn recovery_state_is_held_only_while_recovering() {
        let mut s = sub(1);
        let at = Instant::now();
        s.set_out_of_sync_sent(None);
        assert!(s.recovery.is_none());
        s.set_out_of_sync_sent(Some(at));
        s.set_lagging(vec![7]);
        assert_eq!(s.out_of_sync_sent(), Some(at));
        assert!(s.is_lagging());
        s.set_out_of_sync_sent(None);
        assert_eq!(s.out_of_sync_sent(), None);
        assert!(s.is_lagging(), "still lagging");
        assert_eq!(s.take_lagging(), Some(vec![7]));
        assert!(!s.is_lagging());
        assert_eq!(s.take_lagging(), None);
        assert!(s.recovery.is_none(), "nothing left to recover");
    }

    /// Most sessions hold one or two documents: no room is kept for more
    /// (an idle connection's memory, workload C of the comparison).
    #[test]
    fn subscriptions_keep_no_spare_room() {
        let mut subs = Subscriptions::default();
        for (n, index) in [3, 1, 2].into_iter().enumerate() {
            assert_eq!(subs.open(sub(index)), DocId(n as u32));
            assert_eq!(subs.0.capacity(), n + 1);
        }
        assert_eq!(subs.keys().map(|d| d.0).collect::<Vec<_>>(), [0, 1, 2]);
        for index in 4..40 {
            subs.open(sub(index));
        }
        assert_eq!(subs.len(), 39);
        for doc in 0..39 {
            assert!(subs.remove(&DocId(doc)).is_some());
        }
        assert_eq!(subs.0.capacity(), 0);
    }

    /// A new document takes the smallest free handle; freed handles at the
    /// end keep nothing.
    #[test]
    fn handles_are_the_smallest_free() {
        let mut subs = Subscriptions::default();
        for index in 0..5 {
            assert_eq!(subs.open(sub(index)), DocId(index));
        }
        assert!(subs.remove(&DocId(1)).is_some());
        assert!(subs.remove(&DocId(3)).is_some());
        assert!(subs.remove(&DocId(3)).is_none());
        assert_eq!(subs.len(), 3);
        assert_eq!(subs.handle_of(DocIndex(4)), Some(DocId(4)));
        assert_eq!(subs.open(sub(9)), DocId(1));
        assert_eq!(subs.get(&DocId(1)).map(|s| s.index), Some(DocIndex(9)));
        assert!(subs.remove(&DocId(4)).is_some());
        assert_eq!(subs.0.len(), 3, "trailing free handles are dropped");
        assert_eq!(subs.open(sub(7)), DocId(3));
        // A retired handle is not given out until the client closes it.
        assert!(subs.retire(&DocId(0)).is_some());
        assert!(subs.get(&DocId(0)).is_none());
        assert_eq!(subs.len(), 4);
        assert_eq!(subs.open(sub(8)), DocId(4));
        assert!(subs.remove(&DocId(0)).is_none());
        assert_eq!(subs.open(sub(9)), DocId(0));
        assert_eq!(
            std::mem::size_of::<Slot>(),
            std::mem::size_of::<Subscription>()
        );
    }
}
