//! Presence (awareness): who is in a document and their ephemeral state
//! (cursor, selection, user colour...).
//!
//! [`PresenceTable`] is the server's record, independent of how documents are
//! stored, so CRDT-aware and relay modes share it. States are stamped with
//! the identity the server authenticated, expire unless renewed, vanish when
//! their session leaves, and are never persisted. [`RateLimit`] bounds how
//! often a session may publish.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::time::Instant;

use thiserror::Error;

use crate::wire::{AwarenessEntry, Bytes, DocId, SessionId};

/// A presence update was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PresenceError {
    /// The state is larger than the limit.
    #[error("presence state of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Size of the state.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The document already has the maximum number of states.
    #[error("document already has {limit} presence states")]
    TooManyStates {
        /// The limit.
        limit: usize,
    },
    /// The session publishes faster than allowed.
    #[error("presence updates faster than {per_second} per second")]
    RateLimited {
        /// The allowed rate.
        per_second: u32,
    },
}

/// Encoded bytes of an [`AwarenessEntry`] besides its identity and state,
/// at most: session id, clock, option tag and two length prefixes.
const ENTRY_OVERHEAD: usize = 32;

#[derive(Clone, Debug)]
struct Entry {
    identity: String,
    clock: u32,
    state: Bytes,
    expires: Option<Instant>,
}

/// The server's presence states, per document and session.
///
/// ```
/// use std::time::{Duration, Instant};
/// use crdt_socket_sync::awareness::PresenceTable;
/// use crdt_socket_sync::wire::{Bytes, DocId, SessionId};
///
/// let now = Instant::now();
/// let mut table = PresenceTable::new(16, 1024, Duration::from_secs(30));
/// let delta = table
///     .set(DocId(0), SessionId(7), "alice", 1, Some(Bytes::from(vec![1])), now)
///     .unwrap()
///     .unwrap();
/// assert_eq!(delta.identity, "alice");
/// assert_eq!(table.states(DocId(0)).len(), 1);
/// // Without renewal the state expires.
/// let gone = table.expire(now + Duration::from_secs(31));
/// assert_eq!(gone.len(), 1);
/// assert!(gone[0].1.state.is_none());
/// ```
#[derive(Clone, Debug)]
pub struct PresenceTable {
    docs: BTreeMap<DocId, BTreeMap<SessionId, Entry>>,
    /// Every state with an expiry, by expiry: finding the next one and
    /// expiring what is due look only at those.
    expiry: BTreeSet<(Instant, DocId, SessionId)>,
    max_states: usize,
    max_state_len: usize,
    ttl: Duration,
}

impl PresenceTable {
    /// A table allowing `max_states` states per document of at most
    /// `max_state_len` bytes each, expiring `ttl` after their last renewal.
    pub fn new(max_states: usize, max_state_len: usize, ttl: Duration) -> Self {
        PresenceTable {
            docs: BTreeMap::new(),
            expiry: BTreeSet::new(),
            max_states,
            max_state_len,
            ttl,
        }
    }

