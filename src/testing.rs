//! A minimal CRDT for tests, examples, simulations and fuzzing.
//!
//! [`OpLog`] implements [`Document`] with the properties that matter to the
//! protocol — versions, deltas, duplicates, missing causal dependencies,
//! snapshots, pruning — in a few hundred lines and with no dependency, so
//! the sessions can be tested without a real CRDT library. It is not meant
//! for applications: use the yrs, loro or automerge adapters.

use std::collections::BTreeMap;

use crate::document::{ApplyOutcome, Document, DocumentError};

/// An op log: each op is `(client, counter, payload)`, and op `n` of a client
/// depends on op `n - 1` of the same client. Versions are per-client
/// contiguous counters, so deltas, duplicates and missing dependencies all
/// behave like a real CRDT's.
/// ```
/// use crdt_socket_sync::document::{ApplyOutcome, Document};
/// use crdt_socket_sync::testing::OpLog;
///
/// let mut a = OpLog::new(1);
/// a.edit(b"hello ");
/// a.edit(b"world");
/// let update = a.take_local_update().unwrap();
/// let mut b = OpLog::new(2);
/// assert_eq!(b.apply(&update), ApplyOutcome::Applied);
/// assert_eq!(b.text(), "hello world");
/// assert_eq!(b.apply(&update), ApplyOutcome::Duplicate);
/// ```
#[derive(Clone, Debug, Default)]
pub struct OpLog {
    /// The client id local edits are made as.
    pub client: u32,
    /// Behave like a CRDT that pruned its history: no deltas, snapshots only.
    pub no_deltas: bool,
    /// History below this version was pruned: peers not at or above it get
    /// a snapshot.
    pub pruned: BTreeMap<u32, u32>,
    ops: BTreeMap<(u32, u32), Vec<u8>>,
    clock: BTreeMap<u32, u32>,
    pending: BTreeMap<(u32, u32), Vec<u8>>,
    pending_bytes: usize,
    sent: u32,
}

/// First byte of every update.
pub const MAGIC: u8 = 0xA5;

type Op = ((u32, u32), Vec<u8>);

impl OpLog {
    /// An empty log whose local edits are made as `client`.
    pub fn new(client: u32) -> Self {
        OpLog {
            client,
            ..Default::default()
        }
    }

    /// A local edit appending `payload`.
    pub fn edit(&mut self, payload: &[u8]) {
        let c = self.clock.get(&self.client).copied().unwrap_or(0) + 1;
        self.clock.insert(self.client, c);
        self.ops.insert((self.client, c), payload.to_vec());
    }

    /// The state as text: every payload in op-id order.
    pub fn text(&self) -> String {
        self.ops
            .values()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    /// Number of ops integrated.
    pub fn op_count(&self) -> usize {
        self.ops.len()
    }

    fn encode_ops<'a>(ops: impl Iterator<Item = (&'a (u32, u32), &'a Vec<u8>)>) -> Vec<u8> {
        let mut out = vec![MAGIC];
        for ((client, counter), payload) in ops {
            out.extend_from_slice(&client.to_le_bytes());
            out.extend_from_slice(&counter.to_le_bytes());
            out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
            out.extend_from_slice(payload);
        }
        out
    }

    fn decode_ops(bytes: &[u8]) -> Result<Vec<Op>, DocumentError> {
        let bad = || DocumentError::Invalid("not an op log update".into());
        let (&magic, mut rest) = bytes.split_first().ok_or_else(bad)?;
        if magic != MAGIC {
            return Err(bad());
        }
        let mut ops = Vec::new();
        while !rest.is_empty() {
            if rest.len() < 10 {
                return Err(bad());
            }
            let client = u32::from_le_bytes(rest[0..4].try_into().unwrap());
            let counter = u32::from_le_bytes(rest[4..8].try_into().unwrap());
            let len = u16::from_le_bytes(rest[8..10].try_into().unwrap()) as usize;
            if counter == 0 || rest.len() < 10 + len {
                return Err(bad());
            }
            ops.push(((client, counter), rest[10..10 + len].to_vec()));
            rest = &rest[10 + len..];
        }
        Ok(ops)
    }

    fn decode_version(bytes: &[u8]) -> Result<BTreeMap<u32, u32>, DocumentError> {
        if !bytes.len().is_multiple_of(8) {
            return Err(DocumentError::Invalid("bad version".into()));
        }
        Ok(bytes
            .chunks(8)
            .map(|c| {
                (
                    u32::from_le_bytes(c[0..4].try_into().unwrap()),
                    u32::from_le_bytes(c[4..8].try_into().unwrap()),
                )
            })
            .collect())
    }

