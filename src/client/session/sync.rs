//! Per-document sync: opening documents, the chunked initial sync both
//! ways, live broadcasts (held while syncing), catch-up requests and
//! version reports.

use super::*;

impl ClientSession {
    /// Starts syncing document `name` from `registry` (opened there if
    /// needed). Works offline: the document opens on the next connection.
    pub fn open<R: Registry>(
        &mut self,
        registry: &mut R,
        name: &str,
        now: Instant,
    ) -> Result<(), CommandError> {
        self.tick(now);
        if self.phase == Phase::Closed {
            return Err(CommandError::Closed);
        }
        if name.is_empty() || name.len() > self.config.limits.max_name_len {
            return Err(CommandError::LimitExceeded(format!(
                "document name must be 1..={} bytes",
                self.config.limits.max_name_len
            )));
        }
        if self.docs.contains_key(name) {
            return Ok(());
        }
        if self.docs.len() >= self.config.limits.max_docs_per_connection {
            return Err(CommandError::LimitExceeded(format!(
                "at most {} documents",
                self.config.limits.max_docs_per_connection
            )));
        }
        let version = registry.open(name)?.version();
        let name: Arc<str> = name.into();
        let mut doc = ClientDoc::new(Arc::clone(&name));
        if self.phase == Phase::Connected {
            doc.status = DocStatus::Opening;
            self.send(&Message::Open {
                name: name.to_string(),
                version: Bytes(version),
                resume: None,
            });
        }
        self.docs.insert(name, doc);
        Ok(())
    }

    /// Stops syncing `name` (the connection stays open).
    pub fn close_doc(&mut self, name: &str) -> Result<(), CommandError> {
        let doc = self
            .docs
            .remove(name)
            .ok_or_else(|| CommandError::UnknownDocument(name.to_string()))?;
        self.held_bytes -= doc.held_bytes;
        self.transfer_bytes -= doc.transfer.as_ref().map_or(0, |t| t.data.len());
        if let Some(handle) = doc.handle {
            self.handles.remove(&handle);
            if self.phase == Phase::Connected {
                self.send(&Message::CloseDoc { doc: handle });
            }
        }
        Ok(())
    }

    /// Asks the server for everything `name` lacks (e.g. after suspecting
    /// divergence).
    pub fn request_sync<R: Registry>(
        &mut self,
        registry: &mut R,
        name: &str,
    ) -> Result<(), CommandError> {
        let doc = self
            .docs
            .get(name)
            .ok_or_else(|| CommandError::UnknownDocument(name.to_string()))?;
        let (Some(handle), Phase::Connected) = (doc.handle, self.phase) else {
            return Ok(()); // A sync happens anyway on (re)connect.
        };
        let version = registry
            .get(name)
            .ok_or_else(|| CommandError::UnknownDocument(name.to_string()))?
            .version();
        self.send(&Message::SyncRequest {
            doc: handle,
            version: Bytes(version),
        });
        Ok(())
    }

    pub(super) fn on_opened(&mut self, name: &str, handle: DocId, access: Access) {
        let Some(doc) = self.docs.get_mut(name) else {
            // Opened for a document closed meanwhile: tell the server.
            self.send(&Message::CloseDoc { doc: handle });
            return;
        };
        doc.handle = Some(handle);
        doc.access = access;
        if doc.status == DocStatus::Opening {
            doc.status = DocStatus::Syncing;
        }
        let rejected = if access == Access::ReadWrite {
            None
        } else {
            doc.reject_outbox(ErrorCode::ReadOnly)
        };
        let name = Arc::clone(&doc.name);
        self.handles.insert(handle, Arc::clone(&name));
        self.events
            .push_back(ClientEvent::DocumentOpened { name, access });
        self.events.extend(rejected);
        self.flush_presence();
    }

    pub(super) fn doc_by_handle(&mut self, handle: DocId) -> Option<&mut ClientDoc> {
        let name = self.handles.get(&handle)?;
        self.docs.get_mut(name)
    }

