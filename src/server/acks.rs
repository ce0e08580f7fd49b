//! Acknowledgement tracking: which (connection, document) pairs owe their
//! sender a cumulative `Ack` at the next commit, and which sequence numbers
//! wait for a registry commit to become `durable`.
//!
//! The tracker holds ids and sequence numbers only; the hub reads the
//! subscriptions (`last_seq`, `durable_seq`) and queues the `Ack`s. Two
//! moments, two names:
//!
//! - **due** ([`AckTracker::note_applied`], [`AckTracker::take_due`]): an
//!   input applied updates of (conn, doc); its `Ack` goes out at the next
//!   commit.
//! - **durable** ([`AckTracker::track`], [`AckTracker::completed`],
//!   [`AckTracker::failed`]): a commit handed to the registry carries acks
//!   that become `durable` when the registry reports it on disk, or are
//!   dropped (with an error to their senders) when it fails.
//!
//! Bounds: `due` holds each pair at most once (a few per input, cleared at
//! every commit); at most `max_in_flight` commits are tracked, and each
//! tracked commit holds at most about twice one entry per pair (it is
//! deduplicated whenever it doubles).

use std::collections::VecDeque;

use crate::registry::CommitId;
use crate::wire::DocId;

use super::ConnId;

/// One (connection, document) pair and the highest client sequence number
/// a commit covers for it.
pub(crate) type PendingAck = (ConnId, DocId, u64);

/// The acknowledgements waiting for one registry commit.
#[derive(Debug)]
struct InFlight {
    id: CommitId,
    acks: Vec<PendingAck>,
    /// Length of `acks` after its last deduplication.
    distinct: usize,
}

/// Keeps one entry per (connection, document): the highest sequence number.
pub(crate) fn dedup_acks(acks: &mut Vec<PendingAck>) {
    acks.sort_unstable_by(|a, b| (a.0, a.1, b.2).cmp(&(b.0, b.1, a.2)));
    acks.dedup_by_key(|a| (a.0, a.1));
}

/// Acknowledgements due at the next commit and those waiting for the disk.
#[derive(Debug)]
pub(crate) struct AckTracker {
    /// Pairs whose cumulative `Ack` is due at the next commit, each once,
    /// in the order their first update was applied (a few per input: a
    /// `Vec`).
    due: Vec<(ConnId, DocId)>,
    /// Commits handed to the registry, oldest first.
    in_flight: VecDeque<InFlight>,
    /// Commits tracked at most (`Limits::max_commits_in_flight`, at least
    /// one).
    max_in_flight: usize,
}

impl AckTracker {
    /// A tracker following at most `max_in_flight` commits (at least one).
    pub(crate) fn new(max_in_flight: usize) -> Self {
        AckTracker {
            due: Vec::new(),
            in_flight: VecDeque::new(),
            max_in_flight: max_in_flight.max(1),
        }
    }

    /// Updates of `conn` on its handle `doc` were applied: its `Ack` is due
    /// at the next commit.
    pub(crate) fn note_applied(&mut self, conn: ConnId, doc: DocId) {
        if !self.due.contains(&(conn, doc)) {
            self.due.push((conn, doc));
        }
    }

    /// Whether some `Ack` is due at the next commit.
    pub(crate) fn has_due(&self) -> bool {
        !self.due.is_empty()
    }

    /// The pairs whose `Ack` is due, in order; none are due afterwards.
    pub(crate) fn take_due(&mut self) -> Vec<(ConnId, DocId)> {
        std::mem::take(&mut self.due)
    }

    /// Hands back the buffer [`AckTracker::take_due`] returned, emptied, so
    /// its room is reused.
    pub(crate) fn reuse_due(&mut self, mut buf: Vec<(ConnId, DocId)>) {
        if self.due.is_empty() {
            buf.clear();
            self.due = buf;
        }
    }

    /// The pairs whose `Ack` is due (for errors reported to them).
    pub(crate) fn due(&self) -> &[(ConnId, DocId)] {
        &self.due
    }

    /// Commits whose acks wait for the registry.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// `conn` closed its handle `doc`, which may name another document
    /// next: nothing due or in flight for it is kept. Commits in flight are
    /// searched only when `in_flight` says some of its acks are.
    pub(crate) fn forget(&mut self, conn: ConnId, doc: DocId, in_flight: bool) {
        self.due.retain(|a| *a != (conn, doc));
        if in_flight {
            for commit in &mut self.in_flight {
                commit.acks.retain(|a| (a.0, a.1) != (conn, doc));
                commit.distinct = commit.distinct.min(commit.acks.len());
            }
        }
    }

    /// Remembers the acks commit `id` will make durable. Past the limit
    /// they join the newest tracked commit, whose id becomes the larger of
    /// the two: commits complete in order, so a later one covers the
    /// earlier (an ack is never made durable too early).
    pub(crate) fn track(&mut self, id: CommitId, acks: Vec<PendingAck>) {
        if acks.is_empty() {
            return;
        }
        let full = self.in_flight.len() >= self.max_in_flight;
        match self.in_flight.back_mut() {
            Some(last) if last.id == id || full => {
                last.id = last.id.max(id);
                last.acks.extend(acks);
                // One entry per pair is enough: compact when the list
                // doubled, so merging stays linear overall.
                if last.acks.len() > 2 * last.distinct.max(64) {
                    dedup_acks(&mut last.acks);
                    last.distinct = last.acks.len();
                }
            }
            _ => {
                let distinct = acks.len();
                self.in_flight.push_back(InFlight { id, acks, distinct });
            }
        }
    }

