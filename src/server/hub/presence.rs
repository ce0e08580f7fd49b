//! Presence and application messages on the hub: both ride the same
//! sessions as document traffic, are bounded in size and rate per session,
//! and never touch the registry.

use crate::time::Instant;
use std::sync::Arc;

use crate::awareness::PresenceError;
use crate::outbound::{Priority, encode_shared};
use crate::wire::{AwarenessEntry, Bytes, DocId, ErrorCode, Message, Route, SessionId};

use super::{Authorizer, ConnId, DocIndex, Hub, ServerEvent, high_water};

/// Bytes of presence states per `Awareness` message of a snapshot, about:
/// each piece fits a default frame, and a joiner with little room gets
/// some states rather than none.
const PRESENCE_PIECE: usize = 16 << 10;

/// An application message as the server's hook sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppMessage<'a> {
    /// The sending connection.
    pub conn: ConnId,
    /// The sending session.
    pub from: SessionId,
    /// The sender's authenticated identity.
    pub identity: &'a str,
    /// Application-defined kind.
    pub kind: u32,
    /// Where the client addressed it.
    pub route: Route,
    /// The payload.
    pub data: &'a [u8],
}

/// What the hook decides for an application message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AppVerdict {
    /// Deliver as sent.
    Forward,
    /// Deliver this payload instead.
    Replace(Vec<u8>),
    /// Do not deliver.
    Drop,
}

