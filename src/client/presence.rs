//! A client's presence for one document: its own state (throttled, with the
//! trailing edge kept, renewed before the server expires it, re-published
//! after a reconnect) and its view of everyone else's.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::time::Instant;

use crate::wire::{AwarenessEntry, Bytes, SessionId};

/// Another session's presence in a document, as the server stamped it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The identity the server authenticated for that session.
    pub identity: String,
    /// Its state.
    pub state: Bytes,
}

#[derive(Debug, Default)]
pub(crate) struct Presence {
    /// Our latest state (`None`: none published).
    pub(crate) local: Option<Bytes>,
    pub(crate) clock: u32,
    /// The local state changed since it was last sent.
    pub(crate) dirty: bool,
    pub(crate) last_sent: Option<Instant>,
    pub(crate) peers: BTreeMap<SessionId, (u32, Peer)>,
}

impl Presence {
    pub(crate) fn set(&mut self, state: Option<Bytes>) {
        self.local = state;
        self.clock = self.clock.wrapping_add(1);
        self.dirty = true;
    }

    /// When our state should next go out: a pending change after the
    /// throttle, or a renewal before the server's expiry.
    pub(crate) fn next_send(
        &self,
        now: Instant,
        throttle: Duration,
        renew: Duration,
    ) -> Option<Instant> {
        let last = self.last_sent;
        if self.dirty {
            return Some(match last {
                Some(t) => t.checked_add(throttle).unwrap_or(now),
                None => now,
            });
        }
        if self.local.is_some() {
            return last.and_then(|t| t.checked_add(renew));
        }
        None
    }

    /// Applies a server delta; returns the entries that changed the view.
    ///
    /// The view is bounded whatever the server sends: at most `max_states`
    /// peers (an honest server keeps no more per document; entries for new
    /// peers past it are ignored until some leave) and states of at most
    /// `max_len` bytes (longer ones are ignored).
    pub(crate) fn apply(
        &mut self,
        own: Option<SessionId>,
        entries: Vec<AwarenessEntry>,
        max_states: usize,
        max_len: usize,
    ) -> Vec<AwarenessEntry> {
        let mut changed = Vec::new();
        for e in entries {
            if Some(e.session) == own {
                continue;
            }
            match &e.state {
                Some(state) => {
                    let known = self.peers.get(&e.session);
                    if known.is_some_and(|(c, _)| *c > e.clock)
                        || state.len() > max_len
                        || (known.is_none() && self.peers.len() >= max_states)
                    {
                        continue;
                    }
                    self.peers.insert(
                        e.session,
                        (
                            e.clock,
                            Peer {
                                identity: e.identity.clone(),
                                state: state.clone(),
                            },
                        ),
                    );
                }
                None => {
                    if self.peers.remove(&e.session).is_none() {
                        continue;
                    }
                }
            }
            changed.push(e);
        }
        changed
    }
}