    /// Records `session`'s state for `doc` (`None` clears it). Returns the
    /// delta to broadcast, or `None` when nothing changed (an older clock, or
    /// clearing a state that does not exist). A renewal with the same clock
    /// and state only extends the expiry and returns `None`.
    pub fn set(
        &mut self,
        doc: DocId,
        session: SessionId,
        identity: &str,
        clock: u32,
        state: Option<Bytes>,
        now: Instant,
    ) -> Result<Option<AwarenessEntry>, PresenceError> {
        let states = self.docs.entry(doc).or_default();
        let Some(state) = state else {
            let removed = states.remove(&session);
            if states.is_empty() {
                self.docs.remove(&doc);
            }
            return Ok(removed.map(|e| self.left(doc, session, e)));
        };
        if state.len() > self.max_state_len {
            return Err(PresenceError::TooLarge {
                len: state.len(),
                limit: self.max_state_len,
            });
        }
        let expires = now.checked_add(self.ttl);
        if let Some(e) = states.get_mut(&session) {
            if clock < e.clock {
                return Ok(None);
            }
            if e.expires != expires {
                if let Some(t) = e.expires {
                    self.expiry.remove(&(t, doc, session));
                }
                if let Some(t) = expires {
                    self.expiry.insert((t, doc, session));
                }
                e.expires = expires;
            }
            if clock == e.clock && e.state == state {
                return Ok(None);
            }
            e.clock = clock;
            e.state = state.clone();
        } else {
            if states.len() >= self.max_states {
                return Err(PresenceError::TooManyStates {
                    limit: self.max_states,
                });
            }
            states.insert(
                session,
                Entry {
                    identity: identity.to_string(),
                    clock,
                    state: state.clone(),
                    expires,
                },
            );
            if let Some(t) = expires {
                self.expiry.insert((t, doc, session));
            }
        }
        Ok(Some(AwarenessEntry {
            session,
            identity: identity.to_string(),
            clock,
            state: Some(state),
        }))
    }

    /// Removes every state of `session` (it disconnected); returns the leave
    /// deltas per document.
    pub fn remove_session(&mut self, session: SessionId) -> Vec<(DocId, AwarenessEntry)> {
        let mut out = Vec::new();
        self.docs.retain(|doc, states| {
            if let Some(e) = states.remove(&session) {
                out.push((*doc, e));
            }
            !states.is_empty()
        });
        out.into_iter()
            .map(|(doc, e)| (doc, self.left(doc, session, e)))
            .collect()
    }

    /// Removes `session`'s state in `doc` (it closed the document).
    pub fn remove(&mut self, doc: DocId, session: SessionId) -> Option<AwarenessEntry> {
        let states = self.docs.get_mut(&doc)?;
        let e = states.remove(&session)?;
        if states.is_empty() {
            self.docs.remove(&doc);
        }
        Some(self.left(doc, session, e))
    }

    /// `session`'s state `e` in `doc` was removed: unfiles its expiry and
    /// returns the leave delta.
    fn left(&mut self, doc: DocId, session: SessionId, e: Entry) -> AwarenessEntry {
        if let Some(t) = e.expires {
            self.expiry.remove(&(t, doc, session));
        }
        leave(session, e)
    }

    /// The current states of `doc` for a session joining it, in pieces of
    /// about `piece` encoded bytes (at least one state each), and no more
    /// than about `budget` bytes in all: only what the joiner has room for
    /// is copied.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use crdt_socket_sync::awareness::PresenceTable;
    /// use crdt_socket_sync::wire::{Bytes, DocId, SessionId};
    ///
    /// let now = Instant::now();
    /// let mut table = PresenceTable::new(16, 1024, Duration::from_secs(30));
    /// for s in 0..10 {
    ///     let state = Some(Bytes::from(vec![0; 1000]));
    ///     table.set(DocId(0), SessionId(s), "p", 1, state, now).unwrap();
    /// }
    /// let pieces = table.snapshot(DocId(0), 2500, 5000);
    /// assert_eq!(pieces.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2]);
    /// assert_eq!(table.snapshot(DocId(0), 100_000, usize::MAX)[0].len(), 10);
    /// ```
    pub fn snapshot(&self, doc: DocId, piece: usize, budget: usize) -> Vec<Vec<AwarenessEntry>> {
        let mut pieces = Vec::new();
        let Some(states) = self.docs.get(&doc) else {
            return pieces;
        };
        let (mut current, mut current_len, mut total) = (Vec::new(), 0usize, 0usize);
        for (s, e) in states {
            let len = ENTRY_OVERHEAD + e.identity.len() + e.state.len();
            total = total.saturating_add(len);
            if total > budget {
                break;
            }
            if !current.is_empty() && current_len + len > piece {
                pieces.push(std::mem::take(&mut current));
                current_len = 0;
            }
            current_len += len;
            current.push(AwarenessEntry {
                session: *s,
                identity: e.identity.clone(),
                clock: e.clock,
                state: Some(e.state.clone()),
            });
        }
        if !current.is_empty() {
            pieces.push(current);
        }
        pieces
    }

