//! Recent multi-chunk sync payloads, kept so a client cut off in the middle
//! of one can resume from its last complete chunk instead of starting over.
//! Bounded in bytes; the oldest entries go first.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::wire::{DocId, SyncKind};

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

#[derive(Debug, Default)]
pub(crate) struct TransferCache {
    entries: BTreeMap<u64, CachedTransfer>,
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

    pub(crate) fn insert(&mut self, id: u64, t: CachedTransfer) {
        let len = t.payload.len();
        if len > self.max_bytes {
            return;
        }
        while self.bytes + len > self.max_bytes {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(e) = self.entries.remove(&old) {
                self.bytes -= e.payload.len();
            }
        }
        self.bytes += len;
        self.order.push_back(id);
        self.entries.insert(id, t);
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
            .find(|(_, t)| t.doc == doc && t.from == from && t.version == version)
            .map(|(id, t)| (*id, t))
    }

    /// Drops the entries of `doc` (it left the hub's directory: its key
    /// may name another document next).
    pub(crate) fn forget(&mut self, doc: DocId) {
        let bytes = &mut self.bytes;
        self.entries.retain(|_, t| {
            let keep = t.doc != doc;
            if !keep {
                *bytes -= t.payload.len();
            }
            keep
        });
        let entries = &self.entries;
        self.order.retain(|id| entries.contains_key(id));
    }

    pub(crate) fn get(&self, id: u64) -> Option<&CachedTransfer> {
        self.entries.get(&id)
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
        c.insert(1, t(40));
        c.insert(2, t(40));
        c.insert(3, t(40));
        assert!(c.get(1).is_none());
        assert!(c.get(2).is_some() && c.get(3).is_some());
        assert_eq!(c.bytes(), 80);
        c.insert(4, t(101));
        assert!(c.get(4).is_none());
    }
}
