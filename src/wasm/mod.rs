//! The client core in the browser (feature `wasm`, target
//! `wasm32-unknown-unknown`).
//!
//! [`WasmClient`] is a [`ClientSession`] syncing one JavaScript `Y.Doc`
//! (through a [`DocBridge`]). It does no I/O either: the JavaScript provider
//! in `web/src/provider.js` drives it with the browser's `WebSocket` and
//! timers, following the crate's driving contract. After every call it
//! drains [`WasmClient::poll_transmit`] (bytes for the socket) and
//! [`WasmClient::poll_event`] (plain objects with a `type` field), then arms
//! one timer for [`WasmClient::poll_timeout`] milliseconds. Time is read
//! here, from `performance.now()` ([`crate::time::Instant`]); randomness
//! (reconnect jitter) comes from the seed the provider takes from
//! `crypto.getRandomValues`.
//!
//! `#[wasm_bindgen]` expands to `unsafe` glue, so this module allows
//! `unsafe_code`; it writes none itself.
#![allow(unsafe_code)]

mod document;

use std::time::Duration;

use js_sys::{Array, Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;

pub use document::DocBridge;
use document::{JsDocument, OneDoc};

use crate::client::{
    AppTarget, Backoff, ClientConfig, ClientEvent, ClientSession, CommandError, Status,
};
use crate::time::Instant;
use crate::wire::SessionId;

/// A client session syncing one `Y.Doc`, driven from JavaScript.
#[wasm_bindgen]
pub struct WasmClient {
    session: ClientSession,
    docs: OneDoc,
}

fn command_error(e: CommandError) -> JsError {
    JsError::new(&e.to_string())
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Idle => "idle",
        Status::Connecting => "connecting",
        Status::Connected => "connected",
        Status::Reconnecting => "reconnecting",
        Status::Disconnected => "disconnected",
        Status::Closed => "closed",
    }
}

/// A plain object from `(key, value)` pairs.
fn object(fields: &[(&str, JsValue)]) -> JsValue {
    let o = Object::new();
    for (k, v) in fields {
        // Setting a property on a fresh plain object cannot fail.
        let _ = Reflect::set(&o, &JsValue::from_str(k), v);
    }
    o.into()
}

fn bytes(b: &[u8]) -> JsValue {
    Uint8Array::from(b).into()
}

/// Session ids travel to JavaScript as decimal strings (they are 64-bit).
fn session_js(s: SessionId) -> JsValue {
    JsValue::from_str(&s.0.to_string())
}

fn event_js(event: ClientEvent) -> JsValue {
    match event {
        ClientEvent::Status(s) => {
            object(&[("type", "status".into()), ("status", status_name(s).into())])
        }
        ClientEvent::Connected {
            session, durable, ..
        } => object(&[
            ("type", "connected".into()),
            ("session", session_js(session)),
            ("durable", durable.into()),
        ]),
        ClientEvent::DocumentOpened { access, .. } => object(&[
            ("type", "opened".into()),
            ("access", format!("{access:?}").into()),
        ]),
        ClientEvent::Synced { .. } => object(&[("type", "synced".into())]),
        ClientEvent::RemoteUpdate { .. } => object(&[("type", "remote".into())]),
        ClientEvent::Acknowledged {
            applied, durable, ..
        } => object(&[
            ("type", "ack".into()),
            // Sequence numbers stay below 2^53 (one per local edit).
            ("applied", (applied as f64).into()),
            ("durable", (durable as f64).into()),
        ]),
        ClientEvent::DocumentError { code, message, .. } => object(&[
            ("type", "error".into()),
            ("code", format!("{code:?}").into()),
            ("message", message.into()),
        ]),
        ClientEvent::UpdatesRejected {
            first_seq,
            last_seq,
            code,
            ..
        } => object(&[
            ("type", "error".into()),
            ("code", format!("{code:?}").into()),
            (
                "message",
                format!("updates {first_seq}..={last_seq} rejected").into(),
            ),
        ]),
        ClientEvent::Closed { cause } => object(&[
            ("type", "closed".into()),
            ("reason", cause.to_string().into()),
        ]),
        ClientEvent::PresenceChanged {
            session,
            identity,
            state,
            ..
        } => object(&[
            ("type", "presence".into()),
            ("session", session_js(session)),
            ("identity", identity.into()),
            ("state", state.map_or(JsValue::NULL, |s| bytes(&s.0))),
        ]),
        ClientEvent::AppMessage {
            kind, from, data, ..
        } => object(&[
            ("type", "app".into()),
            ("kind", kind.into()),
            ("from", from.map_or(JsValue::NULL, session_js)),
            ("data", bytes(&data)),
        ]),
        ClientEvent::Dial { attempt } => {
            object(&[("type", "dial".into()), ("attempt", attempt.into())])
        }
        ClientEvent::GaveUp { attempts } => {
            object(&[("type", "gaveup".into()), ("attempts", attempts.into())])
        }
    }
}

