//! Recent multi-chunk sync payloads, kept so a client cut off in the middle
//! of one can resume from its last complete chunk instead of starting over.
//! Bounded in bytes; the oldest entries go first. One session's entries
//! hold at most a share of the bytes ([`OWNER_SHARE`]): past it its own
//! oldest go first, so one session cannot flush the transfers other clients
//! may resume (beyond one payload of its own, which it must have been sent).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::server::ConnId;
use crate::wire::{DocId, SyncKind};

/// The share of the cache one session's entries may hold: a quarter.
pub(crate) const OWNER_SHARE: usize = 4;

/// One cached transfer.
#[derive(Clone, Debug)]
pub(crate) struct CachedTransfer {
    pub(crate) doc: DocId,
    pub(crate) kind: SyncKind,
    pub(crate) payload: Arc<Vec<u8>>,
    /// The server's version when the payload was computed.
    pub(crate) version: Vec<u8>,
    /// The client version it was computed from: another client asking for
    /// the same document from the same version while the server is at the
    /// same version gets this payload too.
    pub(crate) from: Vec<u8>,
}

#[derive(Debug)]
struct Entry {
    transfer: CachedTransfer,
    /// The session it was computed for.
    owner: ConnId,
}

#[derive(Debug, Default)]
pub(crate) struct TransferCache {
    entries: BTreeMap<u64, Entry>,
    order: VecDeque<u64>,
    bytes: usize,
    max_bytes: usize,
}

impl TransferCache {
    pub(crate) fn new(max_bytes: usize) -> Self {
        TransferCache {
            max_bytes,
            ..Default::default()
        }
    }

    pub(crate) fn insert(&mut self, id: u64, owner: ConnId, t: CachedTransfer) {
        let len = t.payload.len();
        if len > self.max_bytes {
            return;
        }
        // The owner's own oldest entries make room for its new one first.
        let share = self.max_bytes / OWNER_SHARE;
        let mut owned: usize = self
            .entries
            .values()
            .filter(|e| e.owner == owner)
            .map(|e| e.transfer.payload.len())
            .sum();
        while owned > 0 && owned + len > share {
            let Some(oldest) = self
                .order
                .iter()
                .position(|id| self.entries.get(id).is_some_and(|e| e.owner == owner))
            else {
                break;
            };
            if let Some(old) = self.order.remove(oldest)
                && let Some(e) = self.entries.remove(&old)
            {
                owned -= e.transfer.payload.len();
                self.bytes -= e.transfer.payload.len();
            }
        }
        while self.bytes + len > self.max_bytes {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(e) = self.entries.remove(&old) {
                self.bytes -= e.transfer.payload.len();
            }
        }
        self.bytes += len;
        self.order.push_back(id);
        self.entries.insert(id, Entry { transfer: t, owner });
    }

    /// A cached payload for `doc` from client version `from` at server
    /// version `version`, with its transfer id. Many clients joining at once
    /// then share one payload (a 20 MB snapshot is computed and held once,
    /// not once per joiner). The cache holds few entries (each over a chunk,
    /// within `max_transfer_cache_bytes`), so a scan is cheap.
    pub(crate) fn find(
        &self,
        doc: DocId,
        from: &[u8],
        version: &[u8],
    ) -> Option<(u64, &CachedTransfer)> {
        self.entries
            .iter()
            .map(|(id, e)| (*id, &e.transfer))
            .find(|(_, t)| t.doc == doc && t.from == from && t.version == version)
    }

    /// Drops the entries of `doc` (its room closed: its key
    /// may name another document next).
    pub(crate) fn forget(&mut self, doc: DocId) {
        let bytes = &mut self.bytes;
        self.entries.retain(|_, e| {
            let keep = e.transfer.doc != doc;
            if !keep {
                *bytes -= e.transfer.payload.len();
            }
            keep
        });
        let entries = &self.entries;
        self.order.retain(|id| entries.contains_key(id));
    }

    pub(crate) fn get(&self, id: u64) -> Option<&CachedTransfer> {
        self.entries.get(&id).map(|e| &e.transfer)
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(len: usize) -> CachedTransfer {
        CachedTransfer {
            doc: DocId(0),
            kind: SyncKind::Delta,
            payload: Arc::new(vec![0; len]),
            version: Vec::new(),
            from: Vec::new(),
        }
    }

    #[test]
    fn evicts_oldest_to_stay_within_bytes() {
        let mut c = TransferCache::new(100);
        c.insert(1, ConnId(1), t(40));
        c.insert(2, ConnId(2), t(40));
        c.insert(3, ConnId(3), t(40));
        assert!(c.get(1).is_none());
        assert!(c.get(2).is_some() && c.get(3).is_some());
        assert_eq!(c.bytes(), 80);
        c.insert(4, ConnId(4), t(101));
        assert!(c.get(4).is_none());
    }

    /// One session inserting many payloads replaces its own, not the
    /// others' (beyond one payload larger than its share).
    #[test]
    fn one_session_cannot_flush_the_others() {
        let mut c = TransferCache::new(1000);
        c.insert(1, ConnId(1), t(200));
        c.insert(2, ConnId(2), t(200));
        for id in 10..1000 {
            c.insert(id, ConnId(9), t(100));
        }
        assert!(c.get(1).is_some() && c.get(2).is_some());
        assert!(c.bytes() <= 400 + 1000 / OWNER_SHARE);
        // A payload over the share still fits, replacing the owner's.
        c.insert(5000, ConnId(9), t(300));
        assert!(c.get(5000).is_some() && c.get(999).is_none());
        assert!(c.get(1).is_some() && c.get(2).is_some());
    }
}
