//! The rooms table and the rooms' lifecycle: a room opens with its first
//! subscriber, lingers once the last one left
//! ([`ServerConfig::unload_after`](crate::server::ServerConfig::unload_after)),
//! and closes when the linger ends; the hub then tells the registry to
//! unload the document. The lingering rooms charged to one connection are
//! capped, so opening and closing documents cannot keep more loaded.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::time::Instant;

use crate::wire::DocId;

use super::{ConnId, DocIndex, Room};

/// The rooms table: the documents loaded for the hub's connections, by
/// [`DocIndex`] and by name, and the lifecycle of each room (subscribed,
/// lingering once the last subscriber left, closed).
#[derive(Default)]
pub(crate) struct Rooms {
    /// Indexed by [`DocIndex`]; `None`: a free slot (listed in `free`).
    slots: Vec<Option<Room>>,
    /// Free slots below the last one in use; the smallest is reused first,
    /// so slots stay dense.
    free: BTreeSet<u32>,
    by_name: BTreeMap<Arc<str>, DocIndex>,
    /// Documents nobody subscribes to, by when they leave.
    idle: BTreeSet<(Instant, DocIndex)>,
    /// The lingering documents charged to each connection (the last
    /// subscriber to leave them), by when they leave: at most the cap
    /// given to [`Rooms::unsubscribe`] each, so a peer opening and
    /// closing documents cannot keep more than that many loaded past its
    /// open ones. Entries outlive the connection until their documents
    /// leave.
    charged: BTreeMap<ConnId, BTreeSet<(Instant, DocIndex)>>,
    len: usize,
}

impl Rooms {
    /// Rooms in the table (including those lingering).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn index(&self, name: &str) -> Option<DocIndex> {
        self.by_name.get(name).copied()
    }

    pub(crate) fn get(&self, index: DocIndex) -> Option<&Room> {
        self.slots.get(index.0 as usize)?.as_ref()
    }

    pub(crate) fn name(&self, index: DocIndex) -> Option<&Arc<str>> {
        self.get(index).map(|e| &e.name)
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = (DocIndex, &Room)> {
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
        let entry = Room::new(Arc::clone(&name));
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
    /// [`Rooms::pop_expired`] takes it.
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

    /// Lingering documents charged to `conn` (see [`Rooms::unsubscribe`]).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_leave_after_the_linger_and_slots_are_reused() {
        let t0 = Instant::now();
        let linger = Some(Duration::from_secs(2));
        let mut d = Rooms::default();
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
        let mut d = Rooms::default();
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
}
