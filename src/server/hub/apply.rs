//! Updates from clients: apply (batched, with a single-update fast path),
//! fan-out encoded once, the bookkeeping after an apply, a CRDT that panics,
//! and history pruning.

use super::*;

/// What [`Hub::settle_batch`] needs to know about a batch just applied.
pub(super) struct Settled {
    /// The document's version before the batch, when a subscriber switches
    /// to a catch-up from it.
    pre_version: Option<Vec<u8>>,
    /// The version after the batch, when updates are held for missing
    /// dependencies (sent in a `SyncRequest`).
    server_version: Option<Vec<u8>>,
    /// The batch grew the held bytes past the limit.
    over_pending: bool,
    /// The highest sequence number in the batch.
    last_seq: u64,
}

impl<A: Authorizer> Hub<A> {
    /// Applies a batch of updates from `conn` to `doc`, fans the accepted
    /// ones out and schedules the acknowledgement.
    pub(super) fn apply_updates<R: Registry>(
        &mut self,
        conn: ConnId,
        doc: DocId,
        updates: &mut Vec<(u64, Bytes)>,
        registry: &mut R,
    ) {
        // The general path (`apply_one` is the message-framing shortcut's;
        // tests/properties.rs compares the two).
        if let [(seq, data)] = updates.as_slice() {
            self.apply_batch(conn, doc, &[(*seq, data.as_ref())], registry);
        } else {
            let borrowed: Vec<(u64, &[u8])> =
                updates.iter().map(|(s, d)| (*s, d.as_ref())).collect();
            self.apply_batch(conn, doc, &borrowed, registry);
        }
        updates.clear();
    }

    pub(super) fn apply_batch<R: Registry>(
        &mut self,
        conn: ConnId,
        doc: DocId,
        updates: &[(u64, &[u8])],
        registry: &mut R,
    ) {
        let first_seq = updates.first().map(|u| u.0);
        // One lookup of the subscription for the checks and the sequence
        // number (this runs for every update a server receives).
        let Some(sub) = self
            .sessions
            .get_mut(&conn)
            .and_then(|s| s.docs.get_mut(&doc))
        else {
            return self.unknown_doc(conn, doc);
        };
        if sub.access != Access::ReadWrite {
            let n = updates.len();
            return self.doc_error(
                conn,
                Some(doc),
                first_seq,
                ErrorCode::ReadOnly,
                format!("{n} update(s) refused: read-only access"),
            );
        }
        let Some(entry) = self.directory.get(sub.index) else {
            return self.unknown_doc(conn, doc);
        };
        let name = Arc::clone(&entry.name);
        let Some(d) = registry.get(&name) else {
            let msg = "document not loaded".to_string();
            return self.doc_error(conn, Some(doc), first_seq, ErrorCode::Internal, msg);
        };
        let last_seq = updates.iter().map(|u| u.0).max().unwrap_or(0);
        sub.last_seq = sub.last_seq.max(last_seq);
        // A subscriber about to pass its high-water mark switches to a
        // catch-up from the version before this batch.
        let incoming: usize = updates.iter().map(|(_, b)| b.len() + 16).sum();
        let high = high_water(&self.config.limits);
        let catch_up = entry
            .subscribers
            .iter()
            .filter(|(_, c)| *c != conn)
            .filter_map(|(h, c)| Some((h, self.sessions.get(&c)?)))
            .any(|(h, s)| {
                s.outbound.bytes() + incoming > high
                    && s.docs.get(&h).is_some_and(|sub| !sub.is_lagging())
            });
        let mut outcomes = std::mem::take(&mut self.outcomes);
        outcomes.clear();
        // A CRDT that panics fails its document, not the hub.
        let applied = catch_unwind(AssertUnwindSafe(|| {
            let pre_version = catch_up.then(|| d.version());
            let held_before = d.pending_bytes();
            if let [(_, one)] = updates {
                outcomes.push(d.apply(one));
            } else {
                let slices: Vec<&[u8]> = updates.iter().map(|(_, b)| *b).collect();
                d.apply_batch(&slices, &mut outcomes);
            }
            let server_version = outcomes
                .iter()
                .any(|o| matches!(o, ApplyOutcome::Pending { .. }))
                .then(|| d.version());
            (pre_version, server_version, held_before, d.pending_bytes())
        }));
        let Ok((pre_version, server_version, held_before, held)) = applied else {
            outcomes.clear();
            self.outcomes = outcomes;
            return self.sender_doc_panicked(conn, doc);
        };
        // Updates waiting for missing dependencies are bounded: a session
        // whose updates grow the held bytes past the limit is closed (its
        // client re-syncs on reconnect); others go on.
        let over_pending = held > held_before && held > self.config.limits.max_pending_bytes;
        self.settle_batch(
            conn,
            doc,
            name,
            updates,
            &mut outcomes,
            Settled {
                pre_version,
                server_version,
                over_pending,
                last_seq,
            },
            registry,
        );
        self.outcomes = outcomes;
    }

