//! # crdt-socket-sync
//!
//! A sans-IO protocol that keeps CRDT documents in sync between many clients
//! and a server, in real time and across disconnects.
//!
//! - [`client::ClientSession`]: one connection from a client, carrying many
//!   documents, outliving its transports (offline edits wait in an outbox
//!   until the server acknowledges them).
//! - [`server::Hub`]: the server's sessions ([`server::ServerSession`]),
//!   the document directory and the fan-out between them.
//! - [`document::Document`] and [`registry::Registry`]: the CRDT and the set
//!   of documents, behind traits, borrowed per call. Adapters for yrs, loro
//!   and automerge are cargo features.
//! - `transport` (features `tokio`, `smol`, `axum`, `tls`): where most
//!   applications start. A WebSocket server (`transport::tokio::WebSocketServer`,
//!   or an axum route) and WebSocket clients (`transport::WebSocketClient`)
//!   around the core, which move bytes, read the clock and arm timers.
//! - `store` (features `sqlite`, `unstable-relay`): storage behind the
//!   server: a durable SQLite registry, and relay-mode logs.
//! - [`wire`]: the messages and the frame codec (postcard bodies, a CRC32
//!   over every frame, bounded deflate, batching).
//!
//! The core performs no I/O and reads no clock: time enters as `now:
//! Instant`, randomness comes from a seed in the config, and every queue is
//! bounded by [`Limits`].
//!
//! ## The driving contract
//!
//! 1. After every mutation (`handle_input`, `handle_timeout`, a command such
//!    as `open` or `flush_local`): drain `poll_transmit` until `None` and
//!    send the frames, then drain `poll_event` until `None`, then read
//!    `poll_timeout()` and arm your timer for it. (`poll_output` does all
//!    three in one loop.)
//! 2. `handle_timeout(now)` may be called early or spuriously; it then does
//!    nothing.
//! 3. `now` never goes backwards for a session: the core clamps it, and never
//!    panics on `Instant` arithmetic.
//! 4. When `wants_input()` is `false`, the session's send queue is over its
//!    high-water mark: stop reading the socket until you drained transmits.
//! 5. On the server, input is applied and fanned out at once, but its
//!    acknowledgements wait for a commit: after a batch of inputs call
//!    [`server::Hub::commit`] (it hands the writes to the registry without
//!    waiting for the disk and queues the `Ack`s), and call
//!    [`server::Hub::poll_commits`] when the registry's commit waker fires
//!    (or once per loop) for the `durable` ones. A loop that never commits
//!    sends no `Ack`s, and clients keep resending what they sent.
//! 6. A connection's `Closed` event (client) or `ClientDisconnected` event
//!    (server) arrives exactly once; drain the remaining transmits (a
//!    `Close` frame), then close the transport. A client session can then
//!    `connect` again with a new transport; on the server call
//!    [`server::Hub::connection_lost`] once the socket is gone.
//!
//! ## A complete loop
//!
//! One hub and one client in memory, with a tiny grow-only-set CRDT standing
//! in for yrs/loro/automerge:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use crdt_socket_sync::client::{ClientConfig, ClientSession, ClientEvent};
//! use crdt_socket_sync::document::{ApplyOutcome, Document, DocumentError};
//! use crdt_socket_sync::registry::{MemoryRegistry, Registry};
//! use crdt_socket_sync::server::{AllowAll, Hub, ServerConfig};
//!
//! /// A grow-only set of bytes, enough CRDT for the example.
//! #[derive(Default)]
//! struct GSet { items: std::collections::BTreeSet<u8>, unsent: Vec<u8> }
//! impl GSet { fn add(&mut self, b: u8) { self.items.insert(b); self.unsent.push(b); } }
//! impl Document for GSet {
//!     fn version(&self) -> Vec<u8> { self.items.iter().copied().collect() }
//!     fn delta_since(&self, v: &[u8]) -> Result<Vec<u8>, DocumentError> {
//!         Ok(self.items.iter().copied().filter(|b| !v.contains(b)).collect())
//!     }
//!     fn apply(&mut self, u: &[u8]) -> ApplyOutcome {
//!         let n = self.items.len();
//!         self.items.extend(u.iter().copied());
//!         if self.items.len() > n { ApplyOutcome::Applied } else { ApplyOutcome::Duplicate }
//!     }
//!     fn snapshot(&self) -> Vec<u8> { self.version() }
//!     fn load_snapshot(&mut self, s: &[u8]) -> Result<(), DocumentError> { self.apply(s); Ok(()) }
//!     fn take_local_update(&mut self) -> Option<Vec<u8>> {
//!         (!self.unsent.is_empty()).then(|| std::mem::take(&mut self.unsent))
//!     }
//! }
//!
//! let mut now = Instant::now();
//! let mut server_docs = MemoryRegistry::new(|_: &str| GSet::default());
//! let mut hub = Hub::new(ServerConfig::default(), AllowAll);
//!
//! let mut client_docs = MemoryRegistry::new(|_: &str| GSet::default());
//! let mut client = ClientSession::new(ClientConfig { peer: "alice".into(), ..Default::default() }, now);
//!
//! // The transport is up (in real code: a WebSocket or TCP connection).
//! let conn = hub.accept(now);
//! client.connect(now);
//! client.open(&mut client_docs, "notes", now).unwrap();
//! client_docs.open("notes").unwrap().add(42); // edit with the CRDT's own API
//! client.flush_local(&mut client_docs, "notes", now).unwrap();
//!
//! let mut synced = false;
//! for _ in 0..20 {
//!     // 1. drain transmits, delivering them to the other side
//!     while let Some(frame) = client.poll_transmit() {
//!         hub.handle_input(conn, now, &frame, &mut server_docs);
//!     }
//!     // one commit per batch of input: it queues the acknowledgements
//!     hub.commit(&mut server_docs);
//!     hub.poll_commits(&mut server_docs);
//!     while let Some((_conn, frame)) = hub.poll_transmit() {
//!         client.handle_input(now, &frame, &mut client_docs);
//!     }
//!     // 2. drain events
//!     while let Some(event) = client.poll_event() {
//!         if matches!(event, ClientEvent::Synced { .. }) { synced = true; }
//!     }
//!     while hub.poll_event().is_some() {}
//!     // 3. sleep until the next deadline (here: jump the virtual clock)
//!     if let Some(deadline) = client.poll_timeout() {
//!         now = now.max(deadline.min(now + Duration::from_millis(100)));
//!         client.handle_timeout(now);
//!         hub.handle_timeout(now, &mut server_docs);
//!     }
//! }
//! assert!(synced);
//! assert!(server_docs.get("notes").unwrap().items.contains(&42));
//! assert_eq!(client.unacknowledged("notes"), 0);
//! ```
//!
//! ## Cargo features
//!
//! | feature | what it adds |
//! |---|---|
//! | `arbitrary` | `arbitrary::Arbitrary` for the wire types (fuzzing) |
//! | `sim` | `sim`: the deterministic network simulator used by tests, fuzzing and benches (implies `testing`) |
//! | `testing` | `testing`: `OpLog`, a minimal CRDT, and the cost-model `Budget`; `wire::frame` and `wire::compress` internals for crafting frames. For tests, not applications |
//! | `fuzzing` | `fuzzing`: the bodies of the cargo-fuzz targets (implies `testing`) |
//! | `unstable-relay` | `store::RelayStore`, `store::MemoryRelayStore` and, with `sqlite`, `store::SqliteRelayStore`: relay-mode storage, not served yet, may change in a minor release |
//! | `yrs` | `adapters::yrs::YrsDocument`, a [`document::Document`] over a yrs `Doc` |
//! | `yrs` (also) | `ywebsocket`: y-websocket's protocol translated for the hub, so Yjs apps connect unchanged (served by the tokio server on `ServerOptions::yjs_path`) |
//! | `loro` | `adapters::loro::LoroDocument`, over a `loro::LoroDoc` |
//! | `automerge` | `adapters::automerge::AutomergeDocument`, over an `automerge::Automerge` (Rust ≥ 1.90) |
//! | `conformance` | `conformance`, the suite every `Document` implementation must pass |
//! | `tokio` | `transport::tokio`: `WebSocketServer` and a WebSocket client on tokio (tokio-tungstenite), logging with `tracing` |
//! | `tls` (alias `rustls`) | `wss://` in the clients through rustls (webpki roots, or `ClientOptions::tls`), TLS termination in the tokio server (`ServerOptions::tls`, tokio-rustls); no OpenSSL |
//! | `smol` | `transport::smol`: the WebSocket client on smol (async-tungstenite) |
//! | `axum` | `transport::axum`: mount the sync endpoint on an axum route (implies `tokio`) |
//! | `sqlite` | `store::SqliteRegistry`: durable storage in an embedded SQLite file (bundled; Rust ≥ 1.89) |
//! | `wasm` | `wasm::WasmClient` on `wasm32-unknown-unknown` only: the client session for the browser's JavaScript provider (`web/`); compiles nothing natively |
// The core has no unsafe code. The browser bindings (`wasm`, built for
// wasm32 only) are generated by `#[wasm_bindgen]`, whose expansion contains
// `unsafe` blocks; that one module allows them, everything else denies them.
#![cfg_attr(
    not(all(feature = "wasm", target_arch = "wasm32")),
    forbid(unsafe_code)
)]
#![cfg_attr(all(feature = "wasm", target_arch = "wasm32"), deny(unsafe_code))]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(feature = "yrs", feature = "loro", feature = "automerge"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "yrs", feature = "loro", feature = "automerge")))
)]
pub mod adapters;
pub mod awareness;
pub mod client;
mod close;
#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;
pub mod document;
#[cfg(feature = "fuzzing")]
#[cfg_attr(docsrs, doc(cfg(feature = "fuzzing")))]
pub mod fuzzing;
mod inbound;
mod limits;
mod outbound;
pub mod prelude;
pub mod registry;
pub mod rng;
pub mod server;
#[cfg(feature = "sim")]
#[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
pub mod sim;
#[cfg(any(feature = "sqlite", feature = "unstable-relay"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "sqlite", feature = "unstable-relay"))))]
pub mod store;
#[cfg(any(test, feature = "testing"))]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
pub mod time;
#[cfg(any(feature = "tokio", feature = "smol"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "tokio", feature = "smol"))))]
pub mod transport;
#[cfg(all(feature = "wasm", target_arch = "wasm32"))]
pub mod wasm;
pub mod wire;
#[cfg(feature = "yrs")]
#[cfg_attr(docsrs, doc(cfg(feature = "yrs")))]
pub mod ywebsocket;