#[wasm_bindgen]
impl WasmClient {
    /// A session syncing the document `name` held by `doc`. `seed` (8
    /// bytes, from `crypto.getRandomValues`) drives the reconnect jitter;
    /// reconnect delays run from `min_delay_ms` to `max_delay_ms`.
    #[wasm_bindgen(constructor)]
    pub fn new(
        name: String,
        doc: DocBridge,
        peer: String,
        token: Vec<u8>,
        seed: &[u8],
        min_delay_ms: u32,
        max_delay_ms: u32,
    ) -> Result<WasmClient, JsError> {
        let mut seed_bytes = [0u8; 8];
        for (d, s) in seed_bytes.iter_mut().zip(seed) {
            *d = *s;
        }
        let config = ClientConfig {
            peer,
            token,
            seed: u64::from_le_bytes(seed_bytes),
            reconnect: Some(Backoff {
                min: Duration::from_millis(min_delay_ms.into()),
                max: Duration::from_millis(max_delay_ms.max(min_delay_ms).into()),
                ..Backoff::default()
            }),
            ..ClientConfig::default()
        };
        let now = Instant::now();
        let mut session = ClientSession::new(config, now);
        let mut docs = OneDoc {
            name: name.clone(),
            doc: JsDocument::new(doc),
        };
        session.open(&mut docs, &name, now).map_err(command_error)?;
        Ok(WasmClient { session, docs })
    }

    /// The socket opened: starts the handshake.
    pub fn connect(&mut self) {
        self.session.connect(Instant::now());
    }

    /// The socket closed or failed after it had opened.
    #[wasm_bindgen(js_name = transportLost)]
    pub fn transport_lost(&mut self) {
        self.session.transport_lost(Instant::now());
    }

    /// The socket asked for by a `dial` event, or the first socket, never
    /// opened: schedules the next attempt (with backoff and jitter).
    #[wasm_bindgen(js_name = dialFailed)]
    pub fn dial_failed(&mut self) {
        let now = Instant::now();
        if self.session.status() == Status::Idle {
            // The session only schedules redials after a lost connection; a
            // first socket that never opened counts as one.
            self.session.connect(now);
            self.session.transport_lost(now);
        } else {
            self.session.dial_failed(now);
        }
    }

    /// One WebSocket message from the server.
    #[wasm_bindgen(js_name = handleInput)]
    pub fn handle_input(&mut self, data: &[u8]) {
        self.session
            .handle_input(Instant::now(), data, &mut self.docs);
    }

    /// The timer armed for [`WasmClient::poll_timeout`] fired (early or
    /// spurious calls do nothing).
    #[wasm_bindgen(js_name = handleTimeout)]
    pub fn handle_timeout(&mut self) {
        self.session.handle_timeout(Instant::now());
    }

    /// Milliseconds until [`WasmClient::handle_timeout`] is due, or
    /// `undefined` when nothing is scheduled.
    #[wasm_bindgen(js_name = pollTimeout)]
    pub fn poll_timeout(&self) -> Option<f64> {
        let at = self.session.poll_timeout()?;
        Some(at.saturating_duration_since(Instant::now()).as_secs_f64() * 1000.0)
    }