    /// The usual update of a live connection, with as little code as
    /// possible: one update, to a document the session may write, no
    /// subscriber near its high-water mark, nothing held for missing
    /// dependencies, applied cleanly. Anything else goes the general way
    /// ([`Hub::apply_batch`], or [`Hub::settle_batch`] once applied).
    ///
    /// Why a second path: next to a real CRDT, whose own code evicts ours
    /// from the instruction cache between updates, every instruction here
    /// is fetched cold, so the cost is in the code executed, not only in the
    /// work done (`benches/apply_path.rs`).
    pub(super) fn apply_one<R: Registry>(
        &mut self,
        conn: ConnId,
        doc: DocId,
        seq: u64,
        data: &[u8],
        registry: &mut R,
    ) {
        let sub = self.sessions.get(&conn).and_then(|s| s.docs.get(&doc));
        // The sender first: a session that may not write this document
        // costs no look at the others (the general path reports why).
        let Some(entry) = sub
            .filter(|sub| sub.access == Access::ReadWrite)
            .and_then(|sub| self.directory.get(sub.index))
        else {
            return self.apply_batch(conn, doc, &[(seq, data)], registry);
        };
        // The same test as `apply_batch`'s catch-up check, for everyone.
        let high = high_water(&self.config.limits);
        let incoming = data.len() + 16;
        let near_high = entry.subscribers.iter().any(|(_, c)| {
            c != conn
                && self
                    .sessions
                    .get(&c)
                    .is_some_and(|s| s.outbound.bytes() + incoming > high)
        });
        let d = match registry.get(&entry.name) {
            Some(d) if !near_high && d.pending_bytes() == 0 => d,
            _ => return self.apply_batch(conn, doc, &[(seq, data)], registry),
        };
        // A CRDT that panics fails its document, not the hub.
        let Ok(outcome) = catch_unwind(AssertUnwindSafe(|| d.apply(data))) else {
            return self.sender_doc_panicked(conn, doc);
        };
        let name = Arc::clone(&entry.name);
        if !matches!(outcome, ApplyOutcome::Applied) || d.pending_bytes() != 0 {
            // Held, duplicate or invalid: the general bookkeeping.
            let server_version =
                matches!(outcome, ApplyOutcome::Pending { .. }).then(|| d.version());
            let over_pending = d.pending_bytes() > self.config.limits.max_pending_bytes;
            if let Some(sub) = self.sub_mut(conn, doc) {
                sub.last_seq = sub.last_seq.max(seq);
            }
            let mut outcomes = std::mem::take(&mut self.outcomes);
            outcomes.clear();
            outcomes.push(outcome);
            self.settle_batch(
                conn,
                doc,
                name,
                &[(seq, data)],
                &mut outcomes,
                Settled {
                    pre_version: None,
                    server_version,
                    over_pending,
                    last_seq: seq,
                },
                registry,
            );
            self.outcomes = outcomes;
            return;
        }
        let stored = registry.update_applied(&name, data);
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.stats.updates_applied += 1;
            if let Some(sub) = s.docs.get_mut(&doc) {
                sub.last_seq = sub.last_seq.max(seq);
                sub.set_out_of_sync_sent(None);
            }
        }
        self.fan_out(conn, doc, data, None);
        if let Err(e) = stored {
            self.storage_error(conn, doc, seq, &e);
        }
        self.applied(
            conn,
            doc,
            ServerEvent::UpdatesApplied {
                conn,
                name,
                last_seq: seq,
                applied: 1,
                duplicates: 0,
                pending: 0,
            },
        );
    }

    /// The CRDT of `doc` panicked: the document may be in any state, so it
    /// is never touched again while the hub runs. Its subscribers get an
    /// [`ErrorCode::Internal`] error and are unsubscribed (`CloseDoc`),
    /// opens of it are refused; every other document and session goes on.
    pub(super) fn doc_panicked(&mut self, index: DocIndex) {
        let Some(entry) = self.directory.get(index) else {
            return;
        };
        let name = Arc::clone(&entry.name);
        self.failed.insert(Arc::clone(&name));
        let subscribers: Vec<(DocId, ConnId)> = entry.subscribers.iter().collect();
        let message = format!("document {name:?} failed: its CRDT panicked");
        for (doc, conn) in subscribers {
            // Reported while the handle still names the document; the
            // handle is retired (the client may still be sending under it).
            self.doc_error(conn, Some(doc), None, ErrorCode::Internal, message.clone());
            self.revoke(conn, doc);
            self.send(conn, &Message::CloseDoc { doc });
        }
        self.events.push_back(ServerEvent::DocumentFailed { name });
    }

    /// [`Hub::doc_panicked`] for the document `conn` has open as `doc`.
    pub(super) fn sender_doc_panicked(&mut self, conn: ConnId, doc: DocId) {
        if let Some(index) = self.index_of(conn, doc) {
            self.doc_panicked(index);
        }
    }

    /// The store refused update `seq` (applied and forwarded all the same):
    /// a document error to its sender.
    pub(super) fn storage_error(&mut self, conn: ConnId, doc: DocId, seq: u64, e: &impl ToString) {
        let message = e.to_string();
        self.doc_error(conn, Some(doc), Some(seq), ErrorCode::Storage, message);
    }

    /// Updates of `conn` on `doc` were handled: an ack is due at the next
    /// flush, and the application hears `event`.
    pub(super) fn applied(&mut self, conn: ConnId, doc: DocId, event: ServerEvent) {
        if !self.acks_due.contains(&(conn, doc)) {
            self.acks_due.push((conn, doc));
        }
        self.events.push_back(event);
    }

    /// What follows applying `updates` (with `outcomes`, one each, drained
    /// here): storage, fan-out, errors for the rejected ones, `SyncRequest`
    /// for a gap, the ack and the event.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn settle_batch<R: Registry>(
        &mut self,
        conn: ConnId,
        doc: DocId,
        name: Arc<str>,
        updates: &[(u64, &[u8])],
        outcomes: &mut Vec<ApplyOutcome>,
        settled: Settled,
        registry: &mut R,
    ) {
        let Settled {
            pre_version,
            server_version,
            over_pending,
            last_seq,
        } = settled;
        let (mut applied, mut duplicates, mut pending) = (0u32, 0u32, 0u32);
        // The first refused update and how many were refused: one error
        // per batch, however many it carried.
        let mut rejected = None;
        let mut invalid = 0u32;
        let mut storage_error = None;
        for (&(seq, data), outcome) in updates.iter().zip(outcomes.drain(..)) {
            match outcome {
                ApplyOutcome::Applied | ApplyOutcome::Pending { .. } => {
                    if matches!(outcome, ApplyOutcome::Applied) {
                        applied += 1;
                    } else {
                        pending += 1;
                    }
                    if let Err(e) = registry.update_applied(&name, data) {
                        storage_error = Some((seq, e));
                    }
                    self.fan_out(conn, doc, data, pre_version.as_deref());
                }
                ApplyOutcome::Duplicate => duplicates += 1,
                ApplyOutcome::Invalid(e) => {
                    invalid += 1;
                    rejected.get_or_insert((seq, e));
                }
            }
        }
        let mut too_many_invalid = false;
        if let Some((seq, e)) = rejected {
            let message = if invalid == 1 {
                e.to_string()
            } else {
                format!("{invalid} updates refused, the first: {e}")
            };
            self.doc_error(
                conn,
                Some(doc),
                Some(seq),
                ErrorCode::InvalidUpdate,
                message,
            );
            too_many_invalid = self.count_invalid(conn, invalid);
        }
        if let Some((seq, e)) = storage_error {
            self.storage_error(conn, doc, seq, &e);
        }
        // Missing dependencies: ask the client for what we lack, again only
        // if the gap persists past `resync_after`.
        let resync_after = self.config.resync_after;
        let now = self.now;
        let mut out_of_sync = None;
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.stats.updates_applied += u64::from(applied);
            s.stats.duplicates += u64::from(duplicates);
            if let Some(sub) = s.docs.get_mut(&doc) {
                if let Some(version) = server_version {
                    let resend = sub.out_of_sync_sent().is_none_or(|at| {
                        at.checked_add(resync_after)
                            .zip(now)
                            .is_some_and(|(t, now)| now >= t)
                    });
                    if resend {
                        sub.set_out_of_sync_sent(now);
                        out_of_sync = Some(version);
                    }
                } else if applied > 0 {
                    sub.set_out_of_sync_sent(None);
                }
            }
        }
        if let Some(version) = out_of_sync {
            self.send(
                conn,
                &Message::SyncRequest {
                    doc,
                    version: Bytes(version),
                },
            );
        }
        self.applied(
            conn,
            doc,
            ServerEvent::UpdatesApplied {
                conn,
                name,
                last_seq,
                applied,
                duplicates,
                pending,
            },
        );
        if over_pending {
            self.fail(
                conn,
                CloseReason::LimitExceeded,
                CloseCause::Local(CloseReason::LimitExceeded),
            );
        }
        if too_many_invalid {
            let limit = self.config.limits.max_invalid_updates;
            self.fail(
                conn,
                CloseReason::ProtocolError,
                CloseCause::Protocol(format!("more than {limit} invalid updates")),
            );
        }
    }

    /// Adds `n` to the invalid updates `conn` sent; whether that is more
    /// than `Limits::max_invalid_updates`.
    pub(super) fn count_invalid(&mut self, conn: ConnId, n: u32) -> bool {
        let (Some(now), Some(s)) = (self.now, self.sessions.get_mut(&conn)) else {
            return false;
        };
        let rates = s.rates(&self.config.limits, now);
        rates.invalid_updates = rates.invalid_updates.saturating_add(n);
        rates.invalid_updates > self.config.limits.max_invalid_updates
    }

    /// Sends `data` from `from` (its handle `doc`) to every other
    /// subscriber, encoded once per distinct handle among them (usually
    /// once). Subscribers over their high-water mark stop receiving
    /// individual updates and are marked for a catch-up from `pre_version`.
    pub(super) fn fan_out(
        &mut self,
        from: ConnId,
        doc: DocId,
        data: &[u8],
        pre_version: Option<&[u8]>,
    ) {
        let Some(entry) = self.index_of(from, doc).and_then(|i| self.directory.get(i)) else {
            return;
        };
        let high = high_water(&self.config.limits);
        let mut slow = Vec::new();
        for (handle, run) in entry.subscribers.runs() {
            // Runs are sorted by connection: the sender is found by search.
            let sender = handle == doc && run.binary_search(&(doc, from)).is_ok();
            let recipients = run.len() - usize::from(sender);
            if recipients == 0 {
                continue;
            }
            // Encoded once for many recipients; a single recipient gets it
            // encoded straight into its queue.
            let shared = (recipients > 1).then(|| encode_broadcast_shared(handle, data));
            let len = shared.as_ref().map_or_else(
                || crate::wire::hot::broadcast_len(handle, data),
                |e| e.len(),
            );
            for &(_, conn) in run.iter().filter(|(_, c)| !sender || *c != from) {
                let Some(s) = self.sessions.get_mut(&conn) else {
                    continue;
                };
                let queued = s.outbound.bytes();
                let Some(sub) = s.docs.get_mut(&handle) else {
                    continue;
                };
                if sub.is_lagging() {
                    continue;
                }
                if queued + len > high
                    && let Some(v) = pre_version
                {
                    sub.set_lagging(v.to_vec());
                    s.lagging = true;
                    // A queue already drained (the update alone passes the
                    // high-water mark) gets its catch-up without a drain.
                    self.marks.drained(s, low_water(&self.config.limits));
                    self.events.push_back(ServerEvent::SubscriberLagging {
                        conn,
                        name: Arc::clone(&entry.name),
                        queued,
                    });
                    continue;
                }
                let sent = match &shared {
                    Some(encoded) => s.send_shared(encoded, &self.common),
                    None => s.outbound.push_broadcast(handle, data, &mut self.common),
                };
                if sent.is_err() {
                    slow.push(conn);
                } else {
                    self.marks.ready(s);
                }
            }
        }
        for conn in slow {
            self.fail(
                conn,
                CloseReason::SlowConsumer,
                CloseCause::Local(CloseReason::SlowConsumer),
            );
        }
    }

    /// Prunes every document down to the version all its subscribers
    /// confirmed (documents whose CRDT supports it), handing the registry a
    /// snapshot. Documents with a subscriber that has not confirmed any
    /// version are left alone.
    pub(super) fn prune<R: Registry>(&mut self, registry: &mut R) {
        let mut panicked = Vec::new();
        for (index, entry) in self.directory.entries() {
            if entry.subscribers.is_empty() {
                continue;
            }
            let versions: Option<Vec<&[u8]>> = entry
                .subscribers
                .iter()
                .map(|(doc, c)| {
                    self.sessions
                        .get(&c)?
                        .docs
                        .get(&doc)?
                        .client_version
                        .as_deref()
                })
                .collect();
            let Some(versions) = versions else {
                continue;
            };
            let Some(d) = registry.get(&entry.name) else {
                continue;
            };
            // A CRDT that panics fails its document, not the hub.
            let pruned = catch_unwind(AssertUnwindSafe(|| {
                let common = d.common_version(&versions)?;
                (d.prune_to(&common) == Ok(true)).then(|| d.snapshot())
            }));
            let snapshot = match pruned {
                Ok(Some(snapshot)) => snapshot,
                Ok(None) => continue,
                Err(_) => {
                    panicked.push(index);
                    continue;
                }
            };
            let snapshot_bytes = snapshot.len();
            if let Err(e) = registry.snapshot_taken(&entry.name, &snapshot) {
                self.events.push_back(ServerEvent::StorageError {
                    name: Some(Arc::clone(&entry.name)),
                    message: e.to_string(),
                });
                continue;
            }
            self.events.push_back(ServerEvent::HistoryPruned {
                name: Arc::clone(&entry.name),
                snapshot_bytes,
            });
        }
        for index in panicked {
            self.doc_panicked(index);
        }
    }
}
