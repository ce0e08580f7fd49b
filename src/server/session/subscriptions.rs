//! A session's subscriptions: one per open document, under the session's
//! own handles.

use crate::time::Instant;

use crate::server::room::DocIndex;
use crate::wire::{Access, DocId};

/// A session's subscription to one document.
///
/// One is kept per open document of every idle connection: the state only a
/// subscription in trouble needs is boxed ([`Recovery`]), and the handle is
/// the entry's position in [`Subscriptions`], which keeps an entry at 48
/// bytes.
#[derive(Clone, Debug)]
pub(crate) struct Subscription {
    /// The document's room in the hub (set once).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(doc: u32) -> Subscription {
        Subscription::new(DocIndex(doc), Access::ReadWrite)
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