    pub(super) fn on_chunk(
        &mut self,
        handle: DocId,
        id: u64,
        kind: SyncKind,
        offset: u64,
        total: u64,
        data: Vec<u8>,
    ) {
        let max = self.config.limits.max_transfer_len;
        let Some(doc) = self.doc_by_handle(handle) else {
            return self.fail(
                CloseReason::ProtocolError,
                CloseCause::Protocol("sync chunk for an unknown document".into()),
            );
        };
        let name = Arc::clone(&doc.name);
        if total > max {
            let freed = doc.drop_transfer();
            self.transfer_bytes -= freed;
            return self.fail(
                CloseReason::LimitExceeded,
                CloseCause::Protocol(format!(
                    "transfer for {name:?} of {total} bytes exceeds {max}"
                )),
            );
        }
        if offset != 0 && doc.transfer_dropped == Some(id) {
            // The rest of a transfer dropped for the budget: the document
            // catches up after its `SyncDone` instead.
            return;
        }
        let mut freed = 0;
        if offset == 0 {
            freed = doc.drop_transfer();
            doc.transfer_dropped = None;
            doc.transfer = Some(TransferBuf {
                id,
                kind,
                total,
                data: Vec::new(),
                resumed: false,
            });
        }
        let fits = match &doc.transfer {
            Some(t) => {
                t.id == id
                    && t.total == total
                    && t.data.len() as u64 == offset
                    && offset.saturating_add(data.len() as u64) <= total
            }
            None => false,
        };
        if !fits {
            // A transfer that went wrong cannot be resumed (after a server
            // restart, a resumed id may name another payload): the next
            // connection syncs afresh instead of failing the same way again.
            freed += doc.drop_transfer();
            self.transfer_bytes -= freed;
            return self.fail(
                CloseReason::ProtocolError,
                CloseCause::Protocol("sync chunk out of order".into()),
            );
        }
        self.transfer_bytes -= freed;
        // This transfer's bytes after the chunk are at most `total`, so
        // dropping the others always makes room.
        let budget = usize::try_from(max).unwrap_or(usize::MAX);
        let needed = self.transfer_bytes.saturating_add(data.len());
        if needed > budget {
            self.drop_other_transfers(&name, needed - budget);
        }
        if let Some(t) = self
            .docs
            .get_mut(&name)
            .and_then(|doc| doc.transfer.as_mut())
        {
            t.data.extend_from_slice(&data);
            self.transfer_bytes += data.len();
        }
    }

    /// Drops the partial transfers of documents other than `keep`, largest
    /// first, until at least `excess` bytes are freed. An honest server
    /// sends one transfer at a time, so what is dropped is a transfer kept
    /// from an earlier connection for resumption (or a hostile server's).
    pub(super) fn drop_other_transfers(&mut self, keep: &str, excess: usize) {
        let mut partial: Vec<(usize, Arc<str>)> = self
            .docs
            .iter()
            .filter(|(name, _)| &***name != keep)
            .filter_map(|(name, doc)| Some((doc.transfer.as_ref()?.data.len(), Arc::clone(name))))
            .collect();
        // Largest first; ties in name order (deterministic).
        partial.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let mut freed = 0;
        for (_, name) in partial {
            if freed >= excess {
                break;
            }
            let Some(doc) = self.docs.get_mut(&name) else {
                continue;
            };
            // The server may still send the rest (this connection's Open
            // asked to resume it): those chunks are discarded.
            doc.transfer_dropped = doc.transfer.as_ref().map(|t| t.id);
            let bytes = doc.drop_transfer();
            self.transfer_bytes -= bytes;
            freed += bytes;
        }
    }

