//! Durable storage in one embedded SQLite file (feature `sqlite`).
//!
//! Both stores follow the same plan:
//!
//! - Writes are **staged in memory** (visible to reads at once) and written
//!   in **one transaction per flush** (group commit). A flush that fails
//!   rolls back and keeps everything staged, so the next flush retries it:
//!   the durable acknowledgement that finally covers an update is only sent
//!   after that update reached the disk.
//! - The registry writes on a **committer thread** of its own, so a server
//!   need not wait for the disk: [`Registry::commit`](crate::registry::Registry::commit) hands the staged writes
//!   over and returns at once, the thread writes everything handed over
//!   since its last transaction in one transaction (one fsync for many
//!   server batches under load) and reports completions through
//!   [`Registry::poll_commit`](crate::registry::Registry::poll_commit) and the commit waker. [`Registry::flush`](crate::registry::Registry::flush)
//!   hands over and waits. Documents with writes still on their way to the
//!   disk stay loaded, so a document loaded from the file never misses one.
//! - The file is in **WAL mode** with `synchronous=FULL` by default: a
//!   commit returns after the WAL is fsynced, so a committed update survives
//!   a process crash (`kill -9`) *and* a power loss. [`Synchronous::Normal`]
//!   skips the per-commit fsync: still safe against process crashes (the
//!   WAL is in the OS page cache), but a power loss may drop the last
//!   commits.
//! - The connection uses `locking_mode=EXCLUSIVE`: one process owns the
//!   file (a second server on the same file gets a typed error instead of
//!   corrupting the in-memory sequence counters), and the WAL needs no
//!   shared-memory file.
//! - Every SQLite failure (a file that is not a database, a read-only
//!   directory, a full disk, a quota) becomes a typed `Storage` error;
//!   nothing here panics on stored data.
//!
//! One concept per file: [`SqliteRegistry`] (`registry`: documents in
//! memory, staging, the `Registry` contract), its committer thread
//! (`committer`: the hand-over queue and the transactions), the file format
//! the registry writes (`journal`: schema, journal rows and their folding,
//! loading a document back) and `SqliteRelayStore` (`relay`, feature
//! `unstable-relay`). This file
//! holds what they share: the configuration, the counters and opening the
//! file.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

mod committer;
mod journal;
mod registry;
#[cfg(feature = "unstable-relay")]
mod relay;

pub use registry::SqliteRegistry;
#[cfg(feature = "unstable-relay")]
pub use relay::SqliteRelayStore;

/// Schema version written to `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

/// How SQLite syncs commits to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Synchronous {
    /// `synchronous=FULL`: every commit fsyncs the WAL. A durable ack
    /// survives process crashes and power loss.
    #[default]
    Full,
    /// `synchronous=NORMAL`: commits are not fsynced (the WAL is synced at
    /// checkpoints). A durable ack survives a process crash (`kill -9`), not
    /// a power loss or kernel panic.
    Normal,
}

/// Settings of [`SqliteRegistry`] and `SqliteRelayStore`.
///
/// ```
/// use crdt_socket_sync::store::{SqliteConfig, Synchronous};
/// let config = SqliteConfig { compact_after: 500, ..SqliteConfig::default() };
/// assert_eq!(config.synchronous, Synchronous::Full);
/// ```
#[derive(Clone, Debug)]
pub struct SqliteConfig {
    /// How commits reach the disk. Default [`Synchronous::Full`].
    pub synchronous: Synchronous,
    /// A document whose log holds this many updates since its snapshot,
    /// and at least as many bytes as that snapshot, is compacted (snapshot
    /// written, log truncated) at the next flush; the byte rule keeps the
    /// cost of snapshots proportional to the updates written. Default 1000.
    /// Documents holding updates with missing dependencies are compacted
    /// only once those arrive.
    pub compact_after: u64,
    /// Bytes that may wait staged or on their way to the disk (because
    /// commits keep failing) before new writes are refused with a `Storage`
    /// error. Default 64 MiB.
    pub max_staged_bytes: usize,
    /// Registry: bytes handed to the committer thread that no transaction
    /// has picked up yet. Past it, [`Registry::commit`](crate::registry::Registry::commit) waits until the
    /// running transaction ends, so a disk slower than the incoming updates
    /// slows the server down instead of growing this queue. Default 16 MiB.
    pub max_commit_queue_bytes: usize,
    /// Upper bound on the file size (SQLite `max_page_count`); writes past
    /// it fail like a full disk. Default `None` (no bound).
    pub max_size_bytes: Option<u64>,
    /// Open the file read-only (a read-only volume, a backup): documents
    /// load; nothing is ever made durable, so every flush that has
    /// something to write fails. Default `false`.
    pub read_only: bool,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            synchronous: Synchronous::Full,
            compact_after: 1000,
            max_staged_bytes: 64 << 20,
            max_commit_queue_bytes: 16 << 20,
            max_size_bytes: None,
            read_only: false,
        }
    }
}

