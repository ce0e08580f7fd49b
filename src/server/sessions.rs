//! The hub's sessions, indexed by connection id and by deadline.
//!
//! **Slots.** A [`ConnId`] is a slot index (low 32 bits) and the slot's
//! generation (high 32 bits). Finding a session is an index and a
//! comparison, on the hot path of every input and every fan-out recipient.
//! A closed connection's slot goes on a free list and is reused, with its
//! generation bumped, by the next connection: the table holds as many slots
//! as connections were ever live *at once*, however many come and go (a
//! table that reclaims only from the front keeps one slot per connection
//! accepted since its oldest live one). An id is not handed out again until
//! its slot was reused 2^32 times. Iteration is in slot order, deterministic.
//!
//! **Deadlines.** Each live session with a deadline is filed exactly once in
//! a sorted set under an instant *no later than* its deadline
//! ([`ServerSession::next_timeout`]): the earliest is the first entry, and
//! firing looks only at entries that came due. A deadline that moves later
//! (the idle deadline, on every input) costs nothing: the old entry fires
//! early, the hub finds nothing due and files the session again under its
//! real deadline. A deadline that moves earlier must be refiled
//! ([`Sessions::schedule`]), which the hub does after every input and
//! command that could move it.

use crate::time::Instant;
use std::collections::BTreeSet;

use super::{ConnId, ServerSession};

/// Marks a slot that is not on the free list.
const NO_SLOT: u32 = u32::MAX;

struct Slot {
    generation: u32,
    /// The next free slot while this one is free (`NO_SLOT`: the last).
    next_free: u32,
    session: Option<Box<ServerSession>>,
    /// The instant its session is filed under in `Sessions::deadlines`.
    filed: Option<Instant>,
}

pub(crate) struct Sessions {
    slots: Vec<Slot>,
    /// The most recently freed slot (reused first: it is warm in cache).
    free: u32,
    len: usize,
    deadlines: BTreeSet<(Instant, ConnId)>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            slots: Vec::new(),
            free: NO_SLOT,
            len: 0,
            deadlines: BTreeSet::new(),
        }
    }
}

fn id(slot: u32, generation: u32) -> ConnId {
    ConnId(u64::from(generation) << 32 | u64::from(slot))
}

/// The slot index of `id` (its generation is checked by the caller).
fn slot_of(id: ConnId) -> usize {
    (id.0 & u64::from(u32::MAX)) as usize
}

fn generation_of(id: ConnId) -> u32 {
    (id.0 >> 32) as u32
}

impl Sessions {
    fn slot(&self, id: ConnId) -> Option<&Slot> {
        self.slots
            .get(slot_of(id))
            .filter(|s| s.generation == generation_of(id))
    }

    fn slot_mut(&mut self, id: ConnId) -> Option<&mut Slot> {
        self.slots
            .get_mut(slot_of(id))
            .filter(|s| s.generation == generation_of(id))
    }

    pub(crate) fn get(&self, id: &ConnId) -> Option<&ServerSession> {
        self.slot(*id)?.session.as_deref()
    }

    pub(crate) fn get_mut(&mut self, id: &ConnId) -> Option<&mut ServerSession> {
        self.slot_mut(*id)?.session.as_deref_mut()
    }

    /// Adds the session `new` makes for the id it is given (a free slot's,
    /// or a new slot's), and files it under `deadline`. `None` when the
    /// table holds 2^32 - 1 sessions.
    pub(crate) fn insert(
        &mut self,
        new: impl FnOnce(ConnId) -> Box<ServerSession>,
        deadline: impl FnOnce(&ServerSession) -> Option<Instant>,
    ) -> Option<ConnId> {
        let index = if self.free != NO_SLOT {
            let index = self.free;
            let slot = &mut self.slots[index as usize];
            self.free = std::mem::replace(&mut slot.next_free, NO_SLOT);
            index
        } else {
            let index = u32::try_from(self.slots.len())
                .ok()
                .filter(|i| *i != NO_SLOT)?;
            self.slots.push(Slot {
                generation: 0,
                next_free: NO_SLOT,
                session: None,
                filed: None,
            });
            index
        };
        let slot = &mut self.slots[index as usize];
        let conn = id(index, slot.generation);
        let session = new(conn);
        let at = deadline(&session);
        slot.session = Some(session);
        self.len += 1;
        self.schedule(conn, at);
        Some(conn)
    }

    /// Removes `id`'s session and its deadline; its slot is reused by a
    /// later connection under another id.
    pub(crate) fn remove(&mut self, id: &ConnId) -> Option<Box<ServerSession>> {
        let free = self.free;
        let slot = self.slot_mut(*id)?;
        let session = slot.session.take()?;
        let filed = slot.filed.take();
        slot.generation = slot.generation.wrapping_add(1);
        slot.next_free = free;
        self.free = slot_of(*id) as u32;
        self.len -= 1;
        if let Some(at) = filed {
            self.deadlines.remove(&(at, *id));
        }
        Some(session)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.slots
            .iter()
            .filter_map(|s| s.session.as_deref())
            .map(|s| s.conn)
    }

