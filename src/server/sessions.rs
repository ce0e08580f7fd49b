//! The hub's sessions, indexed by connection id.
//!
//! Connection ids are handed out in increasing order and never reused, so a
//! deque of slots with a base offset finds a session with one subtraction
//! instead of a tree search; slots of closed connections at the front are
//! dropped, so the deque spans only the ids still (or recently) in use.
//! Iteration is in id order, as deterministic as a `BTreeMap`.

use std::collections::VecDeque;

use super::{ConnId, ServerSession};

#[derive(Default)]
pub(crate) struct Sessions {
    base: u64,
    slots: VecDeque<Option<Box<ServerSession>>>,
    len: usize,
}

impl Sessions {
    fn index(&self, id: ConnId) -> Option<usize> {
        usize::try_from(id.0.checked_sub(self.base)?).ok()
    }

    pub(crate) fn get(&self, id: &ConnId) -> Option<&ServerSession> {
        self.slots.get(self.index(*id)?)?.as_deref()
    }

    pub(crate) fn get_mut(&mut self, id: &ConnId) -> Option<&mut ServerSession> {
        let i = self.index(*id)?;
        self.slots.get_mut(i)?.as_deref_mut()
    }

    /// Adds the session of a new connection; ids must increase.
    pub(crate) fn insert(&mut self, id: ConnId, session: Box<ServerSession>) {
        if self.slots.is_empty() {
            self.base = id.0;
        }
        let Some(i) = self.index(id) else {
            return;
        };
        while self.slots.len() <= i {
            self.slots.push_back(None);
        }
        if self.slots[i].replace(session).is_none() {
            self.len += 1;
        }
    }

    pub(crate) fn remove(&mut self, id: &ConnId) -> Option<Box<ServerSession>> {
        let i = self.index(*id)?;
        let s = self.slots.get_mut(i)?.take()?;
        self.len -= 1;
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
        Some(s)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.values().map(|s| s.conn)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &ServerSession> {
        self.slots
            .iter()
            .inspect(|_| visits::add(1))
            .filter_map(|s| s.as_deref())
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (ConnId, &mut ServerSession)> {
        self.slots
            .iter_mut()
            .inspect(|_| visits::add(1))
            .filter_map(|s| s.as_deref_mut())
            .map(|s| (s.conn, s))
    }

    /// Slots held, live or not.
    #[cfg(test)]
    pub(crate) fn slots(&self) -> usize {
        self.slots.len()
    }
}

/// Counts the entries the timer paths look at (slots, deadlines), so tests
/// can bound the work of `poll_timeout` and `handle_timeout`. Per thread:
/// tests run in parallel.
pub(crate) mod visits {
    #[cfg(test)]
    thread_local! {
        static VISITS: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
    }

    #[inline]
    pub(crate) fn add(_n: u64) {
        #[cfg(test)]
        VISITS.with(|v| v.set(v.get() + _n));
    }

    /// The entries visited since the last call.
    #[cfg(test)]
    pub(crate) fn take() -> u64 {
        VISITS.with(|v| v.replace(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::ServerConfig;
    use std::time::Instant;

    fn session(id: u64) -> Box<ServerSession> {
        Box::new(ServerSession::new(
            ConnId(id),
            &ServerConfig::default(),
            Instant::now(),
        ))
    }

    #[test]
    fn slots_follow_ids_and_shrink_from_the_front() {
        let mut s = Sessions::default();
        for id in 5..10 {
            s.insert(ConnId(id), session(id));
        }
        assert_eq!(s.len(), 5);
        assert!(s.get(&ConnId(4)).is_none() && s.get(&ConnId(10)).is_none());
        assert_eq!(s.get(&ConnId(7)).map(|x| x.conn), Some(ConnId(7)));
        s.remove(&ConnId(6));
        s.remove(&ConnId(5));
        assert_eq!(s.slots.len(), 3, "5 and 6 dropped from the front");
        assert_eq!(
            s.keys().collect::<Vec<_>>(),
            [ConnId(7), ConnId(8), ConnId(9)]
        );
        assert!(s.remove(&ConnId(6)).is_none());
        for id in [7, 8, 9] {
            s.remove(&ConnId(id));
        }
        assert_eq!(s.len(), 0);
        s.insert(ConnId(20), session(20));
        assert_eq!(s.keys().collect::<Vec<_>>(), [ConnId(20)]);
    }
}
