//! The handshake and credentials: `Hello` → `Welcome` or `Reject`, token
//! refreshes (re-authorizing every open document), and the peer's `Close`.

use super::*;

impl<A: Authorizer> Hub<A> {
    pub(super) fn on_peer_close(&mut self, conn: ConnId, reason: CloseReason, message: String) {
        if self
            .sessions
            .get_mut(&conn)
            .is_some_and(|s| s.on_peer_close())
        {
            self.after_close(conn, CloseCause::Peer { reason, message });
        }
    }

    pub(super) fn reject(&mut self, conn: ConnId, code: RejectCode, message: String) {
        self.send(
            conn,
            &Message::Reject {
                code,
                message: message.clone(),
            },
        );
        self.events.push_back(ServerEvent::HandshakeRejected {
            conn,
            code,
            message: message.clone(),
        });
        self.fail(
            conn,
            CloseReason::Rejected,
            CloseCause::Rejected { code, message },
        );
    }

    /// A `Hello` from `conn`: the session checks it, the authorizer
    /// authenticates the peer, the session answers (`Welcome` or `Reject`).
    pub(super) fn on_hello(&mut self, conn: ConnId, hello: Message, durable: bool) {
        let Message::Hello {
            versions,
            peer,
            token,
            compression,
            limits,
        } = hello
        else {
            return;
        };
        let Some(s) = self.sessions.get(&conn) else {
            return;
        };
        let terms = match s.check_hello(&versions, &peer, &compression, limits, &self.config) {
            Ok(terms) => terms,
            Err((code, message)) => return self.reject(conn, code, message),
        };
        let identity = match self.auth.authenticate(&peer, &token) {
            Ok(id) => id,
            Err(why) => return self.reject(conn, RejectCode::Unauthorized, why),
        };
        let session = self.new_session_id();
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        let welcomed = s.accept(
            terms,
            peer,
            session,
            identity.clone(),
            durable,
            &self.config,
            &mut self.common,
        );
        self.by_session.insert(session, conn);
        if welcomed.is_ok() {
            self.marks.ready(s);
        } else {
            self.slow_consumer(conn);
        }
        self.events.push_back(ServerEvent::HandshakeCompleted {
            conn,
            session,
            identity,
        });
    }

    /// A session id no live session has, never zero (the id of a session
    /// before its handshake): random, from the seeded generator, so ids
    /// tell nothing about other sessions or how many there were.
    pub(super) fn new_session_id(&mut self) -> SessionId {
        loop {
            let id = SessionId(self.rng.next_u64());
            // The generator's outputs do not repeat within 2^64 draws
            // (SplitMix64 is a bijection of a counter), so this skips at
            // most the live ids.
            if id.0 != 0 && !self.by_session.contains_key(&id) {
                return id;
            }
        }
    }

    /// A new token for `conn`. It takes effect before the next message:
    /// a token that no longer authenticates (revoked, expired, unknown)
    /// closes the session (`Close(Rejected)`, cause
    /// [`CloseCause::Rejected`] with [`RejectCode::Unauthorized`]: the
    /// credential is gone, so is the session); otherwise every open
    /// document is authorized again for the new identity, and one it may no
    /// longer open is closed (`Error(Forbidden)` then `CloseDoc`), one whose
    /// access changed is announced with a new `Opened`. An unchanged
    /// identity (name and grant) changes nothing. More than
    /// `Limits::refresh_rate` refreshes a second close the session with
    /// `LimitExceeded`.
    pub(super) fn on_refresh(&mut self, conn: ConnId, token: &[u8]) {
        let (Some(now), Some(s)) = (self.now, self.sessions.get_mut(&conn)) else {
            return;
        };
        // Each refresh costs an authentication and possibly an
        // authorization per open document: past `Limits::refresh_rate` the
        // client is broken or hostile.
        if !s.rates(&self.config.limits, now).refresh.allow(now) {
            return self.fail(
                conn,
                CloseReason::LimitExceeded,
                CloseCause::Local(CloseReason::LimitExceeded),
            );
        }
        let identity = match self.auth.authenticate(s.peer(), token) {
            Ok(id) => id,
            Err(why) => {
                let message = format!("token refresh refused: {why}");
                let code = RejectCode::Unauthorized;
                return self.fail(
                    conn,
                    CloseReason::Rejected,
                    CloseCause::Rejected { code, message },
                );
            }
        };
        // The same identity (name and grant) is authorized as before: the
        // authorizer decides from the identity alone.
        if s.identity() == Some(&identity) {
            return;
        }
        let docs: Vec<(DocId, Access)> = s.docs().iter().map(|(d, sub)| (d, sub.access)).collect();
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.set_identity(identity.clone());
        }
        for (doc, old) in docs {
            let Some(name) = self.doc_name(conn, doc).cloned() else {
                continue;
            };
            match self.auth.authorize(&identity, &name) {
                Some(access) if access == old => {}
                Some(access) => {
                    if let Some(sub) = self.sub_mut(conn, doc) {
                        sub.access = access;
                    }
                    self.send_opened(conn, &name, doc, access);
                }
                None => {
                    // Reported while the handle still names the document.
                    self.doc_error(
                        conn,
                        Some(doc),
                        None,
                        ErrorCode::Forbidden,
                        "access revoked by the new token".into(),
                    );
                    self.revoke(conn, doc);
                    self.send(conn, &Message::CloseDoc { doc });
                }
            }
        }
    }
}