    fn integrate_pending(&mut self) {
        let clients: Vec<u32> = self.pending.keys().map(|(c, _)| *c).collect();
        for c in clients {
            loop {
                let next = self.clock.get(&c).copied().unwrap_or(0) + 1;
                let Some(p) = self.pending.remove(&(c, next)) else {
                    break;
                };
                self.pending_bytes -= p.len() + 10;
                self.clock.insert(c, next);
                self.ops.insert((c, next), p);
            }
        }
    }
}

impl Document for OpLog {
    fn version(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (c, n) in &self.clock {
            out.extend_from_slice(&c.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    fn delta_since(&self, version: &[u8]) -> Result<Vec<u8>, DocumentError> {
        let v = Self::decode_version(version)?;
        if self.no_deltas
            || self
                .pruned
                .iter()
                .any(|(c, n)| v.get(c).copied().unwrap_or(0) < *n)
        {
            return Err(DocumentError::DeltaUnavailable);
        }
        Ok(Self::encode_ops(
            self.ops
                .iter()
                .filter(|((c, n), _)| *n > v.get(c).copied().unwrap_or(0)),
        ))
    }

    fn apply(&mut self, update: &[u8]) -> ApplyOutcome {
        let ops = match Self::decode_ops(update) {
            Ok(ops) => ops,
            Err(e) => return ApplyOutcome::Invalid(e),
        };
        let mut added = Vec::new();
        for (id, p) in ops {
            if self.ops.contains_key(&id) || self.pending.contains_key(&id) {
                continue;
            }
            added.push(id);
            self.pending_bytes += p.len() + 10;
            self.pending.insert(id, p);
        }
        self.integrate_pending();
        if added.is_empty() {
            ApplyOutcome::Duplicate
        } else if added.iter().any(|id| self.pending.contains_key(id)) {
            // Some of this update's ops still wait for their dependencies.
            ApplyOutcome::Pending {
                held_bytes: self.pending_bytes,
            }
        } else {
            ApplyOutcome::Applied
        }
    }

    fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    fn common_version(&self, versions: &[&[u8]]) -> Option<Vec<u8>> {
        let decoded: Vec<BTreeMap<u32, u32>> = versions
            .iter()
            .map(|v| Self::decode_version(v).ok())
            .collect::<Option<_>>()?;
        let mut common = decoded.first()?.clone();
        for v in &decoded[1..] {
            for (c, n) in common.iter_mut() {
                *n = (*n).min(v.get(c).copied().unwrap_or(0));
            }
        }
        let mut out = Vec::new();
        for (c, n) in common.iter().filter(|(_, n)| **n > 0) {
            out.extend_from_slice(&c.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
        Some(out)
    }

    fn prune_to(&mut self, version: &[u8]) -> Result<bool, DocumentError> {
        let v = Self::decode_version(version)?;
        let changed = v
            .iter()
            .any(|(c, n)| self.pruned.get(c).copied().unwrap_or(0) < *n);
        for (c, n) in v {
            let p = self.pruned.entry(c).or_default();
            *p = (*p).max(n);
        }
        Ok(changed)
    }

    fn snapshot(&self) -> Vec<u8> {
        Self::encode_ops(self.ops.iter())
    }

    fn load_snapshot(&mut self, snapshot: &[u8]) -> Result<(), DocumentError> {
        match self.apply(snapshot) {
            ApplyOutcome::Invalid(e) => Err(e),
            _ => Ok(()),
        }
    }

    fn take_local_update(&mut self) -> Option<Vec<u8>> {
        let now = self.clock.get(&self.client).copied().unwrap_or(0);
        if now == self.sent {
            return None;
        }
        let me = self.client;
        let from = self.sent;
        self.sent = now;
        Some(Self::encode_ops(self.ops.range((me, from + 1)..=(me, now))))
    }
}

// ---- the cost model, checked ----

/// Events one input may cause regardless of its size.
pub const EVENTS_PER_INPUT: usize = 8;
/// Events one decoded unit (a message, or an update inside an
/// `UpdateBatch`) may cause: e.g. `DocumentOpened` + `SnapshotSent` +
/// `DocumentSynced` for an `Open`, or one `DocumentError` per refused update.
pub const EVENTS_PER_UNIT: usize = 3;
/// The shortest frame on a stream: a 2-byte header, an empty body and the
/// 4-byte checksum. An input of `n` stream bytes completes at most
/// `1 + n / MIN_FRAME_LEN` frames.
pub const MIN_FRAME_LEN: usize = 6;
/// Heap bytes the receive side of a session may hold beyond twice what it
/// received: the stream reader itself and the small partial-frame buffer it
/// keeps between frames.
pub const HELD_INPUT_SLACK: usize = 8 * 1024;

/// Which bound of the cost model an input broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BudgetKind {
    /// A session's queued bytes passed `max_outbound_bytes + max_frame_len`.
    QueuedBytes,
    /// A session's queued messages passed
    /// `max_outbound_messages + max_messages_per_frame`.
    QueuedMessages,
    /// A session still in its handshake buffered more than one frame
    /// (`max_frame_len`): nothing is reassembled before `Hello`.
    HandshakeInput,
    /// A session buffered more than one partial frame plus one fragmented
    /// message (`max_frame_len + max_message_len`).
    BufferedInput,
    /// A session's receive side held more than twice the bytes of
    /// incomplete input it received plus [`HELD_INPUT_SLACK`]: memory
    /// reserved on a peer's say-so.
    Reservation,
    /// One input caused more events than
    /// [`EVENTS_PER_INPUT`] + [`EVENTS_PER_UNIT`] × units it can carry + one
    /// per session and per open subscription.
    Events,
    /// The hub's cache of resumable transfers passed
    /// `max_transfer_cache_bytes`.
    TransferCache,
}

/// An input cost more than the cost model allows: which bound, where, and
/// by how much. Its `Display` is one line meant for a fuzzer's crash report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetExceeded {
    /// The bound broken.
    pub kind: BudgetKind,
    /// The session concerned (`None` for hub-wide bounds).
    pub conn: Option<crate::server::ConnId>,
    /// That session's phase.
    pub phase: Option<crate::server::Phase>,
    /// Bytes in the input that broke it.
    pub input_len: usize,
    /// What was measured.
    pub value: usize,
    /// What the cost model allows.
    pub bound: usize,
}

impl core::fmt::Display for BudgetExceeded {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "budget {:?} exceeded", self.kind)?;
        if let Some(conn) = self.conn {
            write!(f, " by conn {}", conn.0)?;
        }
        if let Some(phase) = self.phase {
            let phase = match phase {
                crate::server::Phase::Handshake { .. } => "handshake",
                crate::server::Phase::Active => "active",
                crate::server::Phase::Closed => "closed",
            };
            write!(f, " ({phase})")?;
        }
        write!(
            f,
            " after an input of {} bytes: {} > {}",
            self.input_len, self.value, self.bound
        )
    }
}

impl std::error::Error for BudgetExceeded {}

/// Checks, after every input to a [`Hub`](crate::server::Hub), that what the
/// input cost stays within the cost model, for every session of the hub
/// (not only the sender's):
///
/// - queued bytes ≤ `max_outbound_bytes + max_frame_len`, queued messages ≤
///   `max_outbound_messages + max_messages_per_frame` (the limit plus one
///   frame, control messages included);
/// - before the handshake, buffered input ≤ `max_frame_len` (one partial
///   frame, no reassembly); after it, ≤ `max_frame_len + max_message_len`;
/// - memory held for input ≤ 2 × received + [`HELD_INPUT_SLACK`] (nothing
///   reserved from a declared length);
/// - events caused by the input ≤ [`EVENTS_PER_INPUT`] + [`EVENTS_PER_UNIT`]
///   × `max_messages_per_frame` × frames the input can complete (one per
///   input with message framing, `1 + n / MIN_FRAME_LEN` on a stream) + one
///   per session and per open subscription (a close, a lagging subscriber);
/// - the transfer cache within `max_transfer_cache_bytes`.
///
/// ```
/// use std::time::Instant;
/// use crdt_socket_sync::registry::MemoryRegistry;
/// use crdt_socket_sync::server::{AllowAll, Hub, ServerConfig};
/// use crdt_socket_sync::testing::{Budget, OpLog};
///
/// let now = Instant::now();
/// let mut hub = Hub::new(ServerConfig::default(), AllowAll);
/// let mut reg = MemoryRegistry::new(|_| OpLog::new(0));
/// let budget = Budget::new(&hub);
/// let conn = hub.accept(now);
/// budget.drain_events(&mut hub);
/// let events = budget.input(&mut hub, conn, now, b"\x10garbage", &mut reg).unwrap();
/// assert!(!events.is_empty()); // the connection was closed
/// ```
#[derive(Clone, Debug)]
pub struct Budget {
    limits: crate::Limits,
    stream: bool,
}

impl Budget {
    /// A checker for `hub`'s limits and framing.
    pub fn new<A: crate::server::Authorizer>(hub: &crate::server::Hub<A>) -> Self {
        Budget {
            limits: hub.config().limits,
            stream: hub.config().framing == crate::Framing::Stream,
        }
    }

