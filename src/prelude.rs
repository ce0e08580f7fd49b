//! The names most applications need, in one import:
//! `use crdt_socket_sync::prelude::*;`.
//!
//! It brings the sessions and their configuration and events, the
//! [`Document`] and [`Registry`] traits (so their methods can be called),
//! [`MemoryRegistry`], the server's authorizers, and, with their features,
//! the adapters, the SQLite registry, the WebSocket client and server, and
//! the axum route. Runtime-specific `connect` functions stay in
//! `transport::tokio` and `transport::smol`; `WebSocketClient::connect`
//! is the tokio one.
//!
//! The README's three integrations (an axum endpoint with SQLite, a tokio
//! client that edits and awaits durability, a hand-written
//! [`ClientSession`] loop) are `examples/quickstart_*.rs`, built with this
//! prelude.

pub use crate::client::{
    Backoff, ClientConfig, ClientEvent, ClientSession, CommandError, DocStatus, Status,
};
pub use crate::document::{ApplyOutcome, Document, DocumentError};
pub use crate::registry::{MemoryRegistry, OpenPolicy, Registry, RegistryError};
pub use crate::server::{AllowAll, Authorizer, Hub, ServerConfig, ServerEvent, StaticTokens};
pub use crate::wire::Access;
pub use crate::{CloseCause, Framing, Limits, Output};

#[cfg(feature = "automerge")]
pub use crate::adapters::automerge::AutomergeDocument;
#[cfg(feature = "loro")]
pub use crate::adapters::loro::LoroDocument;
#[cfg(feature = "yrs")]
pub use crate::adapters::yrs::YrsDocument;
#[cfg(feature = "sqlite")]
pub use crate::store::SqliteRegistry;
#[cfg(feature = "axum")]
pub use crate::transport::axum::sync_route;
#[cfg(any(feature = "tokio", feature = "smol"))]
pub use crate::transport::{ClientError, ClientEvents, ClientOptions, Edit, WebSocketClient};
#[cfg(feature = "tokio")]
pub use crate::transport::{
    HubHandle, HubService, ServerError, ServerOptions, TransportEvent, tokio::WebSocketServer,
};