pub use close::CloseCause;
pub use inbound::{Framing, InboundError};
pub use limits::Limits;

/// One output of a session, for callers that prefer a single `poll_output`
/// loop to the separate `poll_transmit` / `poll_event` / `poll_timeout`.
///
/// Exhaustive: these three are everything a session can ask of its driver
/// (new kinds of events are variants of `E`, not of `Output`), so a
/// `match` needs no wildcard arm. `poll_output` returns `None` when nothing
/// is queued and no timer is armed.
///
/// ```
/// use std::time::Instant;
/// use crdt_socket_sync::client::{ClientConfig, ClientSession};
///
/// let now = Instant::now();
/// let mut client = ClientSession::new(ClientConfig::default(), now);
/// client.connect(now);
/// let mut frames = Vec::new();
/// while let Some(output) = client.poll_output() {
///     match output {
///         crdt_socket_sync::Output::Transmit(frame) => frames.push(frame),
///         crdt_socket_sync::Output::Event(event) => println!("{event:?}"),
///         crdt_socket_sync::Output::Timeout(at) => {
///             assert!(at >= now); // arm the timer, then wait for input
///             break;
///         }
///     }
/// }
/// assert!(!frames.is_empty()); // the `Hello`
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<T, E> {
    /// Bytes to send.
    Transmit(T),
    /// Something happened.
    Event(E),
    /// Nothing else to do until this instant (or new input).
    Timeout(crate::time::Instant),
}
