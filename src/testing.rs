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