    /// Every current state of `doc`, for a session joining it.
    pub fn states(&self, doc: DocId) -> Vec<AwarenessEntry> {
        self.docs.get(&doc).map_or_else(Vec::new, |states| {
            states
                .iter()
                .map(|(s, e)| AwarenessEntry {
                    session: *s,
                    identity: e.identity.clone(),
                    clock: e.clock,
                    state: Some(e.state.clone()),
                })
                .collect()
        })
    }

    /// Removes states not renewed in time; returns their leave deltas.
    pub fn expire(&mut self, now: Instant) -> Vec<(DocId, AwarenessEntry)> {
        let mut out = Vec::new();
        while let Some(&(t, doc, session)) = self.expiry.first()
            && t <= now
        {
            crate::server::sessions::visits::add(1);
            self.expiry.pop_first();
            let Some(states) = self.docs.get_mut(&doc) else {
                continue;
            };
            if let Some(e) = states.remove(&session) {
                out.push((doc, leave(session, e)));
            }
            if states.is_empty() {
                self.docs.remove(&doc);
            }
        }
        // Reported per document, then per session, whatever the order
        // they expired in.
        out.sort_unstable_by_key(|(doc, e)| (*doc, e.session));
        out
    }

    /// When the next state expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        crate::server::sessions::visits::add(1);
        self.expiry.first().map(|(t, _, _)| *t)
    }
}

fn leave(session: SessionId, e: Entry) -> AwarenessEntry {
    AwarenessEntry {
        session,
        identity: e.identity,
        clock: e.clock.wrapping_add(1),
        state: None,
    }
}

/// A token bucket: at most `per_second` events per second, with bursts of
/// up to `per_second`. Time comes from the caller.
///
/// ```
/// use std::time::{Duration, Instant};
/// use crdt_socket_sync::awareness::RateLimit;
/// let now = Instant::now();
/// let mut limit = RateLimit::new(2, now);
/// assert!(limit.allow(now) && limit.allow(now));
/// assert!(!limit.allow(now));
/// assert!(limit.allow(now + Duration::from_millis(500)));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    per_second: u32,
    /// Tokens in millionths.
    tokens: u64,
    last: Instant,
}

impl RateLimit {
    /// A full bucket.
    pub fn new(per_second: u32, now: Instant) -> Self {
        RateLimit {
            per_second,
            tokens: u64::from(per_second) * 1_000_000,
            last: now,
        }
    }

