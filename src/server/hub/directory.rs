//! The hub's document directory: the documents some connection has open,
//! or had open until less than the unload linger ago
//! ([`ServerConfig::unload_after`](crate::server::ServerConfig::unload_after)).
//!
//! Connections name documents by their own handles ([`DocId`], per
//! connection, like QUIC stream ids); the directory numbers them with a
//! [`DocIndex`], a slot reused once its document leaves. Every subscriber is
//! listed with its handle, so fan-out encodes a message once per distinct
//! handle, not once per recipient.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::time::Instant;

use crate::wire::DocId;

use crate::registry::Registry;

use super::{Authorizer, ConnId, Hub};

/// The hub's own number for a document in its directory: a slot, reused
/// once the document leaves. Never on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct DocIndex(pub(crate) u32);

impl DocIndex {
    /// The key of the server-wide tables that name documents by a [`DocId`]
    /// (presence, resumable transfers): the index, which no connection
    /// sees. Such entries must not outlive the document's slot.
    pub(crate) fn key(self) -> DocId {
        DocId(self.0)
    }

    /// The index behind a [`DocIndex::key`].
    pub(crate) fn from_key(key: DocId) -> Self {
        DocIndex(key.0)
    }
}

/// One document in the directory.
pub(crate) struct DocEntry {
    pub(crate) name: Arc<str>,
    pub(crate) subscribers: Subscribers,
    /// When the document leaves, if nobody subscribes again before.
    /// `None` while subscribed (or never, per the policy).
    unload_at: Option<Instant>,
    /// The connection whose leaving started the linger, while the
    /// document counts against its lingering allowance.
    charged_to: Option<ConnId>,
}

/// The connections subscribed to a document with their handles for it,
/// sorted by handle then connection: recipients sharing a handle (most
/// do: connections number their few documents from 0) are adjacent, and
/// fan-out encodes once per run. A vector, not a B-tree: every update walks
/// it, while joins and leaves are rare.
#[derive(Default)]
pub(crate) struct Subscribers(Vec<(DocId, ConnId)>);

impl Subscribers {
    fn insert(&mut self, conn: ConnId, handle: DocId) {
        if let Err(i) = self.0.binary_search(&(handle, conn)) {
            self.0.insert(i, (handle, conn));
        }
    }

    fn remove(&mut self, conn: ConnId, handle: DocId) {
        if let Ok(i) = self.0.binary_search(&(handle, conn)) {
            self.0.remove(i);
        }
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `(handle, connection)` pairs, grouped by handle.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (DocId, ConnId)> + '_ {
        self.0.iter().copied()
    }

    /// The subscribers in runs of one handle each.
    pub(crate) fn runs(&self) -> impl Iterator<Item = (DocId, &[(DocId, ConnId)])> + '_ {
        self.0
            .chunk_by(|a, b| a.0 == b.0)
            .map(|run| (run[0].0, run))
    }
}

/// The documents loaded for the hub's connections.
#[derive(Default)]
pub(crate) struct Directory {
    /// Indexed by [`DocIndex`]; `None`: a free slot (listed in `free`).
    slots: Vec<Option<DocEntry>>,
    /// Free slots below the last one in use; the smallest is reused first,
    /// so slots stay dense.
    free: BTreeSet<u32>,
    by_name: BTreeMap<Arc<str>, DocIndex>,
    /// Documents nobody subscribes to, by when they leave.
    idle: BTreeSet<(Instant, DocIndex)>,
    /// The lingering documents charged to each connection (the last
    /// subscriber to leave them), by when they leave: at most the cap
    /// given to [`Directory::unsubscribe`] each, so a peer opening and
    /// closing documents cannot keep more than that many loaded past its
    /// open ones. Entries outlive the connection until their documents
    /// leave.
    charged: BTreeMap<ConnId, BTreeSet<(Instant, DocIndex)>>,
    len: usize,
}

