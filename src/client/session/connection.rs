//! The connection's life: handshake (`connect`, `Welcome`), loss and
//! close, dialing with the backoff (`dial`, `dial_failed`), pings.

use super::*;

impl ClientSession {
    /// A new transport is up: starts the handshake. Any previous
    /// connection's unsent frames are dropped; unacknowledged updates stay
    /// in the outbox and reach the server after the documents re-sync.
    pub fn connect(&mut self, now: Instant) {
        self.tick(now);
        if self.phase == Phase::Closed {
            return;
        }
        if matches!(self.phase, Phase::Handshaking { .. } | Phase::Connected) {
            self.lose_connection(CloseCause::TransportLost);
        }
        self.inbound = Inbound::new(self.config.framing);
        self.outbound.reset(&self.config.limits);
        self.last_frame = self.now;
        self.next_ping = None;
        let compression = if self.config.offer_deflate {
            vec![Compression::Deflate, Compression::None]
        } else {
            vec![Compression::None]
        };
        self.send(&Message::Hello {
            versions: PROTOCOL_VERSIONS.to_vec(),
            peer: self.config.peer.clone(),
            token: Bytes(self.config.token.clone()),
            compression,
            limits: self.config.limits.peer_limits(),
        });
        let deadline = self.now.checked_add(self.config.handshake_timeout);
        self.set_status(Phase::Handshaking { deadline });
    }

    /// The transport went away without a `Close`.
    pub fn transport_lost(&mut self, now: Instant) {
        self.tick(now);
        if matches!(self.phase, Phase::Handshaking { .. } | Phase::Connected) {
            self.lose_connection(CloseCause::TransportLost);
        }
    }

    /// Closes the connection for good, queueing a `Close` for the server.
    pub fn close(&mut self, now: Instant) {
        self.tick(now);
        match self.phase {
            Phase::Closed => {}
            Phase::Handshaking { .. } | Phase::Connected => {
                self.send(&Message::Close {
                    reason: CloseReason::Normal,
                    message: String::new(),
                });
                self.end_connection(CloseCause::Local(CloseReason::Normal));
                self.set_status(Phase::Closed);
            }
            _ => self.set_status(Phase::Closed),
        }
    }

    /// Sends a new auth token; the server re-authorizes every open document
    /// without reconnecting.
    pub fn refresh_token(&mut self, token: Vec<u8>) {
        self.config.token = token.clone();
        if self.phase == Phase::Connected {
            self.send(&Message::RefreshToken {
                token: Bytes(token),
            });
        }
    }

    pub(super) fn fail(&mut self, reason: CloseReason, cause: CloseCause) {
        if !matches!(self.phase, Phase::Handshaking { .. } | Phase::Connected) {
            return;
        }
        self.send(&Message::Close {
            reason,
            message: cause.to_string(),
        });
        self.lose_connection(cause);
    }

    /// Ends the current connection: reports `Closed` once and resets every
    /// document to wait for the next connection.
    pub(super) fn lose_connection(&mut self, cause: CloseCause) {
        let stable = match (self.connected_at, &self.config.reconnect) {
            (Some(at), Some(policy)) => at
                .checked_add(policy.reset_after)
                .is_some_and(|t| self.now >= t),
            _ => false,
        };
        if stable {
            self.attempts = 0;
        }
        // Retrying cannot fix a refused token or version; only an
        // unavailable server is worth retrying.
        let retry = !matches!(
            cause,
            CloseCause::Rejected { code, .. } if code != RejectCode::Unavailable
        );
        self.end_connection(cause);
        if retry {
            self.schedule_reconnect();
        } else {
            self.set_status(Phase::Disconnected {
                reconnect_at: None,
                dialing: false,
            });
        }
    }

