//! The handshake and credentials: `Hello` → `Welcome` or `Reject`, token
//! refreshes (re-authorizing every open document), and the peer's `Close`.

use super::*;

impl<A: Authorizer> Hub<A> {
    pub(super) fn on_peer_close(&mut self, conn: ConnId, reason: CloseReason, message: String) {
        if let Some(s) = self.sessions.get_mut(&conn)
            && s.phase != Phase::Closed
        {
            s.phase = Phase::Closed;
            s.transfers.clear();
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

    // The Hello's fields arrive destructured from the decoded message; a
    // parameter struct would only repackage them for this one call.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_hello(
        &mut self,
        conn: ConnId,
        versions: &[u16],
        peer: String,
        token: &Bytes,
        offered: &[Compression],
        limits: crate::wire::PeerLimits,
        durable: bool,
    ) {
        let Some(version) = PROTOCOL_VERSIONS
            .iter()
            .rev()
            .find(|v| versions.contains(v))
            .copied()
        else {
            // At most a few of the peer's versions in the text (it is
            // logged and sent back).
            let shown = &versions[..versions.len().min(8)];
            let msg = format!("client speaks {shown:?}, server speaks {PROTOCOL_VERSIONS:?}");
            return self.reject(conn, RejectCode::UnsupportedVersion, msg);
        };
        if peer.len() > self.config.limits.max_name_len {
            return self.reject(conn, RejectCode::BadHello, "peer id too long".into());
        }
        let min = crate::wire::PeerLimits::MIN_FRAME_LEN;
        if limits.max_frame_len < min {
            let msg = format!("max_frame_len below {min}");
            return self.reject(conn, RejectCode::BadHello, msg);
        }
        let identity = match self.auth.authenticate(&peer, token) {
            Ok(id) => id,
            Err(why) => return self.reject(conn, RejectCode::Unauthorized, why),
        };
        let compression = if self.config.compression == Compression::Deflate
            && offered.contains(&Compression::Deflate)
        {
            Compression::Deflate
        } else {
            Compression::None
        };
        let session = self.new_session_id();
        let heartbeat_ms = u32::try_from(self.config.heartbeat.as_millis()).unwrap_or(u32::MAX);
        let server_limits = self.config.limits.peer_limits();
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        s.phase = Phase::Active;
        s.session = session;
        s.identity = Some(identity.clone());
        s.peer = peer;
        // The client offered the compression it accepts, so even the frame
        // carrying the Welcome may use it.
        s.outbound.negotiate(limits, compression);
        self.by_session.insert(session, conn);
        let welcome = Message::Welcome {
            version,
            session,
            compression,
            limits: server_limits,
            heartbeat_ms,
            durable,
        };
        self.send(conn, &welcome);
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
        let identity = match self.auth.authenticate(&s.peer, token) {
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
        if s.identity.as_ref() == Some(&identity) {
            return;
        }
        let docs: Vec<(DocId, Access)> = s.docs.iter().map(|(d, sub)| (d, sub.access)).collect();
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.identity = Some(identity.clone());
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