    /// The configured rate.
    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    /// Takes one token if available.
    pub fn allow(&mut self, now: Instant) -> bool {
        let cap = u64::from(self.per_second) * 1_000_000;
        if let Some(elapsed) = now.checked_duration_since(self.last) {
            let refill = elapsed
                .as_micros()
                .saturating_mul(u128::from(self.per_second));
            self.tokens = cap.min(
                self.tokens
                    .saturating_add(u64::try_from(refill).unwrap_or(u64::MAX)),
            );
            self.last = now;
        }
        if self.tokens >= 1_000_000 {
            self.tokens -= 1_000_000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::sessions::visits;

    /// 5,000 states over 100 documents, renewed a microsecond apart:
    /// finding the next expiry looks at one entry, expiring ten at about
    /// ten, whatever the number of states.
    #[test]
    fn expiry_costs_what_expires() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let us = Duration::from_micros(1);
        let mut t = PresenceTable::new(64, 16, ttl);
        for i in 0..5000u32 {
            let (doc, s) = (DocId(i % 100), SessionId(u64::from(i)));
            t.set(doc, s, "u", 1, b(1), t0 + us * i).unwrap();
        }
        visits::take();
        assert_eq!(t.next_expiry(), Some(t0 + ttl));
        let polled = visits::take();
        assert!(polled <= 2, "next_expiry visited {polled} states");
        // A renewal (same clock and state) moves the first expiry later.
        let renewed = t.set(DocId(0), SessionId(0), "u", 1, b(1), t0 + us * 5000);
        assert_eq!(renewed, Ok(None));
        assert_eq!(t.next_expiry(), Some(t0 + ttl + us));
        visits::take();
        let gone = t.expire(t0 + ttl + us * 10);
        let fired = visits::take();
        assert!(fired <= 30, "expire visited {fired} states");
        let gone: Vec<(DocId, SessionId)> = gone.iter().map(|(d, e)| (*d, e.session)).collect();
        let want: Vec<(DocId, SessionId)> = (1..=10u32)
            .map(|i| (DocId(i % 100), SessionId(u64::from(i))))
            .collect();
        assert_eq!(gone, want, "in document and session order");
        assert_eq!(t.next_expiry(), Some(t0 + ttl + us * 11));
        // Cleared and removed states leave no expiry behind.
        t.set(DocId(11), SessionId(11), "u", 2, None, t0).unwrap();
        t.remove_session(SessionId(12));
        t.remove(DocId(13), SessionId(13));
        assert_eq!(t.next_expiry(), Some(t0 + ttl + us * 14));
    }

    fn b(v: u8) -> Option<Bytes> {
        Some(Bytes(vec![v]))
    }

    #[test]
    fn newer_clock_wins_and_renewal_is_silent() {
        let now = Instant::now();
        let mut t = PresenceTable::new(8, 16, Duration::from_secs(10));
        let d = DocId(1);
        let s = SessionId(1);
        assert!(t.set(d, s, "a", 2, b(1), now).unwrap().is_some());
        assert!(
            t.set(d, s, "a", 1, b(9), now).unwrap().is_none(),
            "stale clock"
        );
        assert!(t.set(d, s, "a", 2, b(1), now).unwrap().is_none(), "renewal");
        assert!(t.set(d, s, "a", 3, b(2), now).unwrap().is_some());
        // The renewal pushed the expiry.
        assert!(t.expire(now + Duration::from_secs(9)).is_empty());
        assert_eq!(t.expire(now + Duration::from_secs(10)).len(), 1);
        assert_eq!(t.next_expiry(), None);
    }

    #[test]
    fn limits_are_typed_errors() {
        let now = Instant::now();
        let mut t = PresenceTable::new(1, 2, Duration::from_secs(10));
        assert_eq!(
            t.set(DocId(0), SessionId(1), "a", 1, Some(Bytes(vec![0; 3])), now),
            Err(PresenceError::TooLarge { len: 3, limit: 2 })
        );
        t.set(DocId(0), SessionId(1), "a", 1, b(1), now).unwrap();
        assert_eq!(
            t.set(DocId(0), SessionId(2), "b", 1, b(1), now),
            Err(PresenceError::TooManyStates { limit: 1 })
        );
    }

    #[test]
    fn leaving_removes_every_state_of_a_session() {
        let now = Instant::now();
        let mut t = PresenceTable::new(8, 16, Duration::from_secs(10));
        t.set(DocId(0), SessionId(1), "a", 1, b(1), now).unwrap();
        t.set(DocId(1), SessionId(1), "a", 1, b(1), now).unwrap();
        t.set(DocId(1), SessionId(2), "b", 1, b(1), now).unwrap();
        let gone = t.remove_session(SessionId(1));
        assert_eq!(gone.len(), 2);
        assert!(gone.iter().all(|(_, e)| e.state.is_none()));
        assert_eq!(t.states(DocId(1)).len(), 1);
        assert!(t.states(DocId(0)).is_empty());
    }

    #[test]
    fn rate_limit_refills_over_time() {
        let now = Instant::now();
        let mut r = RateLimit::new(10, now);
        let allowed = (0..20).filter(|_| r.allow(now)).count();
        assert_eq!(allowed, 10);
        assert!(r.allow(now + Duration::from_millis(100)));
        assert!(!r.allow(now + Duration::from_millis(100)));
    }
}