impl Directory {
    /// Documents in the directory (including those waiting to leave).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn index(&self, name: &str) -> Option<DocIndex> {
        self.by_name.get(name).copied()
    }

    pub(crate) fn get(&self, index: DocIndex) -> Option<&DocEntry> {
        self.slots.get(index.0 as usize)?.as_ref()
    }

    pub(crate) fn name(&self, index: DocIndex) -> Option<&Arc<str>> {
        self.get(index).map(|e| &e.name)
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = (DocIndex, &DocEntry)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some((DocIndex(i as u32), e.as_ref()?)))
    }

    /// The index of `name`, adding it (in a free slot) if needed.
    pub(crate) fn insert(&mut self, name: &str) -> DocIndex {
        if let Some(index) = self.index(name) {
            return index;
        }
        let name: Arc<str> = name.into();
        let entry = DocEntry {
            name: Arc::clone(&name),
            subscribers: Subscribers::default(),
            unload_at: None,
            charged_to: None,
        };
        let index = match self.free.pop_first() {
            Some(i) => {
                self.slots[i as usize] = Some(entry);
                DocIndex(i)
            }
            None => {
                // Slots never exceed the documents loaded at once, which
                // the registry holds in memory anyway.
                self.slots.push(Some(entry));
                DocIndex(u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX))
            }
        };
        self.by_name.insert(name, index);
        self.len += 1;
        index
    }

    /// `conn` subscribes to the document at `index` under `handle`; the
    /// document no longer waits to leave.
    pub(crate) fn subscribe(&mut self, index: DocIndex, conn: ConnId, handle: DocId) {
        let Some(Some(entry)) = self.slots.get_mut(index.0 as usize) else {
            return;
        };
        entry.subscribers.insert(conn, handle);
        if let Some(at) = entry.unload_at.take() {
            self.idle.remove(&(at, index));
            if let Some(by) = entry.charged_to.take() {
                uncharge(&mut self.charged, by, (at, index));
            }
        }
    }

    /// `conn` no longer subscribes (under `handle`); the last subscriber
    /// leaving starts the linger (`None`: the document stays), charged to
    /// `conn`. Past `cap` lingering documents charged to `conn`, the one
    /// that would leave first is due at once (at `now`): the next
    /// [`Directory::pop_expired`] takes it.
    pub(crate) fn unsubscribe(
        &mut self,
        index: DocIndex,
        conn: ConnId,
        handle: DocId,
        now: Option<Instant>,
        linger: Option<Duration>,
        cap: usize,
    ) {
        let Some(Some(entry)) = self.slots.get_mut(index.0 as usize) else {
            return;
        };
        entry.subscribers.remove(conn, handle);
        if !entry.subscribers.is_empty() || entry.unload_at.is_some() {
            return;
        }
        // A linger too long to represent never ends.
        let (Some(now), Some(at)) = (now, now.zip(linger).and_then(|(now, d)| now.checked_add(d)))
        else {
            return;
        };
        entry.unload_at = Some(at);
        entry.charged_to = Some(conn);
        self.idle.insert((at, index));
        let charged = self.charged.entry(conn).or_default();
        charged.insert((at, index));
        if charged.len() <= cap {
            return;
        }
        let Some((oldest_at, oldest)) = charged.pop_first() else {
            return;
        };
        if charged.is_empty() {
            self.charged.remove(&conn);
        }
        self.idle.remove(&(oldest_at, oldest));
        self.idle.insert((now, oldest));
        if let Some(Some(entry)) = self.slots.get_mut(oldest.0 as usize) {
            entry.unload_at = Some(now);
            entry.charged_to = None;
        }
    }

    /// Lingering documents charged to `conn` (see [`Directory::unsubscribe`]).
    #[cfg(test)]
    fn charged_to(&self, conn: ConnId) -> usize {
        self.charged.get(&conn).map_or(0, BTreeSet::len)
    }

    /// When the next idle document leaves.
    pub(crate) fn next_unload(&self) -> Option<Instant> {
        self.idle.first().map(|(at, _)| *at)
    }

    /// Takes out the next document whose linger ended by `now`, with the
    /// index it had (free again).
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<(DocIndex, Arc<str>)> {
        let (at, index) = *self.idle.first()?;
        if at > now {
            return None;
        }
        self.idle.pop_first();
        let entry = self.slots.get_mut(index.0 as usize)?.take()?;
        if let Some(by) = entry.charged_to {
            uncharge(&mut self.charged, by, (at, index));
        }
        self.by_name.remove(&entry.name);
        self.free.insert(index.0);
        self.len -= 1;
        // Free slots at the end are given back.
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
            self.free.remove(&(self.slots.len() as u32));
        }
        if self.slots.is_empty() {
            self.slots = Vec::new();
        }
        Some((index, entry.name))
    }
}