    pub(super) fn on_sync_done<R: Registry>(
        &mut self,
        handle: DocId,
        server_version: &[u8],
        registry: &mut R,
    ) {
        let Some(doc) = self.doc_by_handle(handle) else {
            return self.fail(
                CloseReason::ProtocolError,
                CloseCause::Protocol("sync done for an unknown document".into()),
            );
        };
        let name = Arc::clone(&doc.name);
        let transfer = doc.transfer.take();
        let dropped = doc.transfer_dropped.take().is_some();
        let held = std::mem::take(&mut doc.held);
        let overflow = std::mem::replace(&mut doc.held_overflow, false);
        self.held_bytes -= std::mem::take(&mut doc.held_bytes);
        self.transfer_bytes -= transfer.as_ref().map_or(0, |t| t.data.len());
        let Some(d) = registry.get(&name) else {
            return;
        };
        // A gap the sync closed may be re-requested at once; one it did not
        // close (the server lacks the dependency too) only after
        // `resync_after`, so two clients cannot keep each other re-syncing.
        if d.pending_bytes() == 0
            && let Some(doc) = self.docs.get_mut(&name)
        {
            doc.status_requested = None;
        }
        let Some(d) = registry.get(&name) else {
            return;
        };
        let mut refetch = overflow || dropped;
        // What to hand to a durable registry once `d` is released.
        let mut store_transfer = None;
        let mut store_held = Vec::new();
        if let Some(t) = transfer {
            if t.data.len() as u64 != t.total {
                return self.fail(
                    CloseReason::ProtocolError,
                    CloseCause::Protocol("sync done before the transfer completed".into()),
                );
            }
            let result = match t.kind {
                SyncKind::Snapshot => d.load_snapshot(&t.data).err(),
                _ => match d.apply(&t.data) {
                    ApplyOutcome::Invalid(e) => Some(e),
                    _ => None,
                },
            };
            if result.is_none() {
                store_transfer = Some(t.kind);
                store_held.push(t.data);
            } else if let Some(e) = result {
                // A resumed transfer whose parts do not fit together: ask
                // once for a fresh sync (not resumed, so it cannot recur).
                refetch |= t.resumed;
                self.events.push_back(ClientEvent::DocumentError {
                    name: Some(Arc::clone(&name)),
                    seq: None,
                    code: ErrorCode::InvalidUpdate,
                    message: format!("initial sync payload refused: {e}"),
                });
            }
        }
        if !held.is_empty() {
            let slices: Vec<&[u8]> = held.iter().map(|h| h.as_slice()).collect();
            let mut outcomes = Vec::with_capacity(slices.len());
            d.apply_batch(&slices, &mut outcomes);
            self.stats.remote_updates += outcomes.len() as u64;
            for (h, outcome) in held.into_iter().zip(outcomes) {
                if matches!(
                    outcome,
                    ApplyOutcome::Applied | ApplyOutcome::Pending { .. }
                ) {
                    store_held.push(h);
                }
            }
        }
        if store_transfer == Some(SyncKind::Snapshot) {
            // The snapshot was merged into what the document held (offline
            // edits included): store the merged state, not the server's.
            let merged = d.snapshot();
            store_held.remove(0);
            if let Err(e) = registry.snapshot_taken(&name, &merged) {
                self.storage_failed(&name, &e);
            }
        }
        for update in &store_held {
            self.store(registry, &name, update);
        }
        let first = self
            .docs
            .get(&name)
            .is_some_and(|doc| doc.status != DocStatus::Synced);
        if let Some(doc) = self.docs.get_mut(&name) {
            doc.status = DocStatus::Synced;
        }
        // Send what the server lacks, then our version.
        self.send_missing(handle, server_version, registry);
        let Some(d) = registry.get(&name) else {
            return;
        };
        let version = d.version();
        self.send(&Message::SyncDone {
            doc: handle,
            version: Bytes(version.clone()),
        });
        if refetch {
            self.send(&Message::SyncRequest {
                doc: handle,
                version: Bytes(version),
            });
        }
        if first {
            self.events.push_back(ClientEvent::Synced { name });
        }
    }