    /// Picks the next dial time from the backoff policy (or gives up).
    pub(super) fn schedule_reconnect(&mut self) {
        let Some(policy) = self.config.reconnect else {
            return self.set_status(Phase::Disconnected {
                reconnect_at: None,
                dialing: false,
            });
        };
        self.attempts = self.attempts.saturating_add(1);
        match policy.delay(self.attempts, &mut self.rng) {
            Some(delay) => {
                let at = self.now.checked_add(delay);
                self.set_status(Phase::Disconnected {
                    reconnect_at: at,
                    dialing: false,
                });
            }
            None => {
                self.events.push_back(ClientEvent::GaveUp {
                    attempts: self.attempts - 1,
                });
                self.set_status(Phase::Disconnected {
                    reconnect_at: None,
                    dialing: false,
                });
            }
        }
    }

    /// Asks for a transport now: emits [`ClientEvent::Dial`], to be
    /// answered with [`ClientSession::connect`] once the transport is up or
    /// [`ClientSession::dial_failed`]. Works before the first connection
    /// (`attempt` 0; a failed first dial is then retried with the backoff,
    /// so a client can start before its server) and after
    /// [`ClientSession::disconnect`] or [`ClientSession::transport_lost`]
    /// (it skips the remaining backoff delay; the attempt count starts
    /// again). Does nothing while connected, handshaking, already dialing
    /// or closed.
    ///
    /// ```
    /// use std::time::Instant;
    /// use crdt_socket_sync::client::{ClientConfig, ClientEvent, ClientSession, Status};
    ///
    /// let now = Instant::now();
    /// let mut client = ClientSession::new(ClientConfig::default(), now);
    /// client.dial(now);
    /// assert_eq!(client.poll_event(), Some(ClientEvent::Dial { attempt: 0 }));
    /// client.dial_failed_because(now, "connection refused");
    /// assert_eq!(client.status(), Status::Reconnecting); // retried after the backoff
    /// assert!(matches!(client.poll_event(), Some(ClientEvent::DialFailed { attempt: 0, .. })));
    /// ```
    pub fn dial(&mut self, now: Instant) {
        self.tick(now);
        match self.phase {
            Phase::Idle { dialing: false } => {
                self.phase = Phase::Idle { dialing: true };
                self.events.push_back(ClientEvent::Dial { attempt: 0 });
            }
            Phase::Disconnected { dialing: false, .. } => {
                self.attempts = 0;
                self.set_status(Phase::Disconnected {
                    reconnect_at: None,
                    dialing: true,
                });
                self.events.push_back(ClientEvent::Dial { attempt: 0 });
            }
            _ => {}
        }
    }

    /// The transport the application tried to open after a `Dial` event
    /// could not be established: reports [`ClientEvent::DialFailed`] and
    /// schedules the next attempt (or gives up, per the backoff policy).
    pub fn dial_failed(&mut self, now: Instant) {
        self.dial_failure(now, None);
    }

    /// [`ClientSession::dial_failed`] with the reason the transport gave
    /// (reported in [`ClientEvent::DialFailed`]).
    pub fn dial_failed_because(&mut self, now: Instant, reason: impl Into<String>) {
        self.dial_failure(now, Some(reason.into()));
    }

    pub(super) fn dial_failure(&mut self, now: Instant, reason: Option<String>) {
        self.tick(now);
        if !matches!(
            self.phase,
            Phase::Disconnected { dialing: true, .. } | Phase::Idle { dialing: true }
        ) {
            return;
        }
        let attempt = self.attempts;
        let at = self.events.len();
        self.schedule_reconnect();
        let retry_in = match self.phase {
            Phase::Disconnected {
                reconnect_at: Some(t),
                ..
            } => Some(t.saturating_duration_since(self.now)),
            _ => None,
        };
        self.events.insert(
            at,
            ClientEvent::DialFailed {
                attempt,
                reason,
                retry_in,
            },
        );
    }

