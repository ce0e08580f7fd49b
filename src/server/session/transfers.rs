//! Sync payloads (deltas, snapshots) a session sends in chunks as its
//! outbound queue drains.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::wire::{DocId, SyncKind};

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

    pub(super) fn front_mut(&mut self) -> Option<&mut Transfer> {
        self.0.as_mut()?.front_mut()
    }

    /// Drops the first transfer (sent).
    pub(super) fn pop_front(&mut self) {
        if let Some(q) = &mut self.0 {
            q.pop_front();
            if q.is_empty() {
                self.0 = None;
            }
        }
    }
}
