//! Acknowledgements: one cumulative `Ack` per (session, document) after each
//! input, and the `durable` ones that wait for a registry commit.

use super::*;

/// The acknowledgements waiting for one registry commit: per (session,
/// document), the highest sequence number it covers.
pub(super) struct InFlight {
    id: CommitId,
    acks: Vec<(ConnId, DocId, u64)>,
    /// Length of `acks` after its last deduplication.
    distinct: usize,
}

/// Keeps one entry per (session, document): the highest sequence number.
pub(super) fn dedup_acks(acks: &mut Vec<(ConnId, DocId, u64)>) {
    acks.sort_unstable_by(|a, b| (a.0, a.1, b.2).cmp(&(b.0, b.1, a.2)));
    acks.dedup_by_key(|a| (a.0, a.1));
}

impl<A: Authorizer> Hub<A> {
    /// Drops the acknowledgements due to `conn` for its handle `doc`, which
    /// it closed: the handle may name another document next. Those waiting
    /// for a commit are looked for only when some were (`in_flight`).
    pub(super) fn forget_acks(&mut self, conn: ConnId, doc: DocId, in_flight: bool) {
        self.acks_due.retain(|a| *a != (conn, doc));
        if in_flight {
            for commit in &mut self.in_flight {
                commit.acks.retain(|a| (a.0, a.1) != (conn, doc));
                commit.distinct = commit.distinct.min(commit.acks.len());
            }
        }
    }

    /// Commits storage once for everything applied since the last flush
    /// (waiting for the disk when `wait`), then sends one cumulative `Ack`
    /// per (session, document).
    pub(super) fn finish_acks<R: Registry>(&mut self, registry: &mut R, wait: bool) {
        // (A waiting flush also settles commits still in flight.)
        if self.acks_due.is_empty() && (!wait || self.in_flight.is_empty()) {
            return;
        }
        let outcome = if wait {
            registry.flush().map(|durable| {
                if durable {
                    Commit::Durable
                } else {
                    Commit::NotDurable
                }
            })
        } else {
            registry.commit()
        };
        let (durable, pending) = match outcome {
            Ok(Commit::Durable) => (true, None),
            Ok(Commit::Pending(id)) => (false, Some(id)),
            Ok(_) => (false, None),
            Err(e) => {
                let due = self.acks_due.clone();
                for (conn, doc) in due {
                    self.doc_error(conn, Some(doc), None, ErrorCode::Storage, e.to_string());
                }
                self.events.push_back(ServerEvent::StorageError {
                    name: None,
                    message: e.to_string(),
                });
                (false, None)
            }
        };
        // What earlier commits handed over is on disk too.
        let mut advanced = if durable {
            self.settle(None)
        } else {
            Vec::new()
        };
        let mut due = std::mem::take(&mut self.acks_due);
        if !advanced.is_empty() {
            // Acked below with the others.
            let mut sorted = due.clone();
            sorted.sort_unstable();
            advanced.retain(|a| sorted.binary_search(a).is_err());
        }
        let mut waiting = Vec::new();
        let mut slow = Vec::new();
        for (conn, doc) in due.drain(..) {
            // One lookup per ack: this runs after every batch of input.
            let Some(s) = self.sessions.get_mut(&conn) else {
                continue;
            };
            let Some(sub) = s.docs.get_mut(&doc) else {
                continue;
            };
            if durable {
                sub.durable_seq = sub.last_seq;
            }
            if pending.is_some() && sub.last_seq > sub.durable_seq {
                waiting.push((conn, doc, sub.last_seq));
            }
            let (applied, durable) = (sub.last_seq, sub.durable_seq);
            if s.outbound
                .push_ack(doc, applied, durable, &mut self.common)
                .is_err()
            {
                slow.push(conn);
            }
            self.marks.ready(s);
        }
        for conn in slow {
            self.slow_consumer(conn);
        }
        self.acks_due = due;
        for (conn, doc) in advanced {
            self.send_ack(conn, doc);
        }
        if let Some(id) = pending
            && !waiting.is_empty()
        {
            self.track(id, waiting);
        }
    }

    /// Queues the cumulative `Ack` of (`conn`, `doc`).
    pub(super) fn send_ack(&mut self, conn: ConnId, doc: DocId) {
        let Some(sub) = self.sub_mut(conn, doc) else {
            return;
        };
        let ack = Message::Ack {
            doc,
            applied: sub.last_seq,
            durable: sub.durable_seq,
        };
        self.send(conn, &ack);
    }

    /// Remembers the acknowledgements commit `id` will make durable. Past
    /// the limit they join the newest tracked commit, whose id becomes `id`
    /// (later commits complete later: never too early).
    pub(super) fn track(&mut self, id: CommitId, acks: Vec<(ConnId, DocId, u64)>) {
        let full = self.in_flight.len() >= self.config.limits.max_commits_in_flight.max(1);
        match self.in_flight.back_mut() {
            Some(last) if last.id == id || full => {
                last.id = last.id.max(id);
                last.acks.extend(acks);
                // One entry per (session, document) is enough: compact when
                // the list doubled, so merging stays linear overall.
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

    /// Marks the acknowledgements of the tracked commits up to `through`
    /// (all when `None`) durable; returns the (session, document) pairs
    /// whose `durable` advanced.
    pub(super) fn settle(&mut self, through: Option<CommitId>) -> Vec<(ConnId, DocId)> {
        let mut advanced = Vec::new();
        while let Some(front) = self.in_flight.front() {
            if through.is_some_and(|t| front.id > t) {
                break;
            }
            let Some(done) = self.in_flight.pop_front() else {
                break;
            };
            for (conn, doc, seq) in done.acks {
                let Some(sub) = self.sub_mut(conn, doc) else {
                    continue;
                };
                // A subscription reopened since counts from its own start.
                let seq = seq.min(sub.last_seq);
                if seq > sub.durable_seq {
                    sub.durable_seq = seq;
                    advanced.push((conn, doc));
                }
            }
        }
        advanced.sort_unstable();
        advanced.dedup();
        advanced
    }

    /// The tracked commits up to `through` failed: their sessions get a
    /// `Storage` error, and their acknowledgements are dropped.
    pub(super) fn commit_failed(&mut self, through: CommitId, e: &RegistryError) {
        // Per (session, document): the highest sequence number lost.
        let mut errors: Vec<(ConnId, DocId, u64)> = Vec::new();
        while self.in_flight.front().is_some_and(|f| f.id <= through) {
            let Some(failed) = self.in_flight.pop_front() else {
                break;
            };
            errors.extend(failed.acks);
        }
        dedup_acks(&mut errors);
        let message = e.to_string();
        for (conn, doc, seq) in errors {
            if self.sub_mut(conn, doc).is_some() {
                let msg = format!("not stored durably: {message}");
                self.doc_error(conn, Some(doc), Some(seq), ErrorCode::Storage, msg);
            }
        }
        self.events.push_back(ServerEvent::StorageError {
            name: None,
            message,
        });
    }
}