/// Counters of a [`SqliteRegistry`] or `SqliteRelayStore`.
///
/// ```
/// use crdt_socket_sync::document::Document;
/// use crdt_socket_sync::registry::Registry;
/// use crdt_socket_sync::store::SqliteRegistry;
/// use crdt_socket_sync::testing::OpLog;
/// let path = std::env::temp_dir().join(format!("css-stats-{}.sqlite", std::process::id()));
/// # for ext in ["", "-wal", "-shm"] { let _ = std::fs::remove_file(format!("{}{ext}", path.display())); }
/// let mut reg = SqliteRegistry::open(&path, |_: &str| OpLog::new(0)).unwrap();
/// let mut author = OpLog::new(7);
/// for text in [b"a", b"b", b"c"] {
///     author.edit(text);
///     let update = author.take_local_update().unwrap();
///     reg.open("notes").unwrap().apply(&update);
///     reg.update_applied("notes", &update).unwrap();
/// }
/// reg.flush().unwrap();
/// let stats = reg.stats();
/// assert_eq!((stats.commits, stats.appended), (1, 3)); // group commit
/// # drop(reg);
/// # for ext in ["", "-wal", "-shm"] { let _ = std::fs::remove_file(format!("{}{ext}", path.display())); }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteStats {
    /// Transactions committed.
    pub commits: u64,
    /// Flushes that failed (the staged writes were kept for a retry).
    pub failed_commits: u64,
    /// Updates (registry) or blobs (relay) written to the log. (The registry
    /// writes each commit's updates as one journal row, folded into one log
    /// row per document every few dozen commits.)
    pub appended: u64,
    /// Snapshots written (compactions, pruning, uploads).
    pub snapshots: u64,
    /// Documents or rooms loaded from the file.
    pub loads: u64,
    /// Log entries replayed while loading documents.
    pub replayed: u64,
    /// Registry: times [`Registry::commit`](crate::registry::Registry::commit) waited for the committer because
    /// [`SqliteConfig::max_commit_queue_bytes`] was reached.
    pub commit_waits: u64,
}

fn storage(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", path.display())
}

/// Opens the file with the durability settings and creates the schema.
fn connect(path: &Path, config: &SqliteConfig, schema: &str) -> Result<Connection, String> {
    let flags = if config.read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(|e| storage(path, e))?;
    // Another process holding the file is an error, not a long wait.
    conn.busy_timeout(Duration::from_millis(200))
        .map_err(|e| storage(path, e))?;
    let sync = match config.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    // A read-only connection cannot hold the write lock; it shares the
    // file like any reader.
    let locking = if config.read_only {
        "NORMAL"
    } else {
        "EXCLUSIVE"
    };
    conn.execute_batch(&format!(
        "PRAGMA locking_mode = {locking}; PRAGMA synchronous = {sync};"
    ))
    .map_err(|e| storage(path, e))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| storage(path, e))?;
    if version > SCHEMA_VERSION {
        return Err(storage(
            path,
            format!("schema version {version} is newer than this build's {SCHEMA_VERSION}"),
        ));
    }
    if config.read_only {
        // Reading takes the (exclusive) lock and proves the file is a
        // database with our schema.
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(|e| storage(path, e))?;
        return Ok(conn);
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| storage(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(storage(path, format!("cannot enable WAL (mode {mode})")));
    }
    if let Some(max) = config.max_size_bytes {
        let page: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| storage(path, e))?;
        let pages = (max / page.max(512) as u64).max(1);
        conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
            .map_err(|e| storage(path, e))?;
    }
    // `BEGIN IMMEDIATE` takes the write lock now (kept: exclusive mode), so
    // a second process on the same file fails here.
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; {schema} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
    ))
    .map_err(|e| storage(path, e))?;
    Ok(conn)
}
