//! Storage behind the server: durable registries and relay logs.
//!
//! - With the `sqlite` feature, `SqliteRegistry`: a durable
//!   [`Registry`](crate::registry::Registry) for CRDT-aware mode, in one
//!   embedded SQLite file.
//! - With the `unstable-relay` feature, `RelayStore`: what relay mode (the
//!   server that never parses CRDT data) needs from storage: per room, an
//!   append-only log of opaque blobs with monotonic sequence numbers and the
//!   latest snapshot, which replaces the log up to the sequence number it
//!   covers. `MemoryRelayStore` keeps it in memory and, with `sqlite`,
//!   `SqliteRelayStore` in a SQLite file. Relay mode is not served yet, so
//!   this API may change in a minor release.
//!
//! Durable stores stage writes in memory and commit them in one transaction
//! per `flush` (group commit): the server acknowledges an update as
//! `durable` only after the flush that covers it returned `Ok(true)`. The
//! SQLite registry also commits without blocking the server
//! ([`Registry::commit`](crate::registry::Registry::commit)): a committer
//! thread writes, and the `durable` acknowledgement goes out once
//! [`Registry::poll_commit`](crate::registry::Registry::poll_commit)
//! reports the commit on disk.

#[cfg(feature = "unstable-relay")]
mod relay;
#[cfg(feature = "unstable-relay")]
pub use relay::{
    MAX_ROOM_NAME, MemoryRelayStore, RelayEntry, RelaySnapshot, RelayStore, RelayStoreError,
};

#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(all(feature = "sqlite", feature = "unstable-relay"))]
pub use sqlite::SqliteRelayStore;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteConfig, SqliteRegistry, SqliteStats, Synchronous};