    /// The registry reports the commits up to `through` on disk (all
    /// tracked ones when `None`, after a commit that waited for the disk):
    /// returns their acks, one per pair with its highest sequence number,
    /// sorted. The caller advances each subscription's `durable` (never
    /// past what it received: a handle reopened since counts anew).
    pub(crate) fn completed(&mut self, through: Option<CommitId>) -> Vec<PendingAck> {
        let mut done = Vec::new();
        while self
            .in_flight
            .front()
            .is_some_and(|f| through.is_none_or(|t| f.id <= t))
        {
            if let Some(commit) = self.in_flight.pop_front() {
                done.extend(commit.acks);
            }
        }
        dedup_acks(&mut done);
        done
    }

    /// The commits up to `through` failed: returns their acks (one per
    /// pair, the highest sequence number lost, sorted), which no longer
    /// wait for anything.
    pub(crate) fn failed(&mut self, through: CommitId) -> Vec<PendingAck> {
        self.completed(Some(through))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ConnId = ConnId(1);
    const B: ConnId = ConnId(2);
    const D0: DocId = DocId(0);
    const D1: DocId = DocId(1);

    #[test]
    fn due_pairs_are_listed_once_in_order() {
        let mut t = AckTracker::new(4);
        assert!(!t.has_due());
        t.note_applied(B, D0);
        t.note_applied(A, D1);
        t.note_applied(B, D0);
        assert_eq!(t.due(), &[(B, D0), (A, D1)]);
        let due = t.take_due();
        assert_eq!(due, vec![(B, D0), (A, D1)]);
        assert!(!t.has_due());
        t.reuse_due(due);
        assert!(!t.has_due(), "the buffer comes back empty");
    }

    #[test]
    fn commits_complete_in_order_and_only_up_to_the_one_reported() {
        let mut t = AckTracker::new(8);
        t.track(CommitId(1), vec![(A, D0, 3)]);
        t.track(CommitId(2), vec![(A, D0, 5), (B, D1, 1)]);
        t.track(CommitId(3), vec![(B, D1, 4)]);
        assert_eq!(t.in_flight(), 3);
        assert_eq!(t.completed(Some(CommitId(2))), vec![(A, D0, 5), (B, D1, 1)]);
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.completed(Some(CommitId(2))), vec![], "nothing twice");
        assert_eq!(t.completed(None), vec![(B, D1, 4)]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn past_the_limit_acks_join_the_newest_commit_never_completing_early() {
        let mut t = AckTracker::new(2);
        t.track(CommitId(1), vec![(A, D0, 1)]);
        t.track(CommitId(2), vec![(A, D0, 2)]);
        t.track(CommitId(3), vec![(B, D0, 7)]);
        assert_eq!(t.in_flight(), 2, "bounded");
        // Commit 2 on disk says nothing about commit 3's writes.
        assert_eq!(t.completed(Some(CommitId(1))), vec![(A, D0, 1)]);
        assert_eq!(t.completed(Some(CommitId(2))), vec![]);
        assert_eq!(t.completed(Some(CommitId(3))), vec![(A, D0, 2), (B, D0, 7)]);
    }

    #[test]
    fn a_merged_commit_stays_about_one_entry_per_pair() {
        let mut t = AckTracker::new(1);
        t.track(CommitId(1), vec![(A, D0, 0)]);
        for seq in 1..10_000 {
            t.track(CommitId(seq), vec![(A, D0, seq), (B, D1, seq)]);
            let held = t.in_flight.front().map_or(0, |c| c.acks.len());
            assert!(held <= 2 * 64 + 2, "{held} entries for two pairs");
        }
        assert_eq!(t.completed(None), vec![(A, D0, 9_999), (B, D1, 9_999)]);
    }

    #[test]
    fn a_forgotten_handle_is_neither_due_nor_in_flight() {
        let mut t = AckTracker::new(4);
        t.note_applied(A, D0);
        t.note_applied(A, D1);
        t.track(CommitId(1), vec![(A, D0, 3), (A, D1, 3)]);
        t.forget(A, D0, true);
        assert_eq!(t.due(), &[(A, D1)]);
        assert_eq!(t.completed(None), vec![(A, D1, 3)]);
    }

    #[test]
    fn failed_commits_return_the_highest_lost_sequence_per_pair() {
        let mut t = AckTracker::new(4);
        t.track(CommitId(1), vec![(A, D0, 3)]);
        t.track(CommitId(2), vec![(A, D0, 9)]);
        t.track(CommitId(4), vec![(B, D0, 1)]);
        assert_eq!(t.failed(CommitId(3)), vec![(A, D0, 9)]);
        assert_eq!(t.in_flight(), 1);
    }

    #[test]
    fn tracking_nothing_costs_no_commit_entry() {
        let mut t = AckTracker::new(4);
        t.track(CommitId(1), Vec::new());
        assert_eq!(t.in_flight(), 0);
    }
}