    /// The next message for the socket, or `undefined`.
    #[wasm_bindgen(js_name = pollTransmit)]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.session.poll_transmit()
    }

    /// The next event (an object with a `type` field), or `undefined`.
    #[wasm_bindgen(js_name = pollEvent)]
    pub fn poll_event(&mut self) -> JsValue {
        self.session
            .poll_event()
            .map_or(JsValue::UNDEFINED, event_js)
    }

    /// Sends the local edits recorded since the last call (queued while
    /// offline). Returns the update's sequence number, or `undefined` when
    /// there was nothing to send; throws on backpressure.
    #[wasm_bindgen(js_name = flushLocal)]
    pub fn flush_local(&mut self) -> Result<Option<f64>, JsError> {
        let name = self.docs.name.clone();
        self.session
            .flush_local(&mut self.docs, &name, Instant::now())
            .map(|seq| seq.map(|s| s as f64))
            .map_err(command_error)
    }

    /// Local updates not yet acknowledged by the server.
    #[wasm_bindgen(getter)]
    pub fn unacknowledged(&self) -> usize {
        self.session.unacknowledged(&self.docs.name)
    }

    /// Bytes queued for the socket.
    #[wasm_bindgen(js_name = queuedBytes, getter)]
    pub fn queued_bytes(&self) -> usize {
        self.session.queued_bytes()
    }

    /// Whether the server said it stores updates durably (`undefined` before
    /// the first handshake).
    #[wasm_bindgen(js_name = serverDurable, getter)]
    pub fn server_durable(&self) -> Option<bool> {
        self.session.server_durable()
    }

    /// The session id the server gave this connection, as a decimal string.
    #[wasm_bindgen(js_name = sessionId, getter)]
    pub fn session_id(&self) -> Option<String> {
        self.session.session_id().map(|s| s.0.to_string())
    }

    /// Round-trip time in milliseconds (from pings), if measured.
    #[wasm_bindgen(getter)]
    pub fn rtt(&self) -> Option<f64> {
        self.session.stats().rtt.map(|d| d.as_secs_f64() * 1000.0)
    }

    /// Sets (or, with `undefined`, clears) this client's presence state.
    #[wasm_bindgen(js_name = setPresence)]
    pub fn set_presence(&mut self, state: Option<Vec<u8>>) -> Result<(), JsError> {
        let name = self.docs.name.clone();
        self.session
            .set_presence(&name, state, Instant::now())
            .map_err(command_error)
    }

    /// Everyone else's presence: an array of `{session, identity, state}`.
    pub fn presence(&self) -> Array {
        self.session
            .presence(&self.docs.name)
            .into_iter()
            .map(|(session, peer)| {
                object(&[
                    ("session", session_js(session)),
                    ("identity", peer.identity.into()),
                    ("state", bytes(&peer.state.0)),
                ])
            })
            .collect()
    }

    /// Sends an application message of `kind` to the document's other
    /// subscribers (`to` undefined), or to one session (`to`, a session id
    /// string); throws when not connected.
    #[wasm_bindgen(js_name = sendApp)]
    pub fn send_app(
        &mut self,
        kind: u32,
        data: Vec<u8>,
        to: Option<String>,
    ) -> Result<(), JsError> {
        let target = match to {
            Some(s) => AppTarget::Session(SessionId(
                s.parse()
                    .map_err(|_| JsError::new("session ids are decimal"))?,
            )),
            None => AppTarget::Document(self.docs.name.clone()),
        };
        self.session
            .send_app(target, kind, data)
            .map_err(command_error)
    }

    /// Ends the connection and cancels reconnection (a `Close` is queued for
    /// the server); [`WasmClient::connect`] starts again after a new socket.
    pub fn disconnect(&mut self) {
        self.session.disconnect(Instant::now());
    }

    /// Closes the session for good.
    pub fn close(&mut self) {
        self.session.close(Instant::now());
    }
}