    /// Ends the connection (queueing `Close` for the server) and cancels
    /// automatic reconnection; [`ClientSession::connect`] starts again.
    /// Unlike [`ClientSession::close`], the session stays usable.
    pub fn disconnect(&mut self, now: Instant) {
        self.tick(now);
        match self.phase {
            Phase::Handshaking { .. } | Phase::Connected => {
                self.send(&Message::Close {
                    reason: CloseReason::Normal,
                    message: String::new(),
                });
                self.end_connection(CloseCause::Local(CloseReason::Normal));
            }
            Phase::Closed => return,
            _ => {}
        }
        self.set_status(Phase::Disconnected {
            reconnect_at: None,
            dialing: false,
        });
    }

    pub(super) fn end_connection(&mut self, cause: CloseCause) {
        self.events.push_back(ClientEvent::Closed { cause });
        self.connected_at = None;
        self.handles.clear();
        self.session = None;
        self.next_ping = None;
        self.held_bytes = 0;
        for doc in self.docs.values_mut() {
            doc.reset_connection();
            // Our state is re-published on the next connection.
            doc.presence.last_sent = None;
            doc.presence.dirty = doc.presence.local.is_some();
            let name = Arc::clone(&doc.name);
            for (session, (_, peer)) in std::mem::take(&mut doc.presence.peers) {
                self.events.push_back(ClientEvent::PresenceChanged {
                    name: Arc::clone(&name),
                    session,
                    identity: peer.identity,
                    state: None,
                });
            }
        }
    }

    pub(super) fn on_welcome<R: Registry>(
        &mut self,
        version: u16,
        session: SessionId,
        compression: Compression,
        (limits, heartbeat_ms, durable): (PeerLimits, u32, bool),
        registry: &mut R,
    ) {
        if !PROTOCOL_VERSIONS.contains(&version)
            || (compression == Compression::Deflate && !self.config.offer_deflate)
        {
            return self.fail(
                CloseReason::ProtocolError,
                CloseCause::Protocol(
                    "server chose a version or compression we did not offer".into(),
                ),
            );
        }
        // Our frames are cut to the server's limit (a larger one is capped
        // by our own); one below the minimum would fragment everything.
        if limits.max_frame_len < PeerLimits::MIN_FRAME_LEN {
            return self.fail(
                CloseReason::ProtocolError,
                CloseCause::Protocol(format!(
                    "server max_frame_len {} is below {}",
                    limits.max_frame_len,
                    PeerLimits::MIN_FRAME_LEN
                )),
            );
        }
        self.outbound
            .negotiate(limits, compression, self.config.compress_threshold);
        self.session = Some(session);
        self.ping_interval = self
            .config
            .ping_interval
            .unwrap_or(Duration::from_millis(u64::from(heartbeat_ms.max(100))));
        self.next_ping = self.now.checked_add(self.ping_interval);
        self.connected_at = Some(self.now);
        self.server_durable = Some(durable);
        self.set_status(Phase::Connected);
        self.events.push_back(ClientEvent::Connected {
            session,
            version,
            compression,
            durable,
        });
        let names: Vec<Arc<str>> = self.docs.keys().cloned().collect();
        for name in names {
            let Some(d) = registry.get(&name) else {
                continue;
            };
            let version = d.version();
            let mut resume = None;
            if let Some(doc) = self.docs.get_mut(&name) {
                if doc.status == DocStatus::Refused {
                    continue;
                }
                doc.status = DocStatus::Opening;
                resume = doc
                    .transfer
                    .as_mut()
                    .filter(|t| !t.data.is_empty())
                    .map(|t| {
                        t.resumed = true;
                        Resume {
                            transfer: t.id,
                            offset: t.data.len() as u64,
                        }
                    });
            }
            self.send(&Message::Open {
                name: name.to_string(),
                version: Bytes(version),
                resume,
            });
        }
    }

    pub(super) fn on_pong(&mut self, echo: u64) {
        // `echo` is the peer's copy of our timestamp: anything may come back.
        let Some(sent) = self.epoch.checked_add(Duration::from_micros(echo)) else {
            return;
        };
        if let Some(sample) = self.now.checked_duration_since(sent) {
            self.stats.rtt = Some(match self.stats.rtt {
                None => sample,
                Some(srtt) => (srtt * 7 + sample) / 8,
            });
        }
    }
}