    /// Sends what the server (at `server_version`) lacks as one new outbox
    /// update. It covers every older unacknowledged update, so those are not
    /// resent; the cumulative ack of the new one clears them all.
    pub(super) fn send_missing<R: Registry>(
        &mut self,
        handle: DocId,
        server_version: &[u8],
        registry: &mut R,
    ) {
        let Some(doc) = self.doc_by_handle(handle) else {
            return;
        };
        if doc.access != Access::ReadWrite {
            return;
        }
        let acks_awaited = !doc.outbox.is_empty();
        let name = Arc::clone(&doc.name);
        let Some(d) = registry.get(&name) else {
            return;
        };
        // Nothing the server lacks and no acknowledgement awaited: no update
        // (an unacknowledged outbox still gets one, whose cumulative ack
        // settles it).
        if !acks_awaited && d.contained_in(server_version) {
            return;
        }
        let delta = match d.delta_since(server_version) {
            Ok(delta) => delta,
            Err(_) => d.snapshot(),
        };
        let Some(doc) = self.docs.get_mut(&name) else {
            return;
        };
        let seq = doc.next_seq;
        doc.next_seq += 1;
        doc.outbox_bytes += delta.len();
        doc.outbox.push_back((seq, delta.clone()));
        self.send(&Message::Update {
            doc: handle,
            seq,
            data: Bytes(delta),
        });
    }

    pub(super) fn on_broadcast<R: Registry>(
        &mut self,
        handle: DocId,
        data: Vec<u8>,
        registry: &mut R,
    ) {
        let max_held = self.config.limits.max_pending_bytes;
        let held_total = self.held_bytes;
        let Some(doc) = self.doc_by_handle(handle) else {
            // A broadcast racing our CloseDoc; harmless.
            return;
        };
        if doc.status != DocStatus::Synced {
            let cost = data.len().saturating_add(HELD_OVERHEAD);
            if doc.held_overflow {
                return;
            }
            if held_total.saturating_add(cost) > max_held {
                // The sync is followed by a catch-up request instead: what
                // is held is of no more use, free it now.
                doc.held_overflow = true;
                let freed = doc.drop_held();
                self.held_bytes -= freed;
            } else {
                doc.held_bytes += cost;
                doc.held.push(data);
                self.held_bytes += cost;
            }
            return;
        }
        let name = Arc::clone(&doc.name);
        let Some(d) = registry.get(&name) else {
            return;
        };
        let outcome = d.apply(&data);
        self.stats.remote_updates += 1;
        let pending_version = matches!(outcome, ApplyOutcome::Pending { .. }).then(|| d.version());
        if matches!(
            outcome,
            ApplyOutcome::Applied | ApplyOutcome::Pending { .. }
        ) {
            self.store(registry, &name, &data);
        }
        if let Some(doc) = self.docs.get_mut(&name) {
            doc.version_dirty = true;
        }
        if let Some(version) = pending_version
            && let Some(doc) = self.docs.get_mut(&name)
            && doc.status_requested.is_none_or(|at| {
                at.checked_add(self.config.resync_after)
                    .is_some_and(|t| self.now >= t)
            })
        {
            doc.status_requested = Some(self.now);
            self.send(&Message::SyncRequest {
                doc: handle,
                version: Bytes(version),
            });
        }
        if let ApplyOutcome::Invalid(e) = &outcome {
            self.events.push_back(ClientEvent::DocumentError {
                name: Some(Arc::clone(&name)),
                seq: None,
                code: ErrorCode::InvalidUpdate,
                message: format!("remote update refused: {e}"),
            });
            return;
        }
        self.events
            .push_back(ClientEvent::RemoteUpdate { name, outcome });
    }

    /// Tells the server the version of every synced document that changed
    /// since the last report (once per ping round trip), so it knows what
    /// this client holds (history pruning).
    pub(super) fn report_versions<R: Registry>(&mut self, registry: &mut R) {
        let dirty: Vec<(DocId, Arc<str>)> = self
            .docs
            .values_mut()
            .filter(|d| d.version_dirty && d.status == DocStatus::Synced)
            .filter_map(|d| {
                d.version_dirty = false;
                d.handle.map(|h| (h, Arc::clone(&d.name)))
            })
            .collect();
        for (handle, name) in dirty {
            if let Some(d) = registry.get(&name) {
                let version = Bytes(d.version());
                self.send(&Message::VersionReport {
                    doc: handle,
                    version,
                });
            }
        }
    }
}