    /// Drains the events pending on `hub`, returning how many there were.
    pub fn drain_events<A: crate::server::Authorizer>(
        &self,
        hub: &mut crate::server::Hub<A>,
    ) -> usize {
        let mut n = 0;
        while hub.poll_event().is_some() {
            n += 1;
        }
        n
    }

    /// Feeds `bytes` from `conn` to `hub`, then checks the cost model.
    /// Returns the events pending afterwards, all counted as this input's
    /// (drain them after every call, as the driving contract says).
    pub fn input<A, R>(
        &self,
        hub: &mut crate::server::Hub<A>,
        conn: crate::server::ConnId,
        now: crate::time::Instant,
        bytes: &[u8],
        registry: &mut R,
    ) -> Result<Vec<crate::server::ServerEvent>, BudgetExceeded>
    where
        A: crate::server::Authorizer,
        R: crate::registry::Registry,
    {
        hub.handle_input(conn, now, bytes, registry);
        let events: Vec<_> = std::iter::from_fn(|| hub.poll_event()).collect();
        self.check(hub, bytes.len(), events.len())?;
        Ok(events)
    }

    /// Checks the cost model after an input of `input_len` bytes (0 for a
    /// timeout) that caused `events` events.
    pub fn check<A: crate::server::Authorizer>(
        &self,
        hub: &crate::server::Hub<A>,
        input_len: usize,
        events: usize,
    ) -> Result<(), BudgetExceeded> {
        use crate::server::Phase;
        let l = &self.limits;
        let frame = l.max_frame_len as usize;
        let per_frame = l.max_messages_per_frame as usize;
        let exceeded = |kind, conn, phase, value, bound| {
            if value > bound {
                Err(BudgetExceeded {
                    kind,
                    conn,
                    phase,
                    input_len,
                    value,
                    bound,
                })
            } else {
                Ok(())
            }
        };
        let mut fan_out = 0usize;
        for s in hub.sessions() {
            let conn = s.conn();
            let at = (Some(conn), Some(s.phase()));
            fan_out = fan_out.saturating_add(1 + s.open_documents());
            exceeded(
                BudgetKind::QueuedBytes,
                at.0,
                at.1,
                s.queued_bytes(),
                l.max_outbound_bytes.saturating_add(frame),
            )?;
            exceeded(
                BudgetKind::QueuedMessages,
                at.0,
                at.1,
                s.queued_messages(),
                l.max_outbound_messages.saturating_add(per_frame),
            )?;
            if matches!(s.phase(), Phase::Handshake { .. }) {
                exceeded(
                    BudgetKind::HandshakeInput,
                    at.0,
                    at.1,
                    s.buffered_input(),
                    frame,
                )?;
            }
            let message = usize::try_from(l.max_message_len).unwrap_or(usize::MAX);
            exceeded(
                BudgetKind::BufferedInput,
                at.0,
                at.1,
                s.buffered_input(),
                frame.saturating_add(message),
            )?;
            exceeded(
                BudgetKind::Reservation,
                at.0,
                at.1,
                s.held_input(),
                s.received_input()
                    .saturating_mul(2)
                    .saturating_add(HELD_INPUT_SLACK),
            )?;
        }
        let frames = if self.stream {
            1 + input_len / MIN_FRAME_LEN
        } else {
            1
        };
        let units = frames.saturating_mul(per_frame);
        exceeded(
            BudgetKind::Events,
            None,
            None,
            events,
            EVENTS_PER_INPUT
                .saturating_add(units.saturating_mul(EVENTS_PER_UNIT))
                .saturating_add(fan_out),
        )?;
        exceeded(
            BudgetKind::TransferCache,
            None,
            None,
            hub.transfer_cache_bytes(),
            l.max_transfer_cache_bytes,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::registry::MemoryRegistry;
    use crate::server::{AllowAll, Hub, ServerConfig};

    /// The checker reports the bound an input broke: a checker that never
    /// did would pass every budget test.
    #[test]
    fn a_broken_bound_is_reported() {
        let now = Instant::now();
        let mut hub = Hub::new(ServerConfig::default(), AllowAll);
        let mut reg = MemoryRegistry::new(|_| OpLog::new(0));
        let budget = Budget::new(&hub);
        let e = budget.check(&hub, 0, usize::MAX).unwrap_err();
        assert_eq!((e.kind, e.conn), (BudgetKind::Events, None));
        assert_eq!(budget.check(&hub, 0, e.bound), Ok(()));
        // A checker allowing no queued byte at all: the close frame the
        // hub queues for garbage breaks it, for that session.
        let conn = hub.accept(now);
        budget.drain_events(&mut hub);
        let strict = Budget {
            limits: crate::Limits {
                max_outbound_bytes: 0,
                max_frame_len: 0,
                ..budget.limits
            },
            ..budget.clone()
        };
        let e = strict
            .input(&mut hub, conn, now, b"\x10garbage", &mut reg)
            .unwrap_err();
        assert_eq!(
            (e.kind, e.conn, e.input_len),
            (BudgetKind::QueuedBytes, Some(conn), 8)
        );
        assert!(e.value > e.bound && e.to_string().contains("QueuedBytes"));
    }
}
