//! Presence (awareness) states and application messages.

use super::*;

impl ClientSession {
    /// Sets (or, with `None`, clears) this client's presence state in
    /// document `name`: a cursor, a selection, a user name... It reaches the
    /// other subscribers at most every `presence_throttle` (the latest state
    /// always goes out), is renewed before the server expires it, and is
    /// re-published after a reconnect. It is never persisted.
    pub fn set_presence(
        &mut self,
        name: &str,
        state: Option<Vec<u8>>,
        now: Instant,
    ) -> Result<(), CommandError> {
        self.tick(now);
        let limit = self.config.limits.max_presence_len;
        if let Some(s) = &state
            && s.len() > limit
        {
            return Err(CommandError::LimitExceeded(format!(
                "presence state of {} bytes exceeds {limit}",
                s.len()
            )));
        }
        let doc = self
            .docs
            .get_mut(name)
            .ok_or_else(|| CommandError::UnknownDocument(name.to_string()))?;
        doc.presence.set(state.map(Bytes));
        self.flush_presence();
        Ok(())
    }

    /// Everyone else's presence in document `name`, by session.
    pub fn presence(&self, name: &str) -> Vec<(SessionId, Peer)> {
        self.docs.get(name).map_or_else(Vec::new, |d| {
            d.presence
                .peers
                .iter()
                .map(|(s, (_, p))| (*s, p.clone()))
                .collect()
        })
    }

    /// Sends an application message (needs a live connection).
    pub fn send_app(
        &mut self,
        target: AppTarget,
        kind: u32,
        data: Vec<u8>,
    ) -> Result<(), CommandError> {
        if self.phase != Phase::Connected {
            return Err(CommandError::NotConnected);
        }
        let limit = self.config.limits.max_app_message_len;
        if data.len() > limit {
            return Err(CommandError::LimitExceeded(format!(
                "application message of {} bytes exceeds {limit}",
                data.len()
            )));
        }
        let route = match target {
            AppTarget::Server => Route::Server,
            AppTarget::Session(s) => Route::Session(s),
            AppTarget::Document(name) => {
                let handle = self
                    .docs
                    .get(name.as_str())
                    .and_then(|d| d.handle)
                    .ok_or(CommandError::UnknownDocument(name))?;
                Route::Document(handle)
            }
        };
        let msg = Message::App {
            kind,
            route,
            from: None,
            data: Bytes(data),
        };
        self.outbound
            .push(&msg, Priority::Data)
            .map_err(|_| CommandError::SendQueueFull {
                queued: self.outbound.bytes(),
                limit: self.config.limits.max_outbound_bytes,
            })
    }

    /// Sends every due presence change or renewal.
    pub(super) fn flush_presence(&mut self) {
        if self.phase != Phase::Connected {
            return;
        }
        let (now, throttle, renew) = (
            self.now,
            self.config.presence_throttle,
            self.config.presence_renew,
        );
        let mut out = Vec::new();
        for doc in self.docs.values_mut() {
            let Some(handle) = doc.handle else {
                continue;
            };
            let p = &mut doc.presence;
            if p.next_send(now, throttle, renew).is_some_and(|t| t <= now) {
                if !p.dirty && p.local.is_none() {
                    continue;
                }
                out.push(Message::AwarenessSet {
                    doc: handle,
                    clock: p.clock,
                    state: p.local.clone(),
                });
                p.dirty = false;
                p.last_sent = Some(now);
            }
        }
        for m in out {
            self.send(&m);
        }
    }

    pub(super) fn next_presence_send(&self) -> Option<Instant> {
        if self.phase != Phase::Connected {
            return None;
        }
        let (throttle, renew) = (self.config.presence_throttle, self.config.presence_renew);
        self.docs
            .values()
            .filter(|d| d.handle.is_some())
            .filter_map(|d| d.presence.next_send(self.now, throttle, renew))
            .min()
    }

    pub(super) fn on_awareness(&mut self, handle: DocId, entries: Vec<AwarenessEntry>) {
        let own = self.session;
        let limits = &self.config.limits;
        let (max_states, max_len) = (limits.max_presence_states, limits.max_presence_len);
        let Some(doc) = self.doc_by_handle(handle) else {
            return;
        };
        let name = Arc::clone(&doc.name);
        for e in doc.presence.apply(own, entries, max_states, max_len) {
            self.events.push_back(ClientEvent::PresenceChanged {
                name: Arc::clone(&name),
                session: e.session,
                identity: e.identity,
                state: e.state,
            });
        }
    }
}