    /// Files `id` under `at` when that is earlier than the instant it is
    /// filed under (or it is not filed): call it whenever its session's
    /// deadline may have moved earlier. A later `at` changes nothing (the
    /// entry fires early and is refiled then), so calling it after every
    /// input costs a comparison.
    pub(crate) fn schedule(&mut self, id: ConnId, at: Option<Instant>) {
        visits::add(1);
        let Some(at) = at else {
            return;
        };
        let Some(slot) = self.slot_mut(id) else {
            return;
        };
        if slot.session.is_none() || slot.filed.is_some_and(|f| f <= at) {
            return;
        }
        if let Some(old) = slot.filed.replace(at) {
            self.deadlines.remove(&(old, id));
        }
        self.deadlines.insert((at, id));
    }

    /// The earliest instant a session is filed under.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        visits::add(1);
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Unfiles the sessions filed under an instant at or before `now` and
    /// appends their ids to `out`; the caller fires what is due and files
    /// them again ([`Sessions::schedule`]) under their next deadline.
    pub(crate) fn take_expired(&mut self, now: Instant, out: &mut Vec<ConnId>) {
        visits::add(1);
        while let Some(&(at, id)) = self.deadlines.first()
            && at <= now
        {
            visits::add(1);
            self.deadlines.pop_first();
            if let Some(slot) = self.slot_mut(id) {
                slot.filed = None;
            }
            out.push(id);
        }
    }

    /// Slots held, live or free.
    #[cfg(test)]
    pub(crate) fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Every live session with a deadline is filed under an instant no
    /// later than it, exactly once.
    #[cfg(test)]
    pub(crate) fn check_filed(&self, deadline: impl Fn(&ServerSession) -> Option<Instant>) {
        let mut filed = 0;
        for slot in &self.slots {
            let Some(s) = slot.session.as_deref() else {
                assert!(slot.filed.is_none());
                continue;
            };
            if let Some(at) = slot.filed {
                assert!(self.deadlines.contains(&(at, s.conn)));
                filed += 1;
            }
            if let Some(d) = deadline(s) {
                assert!(slot.filed.is_some_and(|f| f <= d), "{:?} not filed", s.conn);
            }
        }
        assert_eq!(filed, self.deadlines.len());
    }
}

/// Counts the entries the timer paths look at (deadlines filed, fired), so
/// tests can bound the work of `poll_timeout` and `handle_timeout`. Per
/// thread: tests run in parallel. Compiled to nothing outside tests.
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
    use std::time::Duration;

    fn add(s: &mut Sessions, at: Option<Instant>) -> ConnId {
        let config = ServerConfig::default();
        s.insert(
            |conn| Box::new(ServerSession::new(conn, &config, Instant::now())),
            |_| at,
        )
        .unwrap()
    }

    #[test]
    fn slots_are_reused_under_new_ids() {
        let mut s = Sessions::default();
        let ids: Vec<ConnId> = (0..5).map(|_| add(&mut s, None)).collect();
        assert_eq!(ids, (0..5).map(ConnId).collect::<Vec<_>>());
        assert_eq!(s.get(&ids[3]).map(|x| x.conn), Some(ids[3]));
        s.remove(&ids[1]);
        s.remove(&ids[3]);
        assert!(s.get(&ids[1]).is_none() && s.remove(&ids[1]).is_none());
        // The last freed slot first, each under its next generation.
        let a = add(&mut s, None);
        let b = add(&mut s, None);
        assert_eq!((a, b), (id(3, 1), id(1, 1)));
        assert!(
            s.get(&ids[3]).is_none(),
            "the old id does not reach the new session"
        );
        assert_eq!(s.get(&a).map(|x| x.conn), Some(a));
        assert_eq!((s.len(), s.slots()), (5, 5));
        assert_eq!(
            s.keys().collect::<Vec<_>>(),
            [ids[0], b, ids[2], a, ids[4]],
            "slot order"
        );
        let c = add(&mut s, None);
        assert_eq!((c, s.slots()), (ConnId(5), 6));
    }

    #[test]
    fn deadlines_are_filed_once_under_the_earliest() {
        let t = Instant::now();
        let ms = Duration::from_millis(1);
        let mut s = Sessions::default();
        let a = add(&mut s, Some(t + ms * 30));
        let b = add(&mut s, Some(t + ms * 20));
        let c = add(&mut s, None);
        assert_eq!(s.next_deadline(), Some(t + ms * 20));
        // Later: nothing changes. Earlier: refiled, the old entry gone.
        s.schedule(b, Some(t + ms * 40));
        s.schedule(a, Some(t + ms * 10));
        s.schedule(c, Some(t + ms * 50));
        assert_eq!(s.deadlines.len(), 3);
        assert_eq!(s.next_deadline(), Some(t + ms * 10));
        let mut out = Vec::new();
        s.take_expired(t + ms * 20, &mut out);
        assert_eq!(out, [a, b]);
        assert_eq!(s.next_deadline(), Some(t + ms * 50));
        // Unfiled ones take any deadline; a removed one leaves no entry.
        s.schedule(a, Some(t + ms * 60));
        s.remove(&c);
        assert_eq!(s.next_deadline(), Some(t + ms * 60));
        s.remove(&a);
        assert_eq!(s.next_deadline(), None);
        // A gone id is not filed.
        s.schedule(a, Some(t));
        assert_eq!(s.next_deadline(), None);
    }
}