/// Takes `key` out of the documents charged to `conn`, dropping its set
/// once empty.
fn uncharge(
    charged: &mut BTreeMap<ConnId, BTreeSet<(Instant, DocIndex)>>,
    conn: ConnId,
    key: (Instant, DocIndex),
) {
    if let Some(set) = charged.get_mut(&conn) {
        set.remove(&key);
        if set.is_empty() {
            charged.remove(&conn);
        }
    }
}

impl<A: Authorizer> Hub<A> {
    /// Removes `conn`'s subscription to its document `doc` (the client
    /// closed it, or disconnected), freeing the handle.
    pub(super) fn unsubscribe(&mut self, conn: ConnId, doc: DocId) {
        self.leave(conn, doc, false);
    }

    /// Removes `conn`'s subscription to its document `doc` on the server's
    /// initiative (access revoked): the handle stays retired until the
    /// client closes it, so updates it sent before it heard cannot land in
    /// a document opened next under the same handle.
    pub(super) fn revoke(&mut self, conn: ConnId, doc: DocId) {
        self.leave(conn, doc, true);
    }

    /// Removes the subscription with its presence state and the
    /// acknowledgements still due for it (the handle may name another
    /// document next). The last subscriber leaving starts the document's
    /// unload linger.
    fn leave(&mut self, conn: ConnId, doc: DocId, retire: bool) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        let sub = if retire {
            s.docs.retire(&doc)
        } else {
            s.docs.remove(&doc)
        };
        let Some(sub) = sub else {
            return;
        };
        s.transfers.cancel(doc);
        let session = s.session;
        self.forget_acks(conn, doc, sub.last_seq > sub.durable_seq);
        if let Some(leave) = self.presence.remove(sub.index.key(), session) {
            self.share_presence(sub.index, Some(conn), vec![leave]);
        }
        let linger = self.config.unload_after;
        let cap = self.config.limits.max_docs_per_connection;
        self.directory
            .unsubscribe(sub.index, conn, doc, self.now, linger, cap);
    }

    /// Takes the documents whose unload linger ended out of the directory
    /// and tells the registry to unload them (it keeps what only it holds:
    /// a memory registry its written documents, a durable one its writes
    /// not yet on disk until they are).
    pub(super) fn unload_idle<R: Registry>(&mut self, now: Instant, registry: &mut R) {
        while let Some((index, name)) = self.directory.pop_expired(now) {
            // Nothing server-wide may outlive the document's slot.
            self.transfers.forget(index.key());
            registry.unload(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_leave_after_the_linger_and_slots_are_reused() {
        let t0 = Instant::now();
        let linger = Some(Duration::from_secs(2));
        let mut d = Directory::default();
        let a = d.insert("a");
        let b = d.insert("b");
        assert_eq!((a, b, d.len()), (DocIndex(0), DocIndex(1), 2));
        d.subscribe(a, ConnId(1), DocId(0));
        d.subscribe(b, ConnId(1), DocId(1));
        d.unsubscribe(a, ConnId(1), DocId(0), Some(t0), linger, 8);
        assert_eq!(d.next_unload(), Some(t0 + Duration::from_secs(2)));
        assert!(d.pop_expired(t0 + Duration::from_secs(1)).is_none());
        let (index, name) = d.pop_expired(t0 + Duration::from_secs(2)).unwrap();
        assert_eq!((index, &*name, d.len()), (a, "a", 1));
        assert_eq!(d.index("a"), None);
        assert_eq!(d.insert("c"), DocIndex(0), "slot reused");
        // Subscribing again cancels the departure.
        d.unsubscribe(b, ConnId(1), DocId(1), Some(t0), linger, 8);
        d.subscribe(b, ConnId(2), DocId(0));
        assert_eq!(d.next_unload(), None);
        d.unsubscribe(b, ConnId(2), DocId(0), Some(t0), linger, 8);
        d.subscribe(DocIndex(0), ConnId(2), DocId(1));
        d.unsubscribe(DocIndex(0), ConnId(2), DocId(1), Some(t0), linger, 8);
        let later = t0 + Duration::from_secs(9);
        assert!(d.pop_expired(later).is_some());
        assert!(d.pop_expired(later).is_some());
        assert!(d.pop_expired(later).is_none());
        assert_eq!(d.len(), 0);
        assert!(d.slots.capacity() == 0 && d.free.is_empty() && d.charged.is_empty());
    }

    #[test]
    fn lingering_documents_past_the_cap_are_due_at_once() {
        let t0 = Instant::now();
        let linger = Some(Duration::from_secs(60));
        let mut d = Directory::default();
        let (conn, other) = (ConnId(1), ConnId(2));
        for i in 0..5u32 {
            let index = d.insert(&format!("d{i}"));
            d.subscribe(index, conn, DocId(0));
            let now = t0 + Duration::from_millis(u64::from(i));
            d.unsubscribe(index, conn, DocId(0), Some(now), linger, 2);
        }
        assert_eq!((d.len(), d.charged_to(conn)), (5, 2));
        // The three oldest are due at once, the two newest linger.
        let now = t0 + Duration::from_millis(4);
        let due: Vec<String> = std::iter::from_fn(|| d.pop_expired(now))
            .map(|(_, name)| name.to_string())
            .collect();
        assert_eq!(due, ["d0", "d1", "d2"]);
        assert_eq!((d.len(), d.charged_to(conn)), (2, 2));
        // Another connection's reopen takes one off `conn`'s charge; its
        // own leaving charges it to that connection.
        let d3 = d.index("d3").unwrap();
        d.subscribe(d3, other, DocId(7));
        assert_eq!(d.charged_to(conn), 1);
        d.unsubscribe(d3, other, DocId(7), Some(now), linger, 2);
        assert_eq!((d.charged_to(conn), d.charged_to(other)), (1, 1));
        let later = now + Duration::from_secs(61);
        assert_eq!(std::iter::from_fn(|| d.pop_expired(later)).count(), 2);
        assert!(d.charged.is_empty() && d.len() == 0);
    }

    #[test]
    fn subscribers_run_by_handle() {
        let mut s = Subscribers::default();
        for (conn, handle) in [(3, 0), (1, 1), (2, 0), (4, 1), (5, 2)] {
            s.insert(ConnId(conn), DocId(handle));
        }
        let runs: Vec<(u32, Vec<u64>)> = s
            .runs()
            .map(|(h, run)| (h.0, run.iter().map(|(_, c)| c.0).collect()))
            .collect();
        assert_eq!(runs, [(0, vec![2, 3]), (1, vec![1, 4]), (2, vec![5])]);
        s.remove(ConnId(3), DocId(0));
        s.remove(ConnId(3), DocId(1)); // not under that handle
        assert_eq!(s.len(), 4);
    }
}
