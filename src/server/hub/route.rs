//! Routing: each decoded message of a connection goes to its session
//! (handshake, ping, close) or to the document it names (through the
//! connection's handle), consecutive updates for one document batched.

use super::*;

impl<A: Authorizer> Hub<A> {
    pub(super) fn dispatch<R: Registry>(
        &mut self,
        conn: ConnId,
        msgs: &mut Vec<Message>,
        registry: &mut R,
    ) {
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        let mut batch_doc = DocId(0);
        for msg in msgs.drain(..) {
            if self.is_closed(conn) {
                break;
            }
            let handshaken = matches!(
                self.sessions.get(&conn).map(|s| s.phase()),
                Some(Phase::Active)
            );
            if !handshaken {
                if !batch.is_empty() {
                    break;
                }
                match msg {
                    hello @ Message::Hello { .. } => {
                        let durable = registry.is_durable();
                        self.on_hello(conn, hello, durable)
                    }
                    Message::Close { reason, message } => self.on_peer_close(conn, reason, message),
                    other => self.fail(
                        conn,
                        CloseReason::ProtocolError,
                        CloseCause::Protocol(format!("{} before the handshake", other.name())),
                    ),
                }
                continue;
            }
            // Consecutive updates for one document are applied in one batch.
            match msg {
                Message::Update { doc, seq, data } => {
                    if !batch.is_empty() && batch_doc != doc {
                        self.apply_updates(conn, batch_doc, &mut batch, registry);
                    }
                    batch_doc = doc;
                    batch.push((seq, data));
                    continue;
                }
                Message::UpdateBatch {
                    doc,
                    first_seq,
                    data,
                } => {
                    if !batch.is_empty() && batch_doc != doc {
                        self.apply_updates(conn, batch_doc, &mut batch, registry);
                    }
                    batch_doc = doc;
                    for (i, d) in data.into_iter().enumerate() {
                        batch.push((first_seq.saturating_add(i as u64), d));
                    }
                    continue;
                }
                other => {
                    if !batch.is_empty() {
                        self.apply_updates(conn, batch_doc, &mut batch, registry);
                    }
                    self.on_message(conn, other, registry);
                }
            }
        }
        if !batch.is_empty() && !self.is_closed(conn) {
            self.apply_updates(conn, batch_doc, &mut batch, registry);
        }
        self.batch = batch;
    }

    fn on_message<R: Registry>(&mut self, conn: ConnId, msg: Message, registry: &mut R) {
        match msg {
            Message::Open {
                name,
                version,
                resume,
            } => self.on_open(conn, name, &version, resume, registry),
            Message::SyncDone { doc, version } => {
                let max = self.config.limits.max_stored_version_len;
                let Some(sub) = self.sub_mut(conn, doc) else {
                    return self.unknown_doc(conn, doc);
                };
                let first = !sub.synced;
                sub.synced = true;
                // A version too long to keep is dropped: with none known,
                // this subscriber keeps the document from being pruned.
                sub.client_version = (version.0.len() <= max).then(|| version.0.into_boxed_slice());
                if first && let Some(name) = self.doc_name(conn, doc).cloned() {
                    self.events
                        .push_back(ServerEvent::DocumentSynced { conn, name });
                }
            }
            Message::VersionReport { doc, version } => {
                let max = self.config.limits.max_stored_version_len;
                let Some(sub) = self.sub_mut(conn, doc) else {
                    return self.unknown_doc(conn, doc);
                };
                // Only a synced subscriber's report counts: before its
                // `SyncDone` the client does not hold the document yet.
                if sub.synced {
                    sub.client_version =
                        (version.0.len() <= max).then(|| version.0.into_boxed_slice());
                }
            }
            Message::SyncRequest { doc, version } => {
                if self.sub_mut(conn, doc).is_none() {
                    return self.unknown_doc(conn, doc);
                }
                self.request_sync(conn, doc, version.0);
            }
            Message::CloseDoc { doc } => self.unsubscribe(conn, doc),
            Message::RefreshToken { token } => self.on_refresh(conn, &token),
            Message::Ping { t } => {
                if let Some(s) = self.sessions.get_mut(&conn) {
                    if s.on_ping(t, &mut self.common).is_ok() {
                        self.marks.ready(s);
                    } else {
                        self.slow_consumer(conn);
                    }
                }
            }
            Message::Pong { .. } => {}
            Message::Close { reason, message } => self.on_peer_close(conn, reason, message),
            Message::Error {
                code, mut message, ..
            } => {
                // A client-side error report; nothing to undo here. It
                // counts against the same per-input cap as the server's
                // own errors, and keeps only the start of its text.
                if self.input == Some(conn) {
                    if self.input_errors >= MAX_ERRORS_PER_INPUT {
                        self.input_errors_dropped += 1;
                        return;
                    }
                    self.input_errors += 1;
                }
                truncate_at_char(&mut message, MAX_PEER_ERROR_TEXT);
                self.events.push_back(ServerEvent::DocumentError {
                    conn,
                    name: None,
                    seq: None,
                    code,
                    message,
                });
            }
            Message::AwarenessSet { doc, clock, state } => {
                self.on_presence(conn, doc, clock, state)
            }
            Message::App {
                kind, route, data, ..
            } => self.on_app(conn, kind, route, data),
            Message::RelayJoin { .. }
            | Message::RelayPush { .. }
            | Message::RelaySnapshot { .. }
            | Message::RelayStateRequest { .. } => {
                let what = msg.name();
                self.doc_error(
                    conn,
                    None,
                    None,
                    ErrorCode::UnexpectedMessage,
                    format!("{what} is not supported by this server"),
                )
            }
            other => self.fail(
                conn,
                CloseReason::ProtocolError,
                CloseCause::Protocol(format!("{} is not a client message", other.name())),
            ),
        }
    }

    pub(super) fn sub_mut(&mut self, conn: ConnId, doc: DocId) -> Option<&mut Subscription> {
        self.sessions.get_mut(&conn)?.docs_mut().get_mut(&doc)
    }

    pub(super) fn unknown_doc(&mut self, conn: ConnId, doc: DocId) {
        self.doc_error(
            conn,
            Some(doc),
            None,
            ErrorCode::UnknownDocument,
            format!("document handle {} is not open", doc.0),
        );
    }
}
