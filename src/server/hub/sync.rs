//! Opening documents and sending what a client lacks: `Open`, the sync
//! requests of one input (at most one computation per document, gated by the
//! session's queue and `Limits::sync_rate`), resumable transfers and the
//! coalesced catch-ups of subscribers that fell behind.

use super::*;

impl<A: Authorizer> Hub<A> {
    pub(super) fn on_open<R: Registry>(
        &mut self,
        conn: ConnId,
        name: String,
        version: &Bytes,
        resume: Option<Resume>,
        registry: &mut R,
    ) {
        // Documents closed past the lingering allowance leave before
        // another loads, so one input cannot pile them up.
        if let Some(now) = self.now {
            self.unload_idle(now, registry);
        }
        let limits = self.config.limits;
        if name.is_empty() || name.len() > limits.max_name_len {
            let msg = format!("document name must be 1..={} bytes", limits.max_name_len);
            return self.refuse_open(conn, name, ErrorCode::LimitExceeded, msg);
        }
        let Some(s) = self.sessions.get(&conn) else {
            return;
        };
        // Opening a document again keeps its handle (and starts over).
        let already = self
            .directory
            .index(&name)
            .and_then(|i| s.docs.handle_of(i));
        if already.is_none() && s.docs.len() >= limits.max_docs_per_connection {
            let msg = format!(
                "at most {} documents per connection",
                limits.max_docs_per_connection
            );
            return self.refuse_open(conn, name, ErrorCode::LimitExceeded, msg);
        }
        let Some(identity) = s.identity.clone() else {
            return;
        };
        let Some(access) = self.auth.authorize(&identity, &name) else {
            let msg = format!("{} may not open {name:?}", identity.name());
            return self.refuse_open(conn, name, ErrorCode::Forbidden, msg);
        };
        if self.failed.contains(name.as_str()) {
            let msg = format!("document {name:?} failed and is unavailable");
            return self.refuse_open(conn, name, ErrorCode::Internal, msg);
        }
        // A CRDT that panics while loading fails this open only.
        let opened = catch_unwind(AssertUnwindSafe(|| registry.open(&name).map(|_| ())));
        let Ok(opened) = opened else {
            let msg = format!("document {name:?} failed to load");
            self.failed.insert(name.as_str().into());
            return self.refuse_open(conn, name, ErrorCode::Internal, msg);
        };
        if let Err(e) = opened {
            let code = match e {
                RegistryError::NotFound(_) => ErrorCode::DocumentNotFound,
                RegistryError::InvalidName(_) => ErrorCode::LimitExceeded,
                RegistryError::Storage(_) => ErrorCode::Storage,
                _ => ErrorCode::Internal,
            };
            let msg = e.to_string();
            return self.refuse_open(conn, name, code, msg);
        }
        let index = self.directory.insert(&name);
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        let sub = Subscription::new(index, access);
        let doc = match already {
            Some(doc) => {
                s.docs.replace(doc, sub);
                doc
            }
            None => s.docs.open(sub),
        };
        self.directory.subscribe(index, conn, doc);
        let name = self
            .directory
            .name(index)
            .map_or_else(|| name.into(), Arc::clone);
        self.send_opened(conn, &name, doc, access);
        self.events.push_back(ServerEvent::DocumentOpened {
            conn,
            name: Arc::clone(&name),
            access,
        });
        self.send_presence_snapshot(conn, doc);
        // Resume an interrupted transfer from the client's last complete
        // chunk, then catch up with what changed since it was computed.
        if let Some(r) = resume
            && let Some(cached) = self.transfers.get(r.transfer)
            && cached.doc == index.key()
            && r.offset <= cached.payload.len() as u64
        {
            let cached = cached.clone();
            if let Some(s) = self.sessions.get_mut(&conn) {
                s.transfers.cancel(doc);
                s.transfers.push_back(Transfer {
                    doc,
                    id: r.transfer,
                    kind: cached.kind,
                    payload: cached.payload,
                    offset: r.offset as usize,
                    version: cached.version.clone(),
                });
            }
            self.events.push_back(ServerEvent::TransferResumed {
                conn,
                name,
                offset: r.offset,
            });
            // After the resumed transfer: computed once it was sent.
            return self.note_sync(doc, cached.version);
        }
        self.request_sync(conn, doc, version.0.clone());
    }

