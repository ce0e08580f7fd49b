//! Which connections need the caller's attention: those with frames to send
//! (drained by [`Hub::poll_transmit`](super::Hub::poll_transmit)), those
//! whose output, closed state or `wants_input` changed since the last
//! [`Hub::take_touched`](super::Hub::take_touched), and lagging subscribers
//! whose queue drained, due for a catch-up at the next
//! [`Hub::handle_timeout`](super::Hub::handle_timeout).
//!
//! A fan-out marks every recipient, so marking must be cheap: each session
//! carries two flags saying whether it is already listed, which makes a mark
//! one branch and at most one push instead of two B-tree inserts. Order is
//! first-marked first, which is as deterministic as the id order it
//! replaces.

use std::collections::{BTreeSet, VecDeque};

use super::ConnId;
use super::ServerSession;
use super::sessions::Sessions;

#[derive(Default)]
pub(crate) struct Marks {
    /// Sessions that may have output; `ServerSession::in_ready` says whether
    /// a session is listed. Entries whose output is gone are dropped when
    /// they reach the front.
    ready: VecDeque<ConnId>,
    /// Sessions touched since the last `take_touched`
    /// (`ServerSession::in_touched`).
    touched: Vec<ConnId>,
    /// Sessions with a lagging subscription (`ServerSession::lagging`), no
    /// transfer waiting and their queue down to the low-water mark: their
    /// catch-up is due. Listed when a drain (or the lagging itself) finds
    /// them there, so neither `poll_timeout` nor `handle_timeout` looks at
    /// the others.
    catch_ups: BTreeSet<ConnId>,
    /// Sessions whose due catch-up their sync rate held back: listed again
    /// when the hub's sync retry deadline comes.
    rate_held: BTreeSet<ConnId>,
}

impl Marks {
    /// `s` has output (and so is touched).
    pub(crate) fn ready(&mut self, s: &mut ServerSession) {
        if !s.listed().ready {
            s.listed_mut().ready = true;
            self.ready.push_back(s.conn());
        }
        self.touch(s);
    }

    /// Something about `s` changed that the caller should look at.
    pub(crate) fn touch(&mut self, s: &mut ServerSession) {
        if !s.listed().touched {
            s.listed_mut().touched = true;
            self.touched.push(s.conn());
        }
    }

    /// The first listed session that still has output; listed sessions
    /// without output (or gone) are unlisted on the way.
    pub(crate) fn first_ready(&mut self, sessions: &mut Sessions) -> Option<ConnId> {
        loop {
            let conn = *self.ready.front()?;
            match sessions.get_mut(&conn) {
                Some(s) if s.has_output() => return Some(conn),
                Some(s) => s.listed_mut().ready = false,
                None => {}
            }
            self.ready.pop_front();
        }
    }

    /// `s`, the session [`Marks::first_ready`] returned, just gave its
    /// frame: unlist it now if it has nothing more, sparing the next call a
    /// second look at it.
    pub(crate) fn sent_from_first(&mut self, s: &mut ServerSession) {
        if !s.has_output() && self.ready.front() == Some(&s.conn()) {
            s.listed_mut().ready = false;
            self.ready.pop_front();
        }
    }

    /// `s` may have a lagging subscription and its queue may have drained:
    /// list its catch-up as due when both hold. One branch for sessions
    /// that do not lag, so every drain can call it.
    pub(crate) fn drained(&mut self, s: &ServerSession, low_water: usize) {
        if s.listed().lagging && s.transfers().is_empty() && s.queue().bytes() <= low_water {
            self.catch_ups.insert(s.conn());
        }
    }

    /// `conn`'s catch-up is due but its sync rate held it back.
    pub(crate) fn hold_for_rate(&mut self, conn: ConnId) {
        self.rate_held.insert(conn);
    }

    /// The sync retry deadline came: the catch-ups held back are due again.
    pub(crate) fn retry_held(&mut self) {
        self.catch_ups.append(&mut self.rate_held);
    }

    /// Whether some catch-up is due.
    pub(crate) fn catch_up_due(&self) -> bool {
        !self.catch_ups.is_empty()
    }

    /// The sessions whose catch-up is due, in id order; unlisted.
    pub(crate) fn take_catch_ups(&mut self) -> BTreeSet<ConnId> {
        std::mem::take(&mut self.catch_ups)
    }

    /// Moves the touched sessions still present into `out`.
    pub(crate) fn take_touched(&mut self, sessions: &mut Sessions, out: &mut Vec<ConnId>) {
        for conn in self.touched.drain(..) {
            if let Some(s) = sessions.get_mut(&conn) {
                s.listed_mut().touched = false;
                out.push(conn);
            }
        }
    }

    /// `conn`'s session is being removed: unlist it, so a caller that never
    /// drains one of the lists does not accumulate ids of closed connections.
    pub(crate) fn forget(&mut self, s: &ServerSession) {
        if s.listed().ready {
            self.ready.retain(|c| *c != s.conn());
        }
        if s.listed().touched {
            self.touched.retain(|c| *c != s.conn());
        }
        if s.listed().lagging {
            self.catch_ups.remove(&s.conn());
            self.rate_held.remove(&s.conn());
        }
    }
}
