//! Local updates: taking edits from the documents, the outbox that keeps
//! them until the server acknowledges them, the client registry's storage
//! hook, acknowledgements and refusals.

use super::*;

impl ClientSession {
    /// Sends the local edits made to `name` with the native CRDT API since
    /// the last call ([`Document::take_local_update`]). Returns the update's
    /// sequence number, or `None` when there was nothing to send. Offline,
    /// the update waits in the outbox.
    pub fn flush_local<R: Registry>(
        &mut self,
        registry: &mut R,
        name: &str,
        now: Instant,
    ) -> Result<Option<u64>, CommandError> {
        self.tick(now);
        self.check_writable(name)?;
        let Some(d) = registry.get(name) else {
            return Err(CommandError::UnknownDocument(name.to_string()));
        };
        match d.take_local_update() {
            Some(update) => {
                self.store(registry, name, &update);
                self.queue_update(name, update).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Sends an update the application encoded itself.
    pub fn send_update(
        &mut self,
        name: &str,
        update: Vec<u8>,
        now: Instant,
    ) -> Result<u64, CommandError> {
        self.tick(now);
        self.check_writable(name)?;
        self.queue_update(name, update)
    }

    /// Whether a local edit of `name` would be taken now: the error
    /// [`ClientSession::flush_local`] would return (unknown document,
    /// read-only access, [`CommandError::Backpressure`], closed session).
    /// Check it before editing the document, so that a refused edit is not
    /// made at all (an edit made and then refused would still leave with
    /// the next flush).
    pub fn check_writable(&self, name: &str) -> Result<(), CommandError> {
        if self.phase == Phase::Closed {
            return Err(CommandError::Closed);
        }
        let doc = self
            .docs
            .get(name)
            .ok_or_else(|| CommandError::UnknownDocument(name.to_string()))?;
        if doc.access != Access::ReadWrite {
            return Err(CommandError::ReadOnly(name.to_string()));
        }
        let limits = &self.config.limits;
        if doc.outbox_bytes >= limits.max_outbox_bytes
            || doc.outbox.len() >= limits.max_outbox_updates
        {
            return Err(CommandError::Backpressure {
                name: name.to_string(),
                queued: doc.outbox_bytes,
                limit: limits.max_outbox_bytes,
            });
        }
        if doc.status == DocStatus::Synced && !self.outbound.has_room(0) {
            return Err(CommandError::Backpressure {
                name: name.to_string(),
                queued: self.outbound.bytes(),
                limit: limits.max_outbound_bytes,
            });
        }
        Ok(())
    }

    /// Storage hook of a durable client-side registry (e.g.
    /// [`SqliteRegistry`](crate::store::SqliteRegistry)): hands what changed
    /// document `name` — a local edit, or a remote update applied — to its
    /// log ([`Registry::update_applied`]; a memory registry ignores it).
    /// The driver makes it durable with [`Registry::flush`] or
    /// [`Registry::commit`]. A failure is reported as a `Storage` document
    /// error; the document in memory is unaffected.
    pub(super) fn store<R: Registry>(&mut self, registry: &mut R, name: &str, update: &[u8]) {
        if let Err(e) = registry.update_applied(name, update) {
            self.storage_failed(name, &e);
        }
    }

    /// Reports a failure of the local registry's storage for `name` as a
    /// [`ErrorCode::Storage`] document error (for drivers that flush it).
    pub(crate) fn storage_failed(&mut self, name: &str, e: &crate::registry::RegistryError) {
        let name = self.docs.get(name).map(|d| Arc::clone(&d.name));
        self.events.push_back(ClientEvent::DocumentError {
            name,
            seq: None,
            code: ErrorCode::Storage,
            message: format!("local storage: {e}"),
        });
    }

    /// Puts `update` in the outbox and, when the document is synced, on the
    /// wire.
    pub(super) fn queue_update(
        &mut self,
        name: &str,
        update: Vec<u8>,
    ) -> Result<u64, CommandError> {
        let connected = self.phase == Phase::Connected;
        let Some(doc) = self.docs.get_mut(name) else {
            return Err(CommandError::UnknownDocument(name.to_string()));
        };
        let seq = doc.next_seq;
        doc.next_seq += 1;
        if connected
            && doc.status == DocStatus::Synced
            && let Some(handle) = doc.handle
        {
            let msg = Message::Update {
                doc: handle,
                seq,
                data: Bytes(update.clone()),
            };
            // Room was checked; control priority keeps the update from being
            // lost between the check and the push.
            let _ = self.outbound.push(&msg, Priority::Control);
        }
        doc.outbox_bytes += update.len();
        doc.outbox.push_back((seq, update));
        doc.version_dirty = true;
        Ok(seq)
    }

    pub(super) fn on_ack(&mut self, handle: DocId, applied: u64, durable: u64) {
        let Some(doc) = self.doc_by_handle(handle) else {
            return;
        };
        while let Some((seq, update)) = doc.outbox.front() {
            if *seq > applied {
                break;
            }
            doc.outbox_bytes -= update.len();
            doc.outbox.pop_front();
        }
        doc.durable_seq = doc.durable_seq.max(durable);
        let name = Arc::clone(&doc.name);
        self.events.push_back(ClientEvent::Acknowledged {
            name,
            applied,
            durable,
        });
    }

    pub(super) fn on_error(
        &mut self,
        handle: Option<DocId>,
        seq: Option<u64>,
        code: ErrorCode,
        message: String,
    ) {
        let name = handle.and_then(|h| self.handles.get(&h).cloned());
        if let Some(name) = &name
            && let Some(doc) = self.docs.get_mut(name)
        {
            match (code, seq) {
                // The server will never take this update: drop it.
                (ErrorCode::InvalidUpdate, Some(seq)) => {
                    if let Some(i) = doc.outbox.iter().position(|(s, _)| *s == seq)
                        && let Some((_, u)) = doc.outbox.remove(i)
                    {
                        doc.outbox_bytes -= u.len();
                    }
                }
                (ErrorCode::ReadOnly, _) => {
                    doc.access = Access::ReadOnly;
                    let rejected = doc.reject_outbox(ErrorCode::ReadOnly);
                    self.events.extend(rejected);
                }
                _ => {}
            }
        }
        self.events.push_back(ClientEvent::DocumentError {
            name,
            seq,
            code,
            message,
        });
    }
}