    pub(super) fn refuse_open(
        &mut self,
        conn: ConnId,
        name: String,
        code: ErrorCode,
        message: String,
    ) {
        self.send(
            conn,
            &Message::OpenRefused {
                name: name.clone(),
                code,
                message: message.clone(),
            },
        );
        self.events.push_back(ServerEvent::DocumentError {
            conn,
            name: Some(name.into()),
            seq: None,
            code,
            message,
        });
    }

    /// The registry's document behind handle `doc`, with its name; reports
    /// an internal error to `conn` when the registry lost it.
    pub(super) fn loaded<'r, R: Registry>(
        &mut self,
        conn: ConnId,
        doc: DocId,
        seq: Option<u64>,
        registry: &'r mut R,
    ) -> Option<(Arc<str>, &'r mut R::Doc)> {
        let name = self.doc_name(conn, doc).cloned()?;
        match registry.get(&name) {
            Some(d) => Some((name, d)),
            None => {
                let msg = "document not loaded".to_string();
                self.doc_error(conn, Some(doc), seq, ErrorCode::Internal, msg);
                None
            }
        }
    }

    /// `conn` asks for what it lacks of `doc` since `version` (`Open`,
    /// `SyncRequest`): the transfer in progress for `doc` is dropped, and
    /// the sync is computed once the current input is handled
    /// ([`Hub::run_requested_syncs`]). Requests for one document within
    /// one input replace each other: the last one is computed, once.
    pub(super) fn request_sync(&mut self, conn: ConnId, doc: DocId, version: Vec<u8>) {
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.transfers.cancel(doc);
        }
        self.note_sync(doc, version);
    }

    /// Records that the current input asked for a sync of `doc` from
    /// `version`, replacing an earlier request for `doc`.
    pub(super) fn note_sync(&mut self, doc: DocId, version: Vec<u8>) {
        match self.syncs_requested.iter_mut().find(|(d, _)| *d == doc) {
            Some(due) => due.1 = version,
            None => self.syncs_requested.push((doc, version)),
        }
    }

    /// Starts the syncs the input of `conn` asked for, in order: each is
    /// computed now if the session may take it ([`Hub::sync_gate`]), else
    /// it waits as the subscription's due catch-up ([`Hub::run_catch_ups`]).
    pub(super) fn run_requested_syncs<R: Registry>(&mut self, conn: ConnId, registry: &mut R) {
        let mut requested = std::mem::take(&mut self.syncs_requested);
        for (doc, version) in requested.drain(..) {
            let Some(s) = self.sessions.get_mut(&conn) else {
                break;
            };
            if s.is_closed() {
                break;
            }
            let Some(sub) = s.docs.get_mut(&doc) else {
                continue;
            };
            // This sync covers whatever catch-up was due.
            sub.take_lagging();
            if self.sync_gate(conn) {
                self.queue_sync(conn, doc, &version, registry);
            } else if let Some(s) = self.sessions.get_mut(&conn)
                && let Some(sub) = s.docs.get_mut(&doc)
            {
                // The requested version is the peer's: one too long to keep
                // is replaced by the empty version (the catch-up is then
                // everything), so a held-back sync pins at most
                // `max_stored_version_len` bytes.
                let version = if version.len() <= self.config.limits.max_stored_version_len {
                    version
                } else {
                    Vec::new()
                };
                sub.set_lagging(version);
                s.lagging = true;
                // Held back by its rate, not by room: listed now (a drain
                // would never come).
                self.marks.drained(s, low_water(&self.config.limits));
            }
        }
        self.syncs_requested = requested;
    }

    /// Whether a sync payload may be computed for `conn` now, taking a
    /// token of its sync rate if so. A session holds at most one computed
    /// payload beyond its bounded queue: a sync is computed only when no
    /// transfer waits for room and the queue is below its low-water mark,
    /// and at most `Limits::sync_rate` per second. One held back by the
    /// rate sets the hub's retry deadline.
    pub(super) fn sync_gate(&mut self, conn: ConnId) -> bool {
        let (Some(now), low) = (self.now, low_water(&self.config.limits)) else {
            return false;
        };
        let limits = &self.config.limits;
        let Some(s) = self.sessions.get_mut(&conn) else {
            return false;
        };
        if s.phase != Phase::Active || !s.transfers.is_empty() || s.outbound.bytes() > low {
            return false;
        }
        if s.rates(limits, now).sync.allow(now) {
            return true;
        }
        let refill = Duration::from_secs(1) / limits.sync_rate.max(1);
        let retry = now.checked_add(refill);
        self.sync_retry = match (self.sync_retry, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        false
    }

    /// Queues what the client at `version` lacks: a delta, or a snapshot when
    /// no delta is computable, then `SyncDone` with the server's version.
    /// Multi-chunk payloads are cached for resumption.
    pub(super) fn queue_sync<R: Registry>(
        &mut self,
        conn: ConnId,
        doc: DocId,
        version: &[u8],
        registry: &mut R,
    ) {
        let Some(key) = self.index_of(conn, doc).map(DocIndex::key) else {
            return;
        };
        let Some((name, d)) = self.loaded(conn, doc, None, registry) else {
            return;
        };
        let Ok(server_version) = catch_unwind(AssertUnwindSafe(|| d.version())) else {
            return self.sender_doc_panicked(conn, doc);
        };
        // Clients joining together from the same version share one payload
        // (and its transfer id, so any of them can resume it).
        let shared = self
            .transfers
            .find(key, version, &server_version)
            .map(|(id, t)| (id, t.kind, Arc::clone(&t.payload)));
        let (id, kind, payload, fresh) = match shared {
            Some((id, kind, payload)) => (id, kind, payload, false),
            None => {
                let computed = catch_unwind(AssertUnwindSafe(|| match d.delta_since(version) {
                    Ok(delta) => (SyncKind::Delta, delta),
                    Err(_) => (SyncKind::Snapshot, d.snapshot()),
                }));
                let Ok((kind, payload)) = computed else {
                    return self.sender_doc_panicked(conn, doc);
                };
                (self.rng.next_u64(), kind, Arc::new(payload), true)
            }
        };
        let bytes = payload.len();
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        if fresh && payload.len() > s.outbound.max_chunk(&self.common) {
            self.transfers.insert(
                id,
                conn,
                CachedTransfer {
                    doc: key,
                    kind,
                    payload: Arc::clone(&payload),
                    version: server_version.clone(),
                    from: version.to_vec(),
                },
            );
        }
        s.transfers.push_back(Transfer {
            doc,
            id,
            kind,
            payload,
            offset: 0,
            version: server_version,
        });
        s.pump_transfers(&mut self.common);
        self.marks.ready(s);
        if kind == SyncKind::Snapshot {
            self.events
                .push_back(ServerEvent::SnapshotSent { conn, name, bytes });
        }
    }

    /// Whether `s` has a catch-up due and room for it (its sync rate
    /// aside): it lags, no transfer waits for room and its queue is below
    /// the low-water mark.
    pub(super) fn catch_up_waiting(&self, s: &ServerSession) -> bool {
        s.phase == Phase::Active
            && s.transfers.is_empty()
            && s.outbound.bytes() <= low_water(&self.config.limits)
            && s.docs.iter().any(|(_, sub)| sub.is_lagging())
    }

    /// Sends the due catch-ups (lagging subscribers, syncs held back) of
    /// the sessions [`Marks`] lists as drained, one at a time per session
    /// while [`Hub::sync_gate`] lets them through; the other sessions are
    /// not looked at. A session held back by its sync rate waits for the
    /// retry deadline ([`Marks::hold_for_rate`]); one held back by a full
    /// queue or a pending transfer is listed again by the drain that makes
    /// room.
    pub(super) fn run_catch_ups<R: Registry>(&mut self, registry: &mut R) {
        if !self.marks.catch_up_due() {
            return;
        }
        for conn in self.marks.take_catch_ups() {
            loop {
                let Some(doc) = self.next_lagging(conn) else {
                    if let Some(s) = self.sessions.get_mut(&conn) {
                        s.lagging = false;
                    }
                    break;
                };
                if !self.sync_gate(conn) {
                    if let Some(s) = self.sessions.get(&conn)
                        && self.catch_up_waiting(s)
                    {
                        self.marks.hold_for_rate(conn);
                    }
                    break;
                }
                let Some(since) = self.sub_mut(conn, doc).and_then(|sub| sub.take_lagging()) else {
                    break;
                };
                if let Some(name) = self.doc_name(conn, doc).cloned() {
                    self.events
                        .push_back(ServerEvent::CatchUpQueued { conn, name });
                }
                self.queue_sync(conn, doc, &since, registry);
                self.send_presence_snapshot(conn, doc);
            }
        }
    }

    /// A document of `conn` whose catch-up is due.
    pub(super) fn next_lagging(&self, conn: ConnId) -> Option<DocId> {
        let s = self.sessions.get(&conn)?;
        s.docs
            .iter()
            .find(|(_, sub)| sub.is_lagging())
            .map(|(doc, _)| doc)
    }
}