/// The server-side hook that accepts, transforms or drops each
/// application message (see [`Hub::set_app_hook`]).
pub type AppHook = Box<dyn FnMut(&AppMessage<'_>) -> AppVerdict + Send>;

impl<A: Authorizer> Hub<A> {
    /// Installs the hook consulted for every application message before it is
    /// delivered (or reported, for [`Route::Server`]). Without a hook every
    /// message is forwarded.
    ///
    /// ```
    /// use crdt_socket_sync::server::{AllowAll, AppVerdict, Hub, ServerConfig};
    /// let mut hub = Hub::new(ServerConfig::default(), AllowAll);
    /// // Drop kind 13, upper-case kind 1, forward the rest.
    /// hub.set_app_hook(Box::new(|m| match m.kind {
    ///     13 => AppVerdict::Drop,
    ///     1 => AppVerdict::Replace(m.data.to_ascii_uppercase()),
    ///     _ => AppVerdict::Forward,
    /// }));
    /// ```
    pub fn set_app_hook(&mut self, hook: AppHook) {
        self.app_hook = Some(hook);
    }

    /// Sends an application message from the server to one connection.
    /// Like every application message it is dropped when the connection's
    /// queue is past its high-water mark (half `max_outbound_bytes`):
    /// returns whether it was queued.
    pub fn send_app(&mut self, conn: ConnId, kind: u32, data: Vec<u8>) -> bool {
        let Some(session) = self.sessions.get(&conn).map(|s| s.session) else {
            return false;
        };
        self.send_ephemeral(
            conn,
            &Message::App {
                kind,
                route: Route::Session(session),
                from: None,
                data: Bytes(data),
            },
        )
    }

    /// Sends an application message from the server to every subscriber of
    /// document `name`. Subscribers whose queue is past its high-water mark
    /// miss it: returns how many did.
    pub fn broadcast_app(&mut self, name: &str, kind: u32, data: Vec<u8>) -> usize {
        let Some(index) = self.directory.index(name) else {
            return 0;
        };
        let data = Bytes(data);
        self.share(index, None, |doc| {
            encode_shared(&Message::App {
                kind,
                route: Route::Document(doc),
                from: None,
                data: data.clone(),
            })
        })
    }

    /// Current presence states of document `name`.
    pub fn presence(&self, name: &str) -> Vec<AwarenessEntry> {
        self.directory
            .index(name)
            .map_or_else(Vec::new, |index| self.presence.states(index.key()))
    }

    /// Queues a message for every subscriber of the document at `index`
    /// but `except`, encoded by `encode` once per distinct handle among
    /// them; returns how many missed it. Presence and app traffic is
    /// ephemeral: a subscriber that is lagging or past its high-water mark
    /// misses it (a lagging one gets a fresh presence snapshot with its
    /// catch-up), so it never crowds out what a session may not miss.
    fn share(
        &mut self,
        index: DocIndex,
        except: Option<ConnId>,
        encode: impl Fn(DocId) -> Arc<[u8]>,
    ) -> usize {
        let Some(entry) = self.directory.get(index) else {
            return 0;
        };
        let mut missed = 0;
        for (doc, run) in entry.subscribers.runs() {
            if run.iter().all(|(_, c)| Some(*c) == except) {
                continue;
            }
            let encoded = encode(doc);
            for &(_, conn) in run {
                if Some(conn) == except {
                    continue;
                }
                let Some(s) = self.sessions.get_mut(&conn) else {
                    continue;
                };
                if s.docs.get(&doc).is_some_and(|sub| sub.is_lagging()) {
                    missed += 1;
                    continue;
                }
                let queued =
                    s.outbound
                        .push_shared_with(&encoded, Priority::Ephemeral, &self.common);
                if queued.is_ok() {
                    self.marks.ready(s);
                } else {
                    missed += 1;
                }
            }
        }
        missed
    }

    pub(super) fn share_presence(
        &mut self,
        index: DocIndex,
        except: Option<ConnId>,
        entries: Vec<AwarenessEntry>,
    ) {
        if entries.is_empty() {
            return;
        }
        self.share(index, except, |doc| {
            encode_shared(&Message::Awareness {
                doc,
                entries: entries.clone(),
            })
        });
    }

    /// Sends `conn` the presence states of its document `doc` (on join and
    /// catch-up), as many as fit below its high-water mark, in pieces of
    /// about [`PRESENCE_PIECE`] bytes: a queue never passes its bound for
    /// them, and only what fits is copied.
    pub(super) fn send_presence_snapshot(&mut self, conn: ConnId, doc: DocId) {
        let Some(s) = self.sessions.get(&conn) else {
            return;
        };
        let Some(index) = s.docs.get(&doc).map(|sub| sub.index) else {
            return;
        };
        let room = high_water(&self.config.limits).saturating_sub(s.outbound.bytes());
        for entries in self.presence.snapshot(index.key(), PRESENCE_PIECE, room) {
            if !self.send_ephemeral(conn, &Message::Awareness { doc, entries }) {
                return;
            }
        }
    }

    pub(super) fn expire_presence(&mut self, now: Instant) {
        for (key, leave) in self.presence.expire(now) {
            self.share_presence(DocIndex::from_key(key), None, vec![leave]);
        }
    }

    pub(super) fn on_presence(
        &mut self,
        conn: ConnId,
        doc: DocId,
        clock: u32,
        state: Option<Bytes>,
    ) {
        let Some(now) = self.now else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        let Some(index) = s.docs.get(&doc).map(|sub| sub.index) else {
            return self.unknown_doc(conn, doc);
        };
        let rate = &mut s.rates(&self.config.limits, now).presence;
        if !rate.allow(now) {
            let e = PresenceError::RateLimited {
                per_second: rate.per_second(),
            };
            return self.doc_error(
                conn,
                Some(doc),
                None,
                ErrorCode::LimitExceeded,
                e.to_string(),
            );
        }
        let session = s.session;
        let identity = s
            .identity
            .as_ref()
            .map(|i| i.name().to_string())
            .unwrap_or_default();
        match self
            .presence
            .set(index.key(), session, &identity, clock, state, now)
        {
            Ok(Some(delta)) => self.share_presence(index, Some(conn), vec![delta]),
            Ok(None) => {}
            Err(e) => self.doc_error(
                conn,
                Some(doc),
                None,
                ErrorCode::LimitExceeded,
                e.to_string(),
            ),
        }
    }

    pub(super) fn on_app(&mut self, conn: ConnId, kind: u32, route: Route, data: Bytes) {
        let Some(now) = self.now else {
            return;
        };
        let limit = self.config.limits.max_app_message_len;
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        let doc = match route {
            Route::Document(doc) => Some(doc),
            _ => None,
        };
        if data.len() > limit {
            let msg = format!(
                "application message of {} bytes exceeds {limit}",
                data.len()
            );
            return self.doc_error(conn, doc, None, ErrorCode::LimitExceeded, msg);
        }
        let rate = &mut s.rates(&self.config.limits, now).app;
        if !rate.allow(now) {
            let msg = format!(
                "more than {} application messages per second",
                rate.per_second()
            );
            return self.doc_error(conn, doc, None, ErrorCode::LimitExceeded, msg);
        }
        let index = match doc {
            Some(doc) => match s.docs.get(&doc) {
                Some(sub) => Some(sub.index),
                None => return self.unknown_doc(conn, doc),
            },
            None => None,
        };
        let from = s.session;
        let identity = s
            .identity
            .as_ref()
            .map(|i| i.name().to_string())
            .unwrap_or_default();
        // Resolved before the hook: a session `conn` may not reach is
        // unknown, whatever the hook would say.
        let to = match route {
            Route::Session(target) => match self.reachable(conn, target) {
                Some(to) => Some(to),
                None => {
                    let msg = format!("session {:#x} is not connected", target.0);
                    return self.doc_error(conn, None, None, ErrorCode::UnknownSession, msg);
                }
            },
            _ => None,
        };
        let verdict = match &mut self.app_hook {
            Some(hook) => hook(&AppMessage {
                conn,
                from,
                identity: &identity,
                kind,
                route,
                data: &data,
            }),
            None => AppVerdict::Forward,
        };
        let data = match verdict {
            AppVerdict::Forward => data,
            AppVerdict::Replace(d) => Bytes(d),
            AppVerdict::Drop => {
                self.events
                    .push_back(ServerEvent::AppMessageDropped { conn, kind });
                return;
            }
        };
        match route {
            Route::Server => {
                self.events.push_back(ServerEvent::AppMessage {
                    conn,
                    kind,
                    data: data.0,
                });
            }
            Route::Session(_) => {
                let Some(to) = to else {
                    return;
                };
                let msg = Message::App {
                    kind,
                    route,
                    from: Some(from),
                    data,
                };
                if !self.send_ephemeral(to, &msg) {
                    self.backpressure(conn, None, kind, 1);
                }
            }
            Route::Document(_) => {
                let Some(index) = index else {
                    return;
                };
                // Each recipient gets the route under its own handle.
                let missed = self.share(index, Some(conn), |doc| {
                    encode_shared(&Message::App {
                        kind,
                        route: Route::Document(doc),
                        from: Some(from),
                        data: data.clone(),
                    })
                });
                if missed > 0 {
                    self.backpressure(conn, doc, kind, missed);
                }
            }
        }
    }

    /// The connection behind session id `target`, if it shares an open
    /// document with `conn`. Any other session, connected or not, is
    /// unknown to `conn`: the answer tells it nothing about sessions it
    /// cannot already see (in presence, or as senders on its documents).
    fn reachable(&self, conn: ConnId, target: SessionId) -> Option<ConnId> {
        let to = self.by_session.get(&target).copied()?;
        let a = self.sessions.get(&conn)?;
        let b = self.sessions.get(&to)?;
        // Handles are per connection: compare the documents behind them.
        // At most `max_docs_per_connection` each: one sort, one search per
        // document of the other.
        let mut mine: Vec<DocIndex> = a.docs.values().map(|sub| sub.index).collect();
        mine.sort_unstable();
        if b.docs
            .values()
            .any(|sub| mine.binary_search(&sub.index).is_ok())
        {
            return Some(to);
        }
        None
    }

    /// Tells `conn` that its application message of `kind` did not reach
    /// `missed` recipients whose queues are full. At most one report per
    /// message, which the app rate limit bounds, and the report is itself
    /// ephemeral: a sender that does not read misses reports, never grows
    /// its queue past its high-water mark with them.
    fn backpressure(&mut self, conn: ConnId, doc: Option<DocId>, kind: u32, missed: usize) {
        let message = format!(
            "application message of kind {kind} not delivered to {missed} recipient(s): their queues are full"
        );
        self.report_error(conn, doc, None, ErrorCode::Backpressure, message, true);
    }
}
