//! Acknowledgements, the hub's half: at each commit one cumulative `Ack`
//! per (session, document) that received updates, and the `durable` ones
//! once the registry reports their commit on disk. What is due and what
//! waits for which commit is the [`AckTracker`](crate::server::acks)'s.

use super::*;
use crate::server::acks::PendingAck;

impl<A: Authorizer> Hub<A> {
    /// Drops the acknowledgements due to `conn` for its handle `doc`, which
    /// it closed: the handle may name another document next. Those waiting
    /// for a commit are looked for only when some were (`in_flight`).
    pub(super) fn forget_acks(&mut self, conn: ConnId, doc: DocId, in_flight: bool) {
        self.acks.forget(conn, doc, in_flight);
    }

    /// Commits storage once for everything applied since the last commit
    /// (waiting for the disk when `wait`), then sends one cumulative `Ack`
    /// per (session, document) that received updates.
    pub(super) fn acknowledge<R: Registry>(&mut self, registry: &mut R, wait: bool) {
        // (A waiting flush also completes commits still in flight.)
        if !self.acks.has_due() && (!wait || self.acks.in_flight() == 0) {
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
                let due = self.acks.due().to_vec();
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
            let done = self.acks.completed(None);
            self.mark_durable(done)
        } else {
            Vec::new()
        };
        let due = self.acks.take_due();
        if !advanced.is_empty() {
            // Acked below with the others.
            let mut sorted = due.clone();
            sorted.sort_unstable();
            advanced.retain(|a| sorted.binary_search(a).is_err());
        }
        let mut waiting = Vec::new();
        let mut slow = Vec::new();
        for &(conn, doc) in &due {
            // One lookup per ack: this runs after every batch of input.
            let Some(s) = self.sessions.get_mut(&conn) else {
                continue;
            };
            let Some(sub) = s.docs_mut().get_mut(&doc) else {
                continue;
            };
            if durable {
                sub.durable_seq = sub.last_seq;
            }
            if pending.is_some() && sub.last_seq > sub.durable_seq {
                waiting.push((conn, doc, sub.last_seq));
            }
            let (applied, durable) = (sub.last_seq, sub.durable_seq);
            if s.queue_mut()
                .push_ack(doc, applied, durable, &mut self.common)
                .is_err()
            {
                slow.push(conn);
            }
            self.marks.ready(s);
        }
        self.acks.reuse_due(due);
        for conn in slow {
            self.slow_consumer(conn);
        }
        for (conn, doc) in advanced {
            self.send_ack(conn, doc);
        }
        if let Some(id) = pending {
            self.acks.track(id, waiting);
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

    /// Advances `durable` of each subscription in `done` (acks whose commit
    /// is on disk); returns the (session, document) pairs whose `durable`
    /// moved, sorted.
    pub(super) fn mark_durable(&mut self, done: Vec<PendingAck>) -> Vec<(ConnId, DocId)> {
        let mut advanced = Vec::new();
        for (conn, doc, seq) in done {
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
        advanced
    }

    /// The tracked commits up to `through` failed: their sessions get a
    /// `Storage` error, and their acknowledgements are dropped.
    pub(super) fn commit_failed(&mut self, through: CommitId, e: &RegistryError) {
        let lost = self.acks.failed(through);
        let message = e.to_string();
        for (conn, doc, seq) in lost {
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
