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
//!   need not wait for the disk: [`Registry::commit`] hands the staged writes
//!   over and returns at once, the thread writes everything handed over
//!   since its last transaction in one transaction (one fsync for many
//!   server batches under load) and reports completions through
//!   [`Registry::poll_commit`] and the commit waker. [`Registry::flush`]
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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::document::{ApplyOutcome, Document};
use crate::registry::{
    Commit, CommitDone, CommitId, CommitWaker, DocFactory, OpenPolicy, Registry, RegistryError,
};

use super::{RelayEntry, RelaySnapshot, RelayStore, RelayStoreError, check_room};

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

/// Settings of [`SqliteRegistry`] and [`SqliteRelayStore`].
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
    /// has picked up yet. Past it, [`Registry::commit`] waits until the
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

/// Counters of a [`SqliteRegistry`] or [`SqliteRelayStore`].
///
/// ```
/// use crdt_socket_sync::store::{RelayStore, SqliteRelayStore};
/// let path = std::env::temp_dir().join(format!("css-stats-{}.sqlite", std::process::id()));
/// # let _ = std::fs::remove_file(&path);
/// let mut store = SqliteRelayStore::open(&path).unwrap();
/// for blob in [b"a", b"b", b"c"] {
///     store.append("room", blob).unwrap();
/// }
/// store.flush().unwrap();
/// let stats = store.stats();
/// assert_eq!((stats.commits, stats.appended), (1, 3)); // group commit
/// # drop(store);
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
    /// Registry: times [`Registry::commit`] waited for the committer because
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

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

// ---------------------------------------------------------------------------
// The registry
// ---------------------------------------------------------------------------

const REGISTRY_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS docs (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        snapshot BLOB,
        snapshot_seq INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS updates (
        doc INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (doc, seq)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS journal (
        id INTEGER PRIMARY KEY,
        data BLOB NOT NULL
    );";

/// The journal is folded into per-document log rows once it holds this many
/// commits...
const FOLD_ROWS: u64 = 64;
/// ...or this many bytes.
const FOLD_BYTES: usize = 8 << 20;

/// A write other than an update, waiting for the next commit.
enum DocOp {
    Create {
        id: i64,
        name: String,
    },
    /// `truncate`: drop log entries up to `up_to` (the snapshot holds them).
    Snapshot {
        doc: i64,
        up_to: i64,
        data: Vec<u8>,
        truncate: bool,
    },
    Remove {
        id: i64,
    },
}

impl DocOp {
    fn bytes(&self) -> usize {
        match self {
            DocOp::Snapshot { data, .. } => data.len() + 32,
            DocOp::Create { name, .. } => name.len() + 32,
            DocOp::Remove { .. } => 16,
        }
    }
}

/// Bytes of a journal entry's header: document id, sequence number, length.
const ENTRY_HEADER: usize = 20;

/// Writes staged or handed over together: the ops, and the reported updates
/// already encoded as journal entries (document id `i64`, sequence number
/// `i64`, length `u32`, then the update framed with its `u32` length), so
/// staging an update is one append and the committer writes them as one
/// journal row without re-encoding.
#[derive(Default)]
struct Batch {
    ops: Vec<DocOp>,
    updates: Vec<u8>,
    /// Updates in `updates`.
    count: u64,
    /// Bytes of the ops and updates.
    bytes: usize,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.updates.is_empty()
    }

    fn push_update(&mut self, doc: i64, seq: i64, update: &[u8], len: u32) {
        self.updates.extend_from_slice(&doc.to_le_bytes());
        self.updates.extend_from_slice(&seq.to_le_bytes());
        self.updates.extend_from_slice(&(len + 4).to_le_bytes());
        self.updates.extend_from_slice(&len.to_le_bytes());
        self.updates.extend_from_slice(update);
        self.count += 1;
        self.bytes += update.len() + ENTRY_HEADER + 4;
    }

    fn push_op(&mut self, op: DocOp) {
        self.bytes += op.bytes();
        self.ops.push(op);
    }

    /// Appends `later` (whose writes come after these).
    fn append(&mut self, mut later: Batch) {
        if self.updates.is_empty() {
            self.updates = later.updates;
        } else {
            self.updates.extend_from_slice(&later.updates);
        }
        self.ops.append(&mut later.ops);
        self.count += later.count;
        self.bytes += later.bytes;
    }
}

struct Loaded<D> {
    id: i64,
    doc: D,
    /// Sequence number of the next log entry.
    next_seq: i64,
    /// Log entries since the last snapshot (committed or staged).
    log_len: u64,
    /// Bytes of those entries.
    log_bytes: usize,
    /// Size of the last snapshot written (compaction waits until the log
    /// is at least as large, so snapshots cost at most as much as updates).
    snapshot_len: usize,
    /// The commit holding this document's newest write (staged writes: the
    /// next commit). Until it is on disk the document stays loaded: the
    /// file does not have those writes yet.
    written_in: u64,
    /// Queued for a compaction check at the next commit.
    compact_queued: bool,
    /// An update was applied but could not be staged: the next flush writes
    /// a snapshot (which holds it) and this document may not be unloaded.
    needs_snapshot: bool,
    /// Bumped on every access; `unload_idle` watches it.
    uses: u64,
    /// `(uses, when)` when `unload_idle` last saw the counter change.
    idle_mark: Option<(u64, Instant)>,
    /// The file has its `docs` row, or the next commit writes it. A
    /// document only opened is not: its row is staged with its first
    /// write, so opening names writes nothing.
    stored: bool,
    /// [`Registry::unload`] was asked while writes were not on disk: it is
    /// dropped once they are (unless opened again before).
    unload_wanted: bool,
}

impl<D> Loaded<D> {
    fn new(id: i64, doc: D) -> Self {
        Loaded {
            id,
            doc,
            next_seq: 1,
            log_len: 0,
            log_bytes: 0,
            snapshot_len: 0,
            written_in: 0,
            compact_queued: false,
            needs_snapshot: false,
            uses: 0,
            idle_mark: None,
            stored: true,
            unload_wanted: false,
        }
    }
}

/// A committed journal entry in memory: framed updates of one document,
/// a range of a committed journal row (shared, not copied).
#[derive(Clone)]
struct Entry {
    seq: i64,
    row: Arc<Vec<u8>>,
    at: std::ops::Range<usize>,
}

impl Entry {
    fn data(&self) -> &[u8] {
        self.row.get(self.at.clone()).unwrap_or_default()
    }
}

/// The database connection and the mirror of its journal, shared by the
/// registry (reads: loading documents) and its committer thread (writes).
struct Store {
    conn: Connection,
    /// The committed journal rows not yet folded into `updates` (mirror of
    /// the `journal` table), so loading a document needs no scan of it.
    rows: Vec<Arc<Vec<u8>>>,
    /// Bytes of `rows`.
    journal_bytes: usize,
    /// Per-document index of `rows[..indexed]`: built when a load needs
    /// it, so committing costs nothing per update.
    index: BTreeMap<i64, Vec<Entry>>,
    indexed: usize,
    /// Journal entries of a document up to this sequence number are
    /// covered by its snapshot (`i64::MAX`: the document was removed).
    floors: BTreeMap<i64, i64>,
}

/// What the registry and its committer thread share (behind `state`).
#[derive(Default)]
struct CommitterState {
    /// Writes handed over and not yet picked up by a transaction.
    queue: Batch,
    /// The newest commit id in (or emptied from) `queue`.
    queued_through: u64,
    /// A transaction is running.
    busy: bool,
    /// The newest commit id on disk / failed.
    durable_through: u64,
    failed_through: u64,
    last_error: String,
    /// Completions for [`Registry::poll_commit`], recorded once
    /// [`Registry::commit`] was used.
    completions: VecDeque<CommitDone>,
    report: bool,
    waker: Option<CommitWaker>,
    stop: bool,
    stats: SqliteStats,
}

/// Completions kept for a caller that stopped polling; older ones are
/// dropped first (which only delays or drops acknowledgements).
const MAX_COMPLETIONS: usize = 1024;

struct Shared {
    state: Mutex<CommitterState>,
    /// Signals the committer: work was handed over, or stop.
    work: Condvar,
    /// Signals waiters: the queue was picked up, or a transaction ended.
    done: Condvar,
    store: Mutex<Store>,
    /// Bytes handed over and not yet on disk (queued, being written, or
    /// kept for a retry after a failure).
    in_flight_bytes: AtomicUsize,
    /// Copy of `CommitterState::durable_through`, read without the lock.
    durable_through: AtomicU64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, CommitterState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A durable [`Registry`] in one SQLite file, for any [`Document`] type.
///
/// Each document has an append-only log of the updates applied to it and
/// its latest snapshot. Documents are loaded lazily on first
/// [`Registry::open`] (snapshot, then the log replayed with
/// [`Document::apply_batch`]); [`Registry::update_applied`] stages an update.
/// [`Registry::flush`] commits everything staged in one transaction,
/// returning `Ok(true)` once it is on disk, so the hub's `durable`
/// acknowledgements never cover an update that is not. [`Registry::commit`]
/// does the same without waiting: a committer thread writes, and
/// [`Registry::poll_commit`] reports what reached the disk (the hub's
/// [`commit`](crate::server::Hub::commit) path). Logs longer than
/// [`SqliteConfig::compact_after`] are compacted into a snapshot at the next
/// flush.
///
/// ```
/// use crdt_socket_sync::document::Document;
/// use crdt_socket_sync::registry::Registry;
/// use crdt_socket_sync::store::SqliteRegistry;
/// use crdt_socket_sync::testing::OpLog;
///
/// let dir = std::env::temp_dir().join(format!("css-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("docs.sqlite");
/// # let _ = std::fs::remove_file(&path);
///
/// // An update from a client, as the hub would apply and report it.
/// let mut author = OpLog::new(7);
/// author.edit(b"hello");
/// let update = author.take_local_update().unwrap();
///
/// let mut reg = SqliteRegistry::open(&path, |_: &str| OpLog::new(0)).unwrap();
/// reg.open("notes").unwrap().apply(&update);
/// reg.update_applied("notes", &update).unwrap();
/// assert_eq!(reg.flush(), Ok(true)); // on disk: ack it as durable
/// drop(reg);
///
/// // After a restart the document is loaded from the file on first open.
/// let mut reg = SqliteRegistry::open(&path, |_: &str| OpLog::new(0)).unwrap();
/// assert!(reg.list().is_empty());
/// assert_eq!(reg.open("notes").unwrap().text(), "hello");
/// # drop(reg);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
///
/// Without waiting for the disk:
///
/// ```
/// use crdt_socket_sync::document::Document;
/// use crdt_socket_sync::registry::{Commit, Registry};
/// use crdt_socket_sync::store::SqliteRegistry;
/// use crdt_socket_sync::testing::OpLog;
/// # let path = std::env::temp_dir().join(format!("css-commit-{}.sqlite", std::process::id()));
/// # for ext in ["", "-wal", "-shm"] { let _ = std::fs::remove_file(format!("{}{ext}", path.display())); }
/// let mut reg = SqliteRegistry::open(&path, |_: &str| OpLog::new(0)).unwrap();
/// let (tx, rx) = std::sync::mpsc::channel();
/// reg.set_commit_waker(std::sync::Arc::new(move || {
///     let _ = tx.send(());
/// }));
/// let mut author = OpLog::new(7);
/// author.edit(b"hi");
/// let update = author.take_local_update().unwrap();
/// reg.open("notes").unwrap().apply(&update);
/// reg.update_applied("notes", &update).unwrap();
/// let Ok(Commit::Pending(id)) = reg.commit() else { panic!() };
/// // ... the server goes on; the committer thread writes and wakes it:
/// rx.recv().unwrap();
/// let done = reg.poll_commit().unwrap();
/// assert_eq!((done.through, done.result), (id, Ok(())));
/// # drop(reg);
/// # for ext in ["", "-wal", "-shm"] { let _ = std::fs::remove_file(format!("{}{ext}", path.display())); }
/// ```
pub struct SqliteRegistry<D> {
    shared: Arc<Shared>,
    committer: Option<JoinHandle<()>>,
    path: PathBuf,
    config: SqliteConfig,
    factory: DocFactory<D>,
    policy: OpenPolicy,
    max_name_len: usize,
    docs: BTreeMap<String, Loaded<D>>,
    /// Writes since the last hand-over.
    staged: Batch,
    /// Documents to heal with a snapshot / to check for compaction at the
    /// next commit.
    heal_due: Vec<String>,
    compact_due: Vec<String>,
    /// Names removed while their `Remove` is not on disk yet, with the
    /// commit holding it: not loadable.
    removed: BTreeMap<String, u64>,
    /// Documents to drop once their writes are on disk
    /// ([`Loaded::unload_wanted`]).
    unload_due: Vec<String>,
    /// An update could not be staged since the last flush: that flush fails.
    unstaged: Option<String>,
    /// The newest commit id handed to the committer.
    last_commit: u64,
    /// [`Registry::commit`] was used: the committer records completions.
    reporting: bool,
    next_id: i64,
    /// Loads and replays (the committer counts the rest).
    stats: SqliteStats,
}

impl<D: Document> SqliteRegistry<D> {
    /// Opens (creating if needed) the database at `path` with the default
    /// [`SqliteConfig`]; new documents are made by `factory`.
    pub fn open(
        path: impl AsRef<Path>,
        factory: impl FnMut(&str) -> D + Send + 'static,
    ) -> Result<Self, RegistryError> {
        Self::open_with(path, SqliteConfig::default(), factory)
    }

    /// Opens the database at `path` with `config`, and starts its committer
    /// thread.
    ///
    /// Fails with [`RegistryError::Storage`] when the file cannot be opened
    /// or created (missing or read-only directory), is not a database, was
    /// written by a newer schema, or is held by another process.
    pub fn open_with(
        path: impl AsRef<Path>,
        config: SqliteConfig,
        factory: impl FnMut(&str) -> D + Send + 'static,
    ) -> Result<Self, RegistryError> {
        let path = path.as_ref().to_path_buf();
        let conn = connect(&path, &config, REGISTRY_SCHEMA).map_err(RegistryError::Storage)?;
        let max: Option<i64> = conn
            .query_row("SELECT max(id) FROM docs", [], |r| r.get(0))
            .map_err(|e| RegistryError::Storage(storage(&path, e)))?;
        let (rows, floors, max_journal_id) =
            read_journal(&conn).map_err(|e| RegistryError::Storage(storage(&path, e)))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(CommitterState::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            store: Mutex::new(Store {
                conn,
                journal_bytes: rows.iter().map(|r| r.len()).sum(),
                rows,
                index: BTreeMap::new(),
                indexed: 0,
                floors,
            }),
            in_flight_bytes: AtomicUsize::new(0),
            durable_through: AtomicU64::new(0),
        });
        let committer = {
            let shared = Arc::clone(&shared);
            let file = path.clone();
            std::thread::Builder::new()
                .name("sqlite-committer".into())
                .spawn(move || run_committer(&shared, &file))
                .map_err(|e| RegistryError::Storage(storage(&path, e)))?
        };
        Ok(SqliteRegistry {
            shared,
            committer: Some(committer),
            path,
            config,
            factory: Box::new(factory),
            policy: OpenPolicy::Create,
            max_name_len: 512,
            docs: BTreeMap::new(),
            staged: Batch::default(),
            heal_due: Vec::new(),
            compact_due: Vec::new(),
            removed: BTreeMap::new(),
            unload_due: Vec::new(),
            unstaged: None,
            last_commit: 0,
            reporting: false,
            // Ids are never reused while a journal row may name them.
            next_id: max.unwrap_or(0).max(max_journal_id) + 1,
            stats: SqliteStats::default(),
        })
    }

    /// Changes the create-on-open policy (default [`OpenPolicy::Create`]).
    pub fn set_policy(&mut self, policy: OpenPolicy) {
        self.policy = policy;
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration.
    pub fn config(&self) -> &SqliteConfig {
        &self.config
    }

    /// Counters: commits, appended updates, snapshots, loads.
    pub fn stats(&self) -> SqliteStats {
        let shared = self.shared.state().stats;
        SqliteStats {
            loads: self.stats.loads,
            replayed: self.stats.replayed,
            failed_commits: shared.failed_commits + self.stats.failed_commits,
            ..shared
        }
    }

    /// Bytes staged and not yet on disk (including those handed to the
    /// committer).
    pub fn staged_bytes(&self) -> usize {
        self.staged.bytes + self.shared.in_flight_bytes.load(Ordering::Acquire)
    }

    /// Names of every stored document (loaded or not), sorted. Documents
    /// written since the last commit are included; documents only opened
    /// (never written) are not stored.
    pub fn stored(&mut self) -> Result<Vec<String>, RegistryError> {
        let mut names: BTreeSet<String> = self
            .query(|c| {
                let mut st = c.prepare_cached("SELECT name FROM docs")?;
                let rows = st.query_map([], |r| r.get::<_, String>(0))?;
                rows.collect::<rusqlite::Result<Vec<String>>>()
            })?
            .into_iter()
            .collect();
        self.forget_removed();
        for r in self.removed.keys() {
            names.remove(r);
        }
        names.extend(
            self.docs
                .iter()
                .filter(|(_, l)| l.stored)
                .map(|(name, _)| name.clone()),
        );
        Ok(names.into_iter().collect())
    }

    /// Compacts document `name` now (at the next flush): its snapshot
    /// replaces its log. Returns whether it is loaded.
    pub fn compact(&mut self, name: &str) -> bool {
        let Some(l) = self.docs.get_mut(name) else {
            return false;
        };
        let truncate = l.doc.pending_bytes() == 0;
        let data = l.doc.snapshot();
        l.snapshot_len = data.len();
        let op = DocOp::Snapshot {
            doc: l.id,
            up_to: l.next_seq - 1,
            data,
            truncate,
        };
        if truncate {
            l.log_len = 0;
            l.log_bytes = 0;
        }
        self.stage(name, op);
        true
    }

    /// Unloads documents nobody used for `idle_for`, except those for which
    /// `in_use` returns `true` (pass `|name| hub.subscribers(name) > 0`: the
    /// hub expects the documents its sessions opened to stay loaded) and
    /// those with writes not yet on disk. Returns the unloaded names.
    ///
    /// The registry reads no clock: a document counts as idle from the first
    /// call that saw it unused, so call this periodically.
    ///
    /// ```
    /// # use crdt_socket_sync::registry::Registry;
    /// # use crdt_socket_sync::store::SqliteRegistry;
    /// # use crdt_socket_sync::testing::OpLog;
    /// use std::time::{Duration, Instant};
    /// # let path = std::env::temp_dir().join(format!("css-idle-{}.sqlite", std::process::id()));
    /// # let _ = std::fs::remove_file(&path);
    /// let mut reg = SqliteRegistry::open(&path, |_: &str| OpLog::new(0)).unwrap();
    /// reg.open("a").unwrap();
    /// reg.flush().unwrap();
    /// let t0 = Instant::now();
    /// let idle = Duration::from_secs(60);
    /// assert!(reg.unload_idle(t0, idle, |_| false).is_empty()); // starts the clock
    /// assert_eq!(reg.unload_idle(t0 + idle, idle, |_| false), vec!["a".to_string()]);
    /// assert!(reg.list().is_empty());
    /// # drop(reg);
    /// # for ext in ["", "-wal", "-shm"] { let _ = std::fs::remove_file(format!("{}{ext}", path.display())); }
    /// ```
    pub fn unload_idle(
        &mut self,
        now: Instant,
        idle_for: Duration,
        in_use: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let durable = self.shared.durable_through.load(Ordering::Acquire);
        let mut out = Vec::new();
        for (name, l) in &mut self.docs {
            if in_use(name) || !l.unloadable(durable) {
                l.idle_mark = None;
                continue;
            }
            match l.idle_mark {
                Some((uses, since)) if uses == l.uses => {
                    if now.saturating_duration_since(since) >= idle_for {
                        out.push(name.clone());
                    }
                }
                _ => l.idle_mark = Some((l.uses, now)),
            }
        }
        for name in &out {
            self.docs.remove(name);
        }
        out
    }

    fn query<T>(
        &mut self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, RegistryError> {
        let store = self.shared.store();
        f(&store.conn).map_err(|e| RegistryError::Storage(storage(&self.path, e)))
    }

    fn stage(&mut self, name: &str, op: DocOp) {
        self.ensure_stored(name);
        self.staged.push_op(op);
        if let Some(l) = self.docs.get_mut(name) {
            l.written_in = self.last_commit + 1;
        }
    }

    /// Stages the `docs` row of loaded document `name` if the file does
    /// not have it yet (its first write).
    fn ensure_stored(&mut self, name: &str) {
        if let Some(l) = self.docs.get_mut(name)
            && !l.stored
        {
            l.stored = true;
            l.written_in = self.last_commit + 1;
            let op = DocOp::Create {
                id: l.id,
                name: name.to_string(),
            };
            self.staged.push_op(op);
        }
    }

    /// Drops the documents [`Registry::unload`] was asked for whose writes
    /// reached the disk since.
    fn unload_when_durable(&mut self) {
        if self.unload_due.is_empty() {
            return;
        }
        let durable = self.shared.durable_through.load(Ordering::Acquire);
        let docs = &mut self.docs;
        self.unload_due.retain(|name| match docs.get(name) {
            Some(l) if l.unload_wanted => {
                if l.unloadable(durable) {
                    docs.remove(name);
                    false
                } else {
                    true
                }
            }
            _ => false,
        });
    }

    /// Marks `name` as holding an update that could not be staged.
    fn needs_snapshot(&mut self, name: &str) {
        if let Some(l) = self.docs.get_mut(name)
            && !l.needs_snapshot
        {
            l.needs_snapshot = true;
            self.heal_due.push(name.to_string());
        }
    }

    /// Drops the removals that are on disk.
    fn forget_removed(&mut self) {
        let durable = self.shared.durable_through.load(Ordering::Acquire);
        self.removed.retain(|_, id| *id > durable);
    }

    /// Loads `name` from the file: snapshot, then its log replayed.
    fn load(&mut self, name: &str) -> Result<Option<Loaded<D>>, RegistryError> {
        self.forget_removed();
        if self.removed.contains_key(name) {
            return Ok(None);
        }
        // One lock for the whole read: the committer may not fold the
        // journal in between.
        let path = self.path.clone();
        let err = |e: rusqlite::Error| RegistryError::Storage(storage(&path, e));
        let mut store = self.shared.store();
        let row = store
            .conn
            .prepare_cached("SELECT id, snapshot, snapshot_seq FROM docs WHERE name = ?1")
            .and_then(|mut st| {
                st.query_row([name], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Option<Vec<u8>>>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .optional()
            })
            .map_err(err)?;
        let Some((id, snapshot, snapshot_seq)) = row else {
            return Ok(None);
        };
        let rows = store
            .conn
            .prepare_cached(
                "SELECT seq, data FROM updates WHERE doc = ?1 AND seq > ?2 ORDER BY seq",
            )
            .and_then(|mut st| {
                st.query_map(params![id, snapshot_seq], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(err)?;
        // Sequence numbers continue after the last entry (or the snapshot
        // when the log was truncated).
        let last: Option<i64> = store
            .conn
            .prepare_cached("SELECT max(seq) FROM updates WHERE doc = ?1")
            .and_then(|mut st| st.query_row([id], |r| r.get(0)))
            .map_err(err)?;
        let entries: Vec<Entry> = store
            .entries(id)
            .iter()
            .filter(|e| e.seq > snapshot_seq)
            .cloned()
            .collect();
        drop(store);
        let mut doc = (self.factory)(name);
        let snapshot_len = snapshot.as_ref().map_or(0, Vec::len);
        if let Some(s) = snapshot {
            doc.load_snapshot(&s).map_err(|e| {
                RegistryError::Storage(storage(
                    &self.path,
                    format!("document {name:?}: stored snapshot does not load: {e}"),
                ))
            })?;
        }
        // The log, in order: folded rows, then the journal's entries.
        let log: Vec<(i64, &[u8])> = rows
            .iter()
            .map(|(seq, data)| (*seq, data.as_slice()))
            .chain(entries.iter().map(|e| (e.seq, e.data())))
            .collect();
        let mut updates: Vec<&[u8]> = Vec::new();
        let mut row_of: Vec<i64> = Vec::new();
        for (seq, row) in &log {
            let framed = unframe(row).ok_or_else(|| {
                RegistryError::Storage(storage(
                    &self.path,
                    format!("document {name:?}: log row {seq} is malformed"),
                ))
            })?;
            row_of.extend(std::iter::repeat_n(*seq, framed.len()));
            updates.extend(framed);
        }
        let mut outcomes = Vec::new();
        doc.apply_batch(&updates, &mut outcomes);
        if let Some((i, ApplyOutcome::Invalid(e))) = outcomes
            .iter()
            .enumerate()
            .find(|(_, o)| matches!(o, ApplyOutcome::Invalid(_)))
        {
            let seq = row_of.get(i).copied().unwrap_or_default();
            return Err(RegistryError::Storage(storage(
                &self.path,
                format!("document {name:?}: an update in log row {seq} does not apply: {e}"),
            )));
        }
        let replayed = updates.len() as u64;
        let last = last.max(log.last().map(|(seq, _)| *seq));
        let log_bytes = log.iter().map(|(_, row)| row.len()).sum();
        self.stats.loads += 1;
        self.stats.replayed += replayed;
        Ok(Some(Loaded {
            next_seq: last.unwrap_or(0).max(snapshot_seq) + 1,
            log_len: replayed,
            log_bytes,
            snapshot_len,
            ..Loaded::new(id, doc)
        }))
    }

    /// Stages what a commit writes besides the reported updates: snapshots
    /// healing updates that could not be staged, compaction of long logs.
    fn prepare(&mut self) {
        for name in std::mem::take(&mut self.heal_due) {
            if let Some(l) = self.docs.get_mut(&name)
                && l.needs_snapshot
            {
                l.needs_snapshot = false;
                let op = DocOp::Snapshot {
                    doc: l.id,
                    up_to: l.next_seq - 1,
                    data: l.doc.snapshot(),
                    truncate: false,
                };
                self.stage(&name, op);
            }
        }
        // Compaction of long logs, in the same transaction. Documents
        // holding updates with missing dependencies wait: their next update
        // queues them again.
        for name in std::mem::take(&mut self.compact_due) {
            let due = self.docs.get_mut(&name).is_some_and(|l| {
                l.compact_queued = false;
                l.log_len >= self.config.compact_after
                    && l.log_bytes >= l.snapshot_len
                    && l.doc.pending_bytes() == 0
            });
            if due {
                self.compact(&name);
            }
        }
    }

    /// Hands everything staged to the committer thread. Returns the commit
    /// to wait for, `None` when everything handed over before is on disk
    /// and nothing is staged. Read-only: fails when something is staged.
    fn hand_over(&mut self) -> Result<Option<u64>, RegistryError> {
        self.prepare();
        if self.config.read_only && !self.staged.is_empty() {
            self.stats.failed_commits += 1;
            return Err(RegistryError::Storage(storage(
                &self.path,
                "opened read-only; updates are not stored",
            )));
        }
        let shared = Arc::clone(&self.shared);
        let mut st = shared.state();
        if self.staged.is_empty() {
            if st.durable_through >= self.last_commit {
                return Ok(None);
            }
            if st.failed_through < self.last_commit {
                // Still on its way.
                return Ok(Some(self.last_commit));
            }
            // The last commit failed: an empty one retries its writes.
        }
        // Backpressure: the running transaction picks the queue up when it
        // ends.
        let max = self.config.max_commit_queue_bytes;
        if st.queue.bytes > max && st.busy {
            st.stats.commit_waits += 1;
            while st.queue.bytes > max && st.busy && !st.stop {
                if self.committer.as_ref().is_none_or(|c| c.is_finished()) {
                    break;
                }
                st = shared
                    .done
                    .wait_timeout(st, Duration::from_millis(100))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        self.last_commit += 1;
        // The next batch will likely be as large: reserve once instead of
        // growing it update by update.
        let capacity = self.staged.updates.len();
        let batch = std::mem::replace(
            &mut self.staged,
            Batch {
                updates: Vec::with_capacity(capacity),
                ..Batch::default()
            },
        );
        shared
            .in_flight_bytes
            .fetch_add(batch.bytes, Ordering::AcqRel);
        st.queue.append(batch);
        st.queued_through = self.last_commit;
        // A busy committer looks at the queue when its transaction ends.
        let idle = !st.busy;
        drop(st);
        if idle {
            shared.work.notify_one();
        }
        Ok(Some(self.last_commit))
    }

    /// Waits until commit `id` is on disk (or failed).
    fn wait_for(&self, id: u64) -> Result<(), RegistryError> {
        let mut st = self.shared.state();
        loop {
            if st.durable_through >= id {
                return Ok(());
            }
            if st.failed_through >= id {
                return Err(RegistryError::Storage(storage(&self.path, &st.last_error)));
            }
            if self.committer.as_ref().is_none_or(|c| c.is_finished()) {
                return Err(RegistryError::Storage(storage(
                    &self.path,
                    "the committer thread stopped",
                )));
            }
            st = self
                .shared
                .done
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl<D> Loaded<D> {
    /// No write of this document is waiting: the file has it all.
    fn unloadable(&self, durable_through: u64) -> bool {
        !self.needs_snapshot && self.written_in <= durable_through
    }
}

/// The committer thread: writes everything handed over since its last
/// transaction in one transaction, keeps the writes of a failed one for the
/// next attempt (made when more work or an empty retry commit arrives), and
/// reports each transaction's outcome.
fn run_committer(shared: &Shared, path: &Path) {
    let mut taken_through = 0u64;
    let mut retained = Batch::default();
    loop {
        let (mut batch, through) = {
            let mut st = shared.state();
            while st.queued_through == taken_through && !st.stop {
                st = shared.work.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            if st.queued_through == taken_through {
                return; // stopping, nothing left
            }
            st.busy = true;
            taken_through = st.queued_through;
            let batch = std::mem::take(&mut st.queue);
            // A `commit` waiting for room in the queue may go on.
            shared.done.notify_all();
            (batch, taken_through)
        };
        if !retained.is_empty() {
            retained.append(batch);
            batch = std::mem::take(&mut retained);
        }
        let updates = Arc::new(std::mem::take(&mut batch.updates));
        let result = shared.store().write(&batch.ops, &updates);
        let waker = {
            let mut st = shared.state();
            st.busy = false;
            let result = match result {
                Ok(()) => {
                    st.durable_through = through;
                    shared.durable_through.store(through, Ordering::Release);
                    shared
                        .in_flight_bytes
                        .fetch_sub(batch.bytes, Ordering::AcqRel);
                    st.stats.commits += 1;
                    st.stats.appended += batch.count;
                    st.stats.snapshots += batch
                        .ops
                        .iter()
                        .filter(|op| matches!(op, DocOp::Snapshot { .. }))
                        .count() as u64;
                    Ok(())
                }
                Err(e) => {
                    st.failed_through = through;
                    st.last_error = e.to_string();
                    st.stats.failed_commits += 1;
                    // Unshared: the journal mirror took no entry of it.
                    batch.updates = Arc::try_unwrap(updates).unwrap_or_else(|a| a.to_vec());
                    retained = batch;
                    Err(RegistryError::Storage(storage(path, e)))
                }
            };
            if st.report {
                report(&mut st.completions, through, result);
            }
            shared.done.notify_all();
            st.waker.clone()
        };
        if let Some(wake) = waker {
            wake();
        }
    }
}

/// Queues a completion, merging it into the previous one of the same kind.
fn report(out: &mut VecDeque<CommitDone>, through: u64, result: Result<(), RegistryError>) {
    let through = CommitId(through);
    match out.back_mut() {
        Some(last) if last.result.is_ok() == result.is_ok() => {
            last.through = through;
            last.result = result;
        }
        _ => {
            if out.len() >= MAX_COMPLETIONS {
                out.pop_front();
            }
            out.push_back(CommitDone { through, result });
        }
    }
}

impl Store {
    /// Writes `ops` and the journal entries in `updates` in one transaction
    /// and updates the journal mirror.
    fn write(&mut self, ops: &[DocOp], updates: &Arc<Vec<u8>>) -> rusqlite::Result<()> {
        if ops.is_empty() && updates.is_empty() {
            return Ok(());
        }
        let fold = self.rows.len() as u64 + 1 >= FOLD_ROWS || self.journal_bytes >= FOLD_BYTES;
        let journal = fold.then_some((self.rows.as_slice(), &self.floors));
        write_doc_ops(&mut self.conn, ops, updates, journal)?;
        if fold {
            // Later entries are above every floor (sequence numbers grow,
            // ids are not reused).
            self.rows.clear();
            self.journal_bytes = 0;
            self.index.clear();
            self.indexed = 0;
            self.floors.clear();
            return Ok(());
        }
        if !updates.is_empty() {
            self.rows.push(Arc::clone(updates));
            self.journal_bytes += updates.len();
        }
        for (doc, floor) in floors(ops) {
            let f = self.floors.entry(doc).or_insert(floor);
            *f = (*f).max(floor);
            if let Some(entries) = self.index.get_mut(&doc) {
                entries.retain(|e| e.seq > floor);
            }
        }
        Ok(())
    }

    /// The journal entries of document `id` (indexing new rows first).
    fn entries(&mut self, id: i64) -> &[Entry] {
        for row in &self.rows[self.indexed..] {
            // Written by this process or checked when read: never malformed.
            let _ = decode_journal(row, |doc, seq, at| {
                self.index.entry(doc).or_default().push(Entry {
                    seq,
                    row: Arc::clone(row),
                    at,
                });
            });
        }
        self.indexed = self.rows.len();
        self.index.get(&id).map_or(&[], Vec::as_slice)
    }
}

/// Per document, the journal entries `ops` cover: up to a truncating
/// snapshot's sequence number, or all of a removed document's.
fn floors(ops: &[DocOp]) -> BTreeMap<i64, i64> {
    let mut floor: BTreeMap<i64, i64> = BTreeMap::new();
    for op in ops {
        match op {
            DocOp::Snapshot {
                doc,
                up_to,
                truncate: true,
                ..
            } => {
                let f = floor.entry(*doc).or_insert(*up_to);
                *f = (*f).max(*up_to);
            }
            DocOp::Remove { id } => {
                floor.insert(*id, i64::MAX);
            }
            _ => {}
        }
    }
    floor
}

/// Splits a log row into its framed updates (`None`: malformed).
fn unframe(mut row: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !row.is_empty() {
        let (len, rest) = row.split_at_checked(4)?;
        let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
        let (update, rest) = rest.split_at_checked(len)?;
        out.push(update);
        row = rest;
    }
    Some(out)
}

/// Calls `f(doc, seq, range of the data)` for every entry of a journal row
/// (document id `i64`, sequence number `i64`, length `u32`, framed
/// updates). `None`: malformed.
fn decode_journal(row: &[u8], mut f: impl FnMut(i64, i64, std::ops::Range<usize>)) -> Option<()> {
    let mut at = 0;
    while at < row.len() {
        let head = row.get(at..at + ENTRY_HEADER)?;
        let doc = i64::from_le_bytes(head[0..8].try_into().ok()?);
        let seq = i64::from_le_bytes(head[8..16].try_into().ok()?);
        let len = u32::from_le_bytes(head[16..20].try_into().ok()?) as usize;
        let start = at + ENTRY_HEADER;
        let end = start.checked_add(len).filter(|e| *e <= row.len())?;
        f(doc, seq, start..end);
        at = end;
    }
    Some(())
}

/// Per document id, the sequence number up to which its journal entries are
/// covered (by a snapshot; `i64::MAX`: the document was removed).
type Floors = BTreeMap<i64, i64>;

/// The unfolded journal's rows, floors and highest document id.
type JournalRead = (Vec<Arc<Vec<u8>>>, Floors, i64);

/// Reads the unfolded journal: its rows, the floors of the documents they
/// name (entries at or below are covered by a snapshot; `i64::MAX`: the
/// document was removed), and the highest document id they name.
fn read_journal(conn: &Connection) -> Result<JournalRead, String> {
    let mut stored = BTreeMap::new();
    {
        let mut st = conn
            .prepare("SELECT id, snapshot_seq FROM docs")
            .map_err(|e| e.to_string())?;
        let mut q = st.query([]).map_err(|e| e.to_string())?;
        while let Some(r) = q.next().map_err(|e| e.to_string())? {
            let id: i64 = r.get(0).map_err(|e| e.to_string())?;
            let floor: i64 = r.get(1).map_err(|e| e.to_string())?;
            stored.insert(id, floor);
        }
    }
    let mut rows = Vec::new();
    let mut floors = BTreeMap::new();
    let mut max_id = 0;
    let mut st = conn
        .prepare("SELECT id, data FROM journal ORDER BY id")
        .map_err(|e| e.to_string())?;
    let mut q = st.query([]).map_err(|e| e.to_string())?;
    while let Some(r) = q.next().map_err(|e| e.to_string())? {
        let id: i64 = r.get(0).map_err(|e| e.to_string())?;
        let row: Vec<u8> = r.get(1).map_err(|e| e.to_string())?;
        decode_journal(&row, |doc, _, _| {
            max_id = max_id.max(doc);
            let floor = stored.get(&doc).copied().unwrap_or(i64::MAX);
            if floor > 0 {
                floors.insert(doc, floor);
            }
        })
        .ok_or_else(|| format!("journal row {id} is malformed"))?;
        rows.push(Arc::new(row));
    }
    Ok((rows, floors, max_id))
}

/// Writes `ops` and the journal entries in `updates` in one transaction.
/// The updates go into one journal row (one sequential write, however many
/// documents they touch), or, when `fold` holds the journal (its rows and
/// floors), the journal and these updates are folded into one `updates` row
/// per document and the journal emptied. Entries a truncating snapshot or a
/// removal covers are not written.
fn write_doc_ops(
    conn: &mut Connection,
    ops: &[DocOp],
    updates: &[u8],
    fold: Option<(&[Arc<Vec<u8>>], &Floors)>,
) -> rusqlite::Result<()> {
    let floor = floors(ops);
    let covered = |doc: i64, seq: i64, journal: Option<&Floors>| {
        floor.get(&doc).is_some_and(|f| seq <= *f)
            || journal.is_some_and(|j| j.get(&doc).is_some_and(|f| seq <= *f))
    };
    let tx = conn.transaction()?;
    {
        for op in ops {
            match op {
                DocOp::Create { id, name } => {
                    tx.prepare_cached("INSERT INTO docs (id, name) VALUES (?1, ?2)")?
                        .execute(params![id, name])?;
                }
                DocOp::Snapshot {
                    doc,
                    up_to,
                    data,
                    truncate,
                } => {
                    if *truncate {
                        tx.prepare_cached(
                            "UPDATE docs SET snapshot = ?2, snapshot_seq = ?3 WHERE id = ?1",
                        )?
                        .execute(params![doc, data, up_to])?;
                        tx.prepare_cached("DELETE FROM updates WHERE doc = ?1 AND seq <= ?2")?
                            .execute(params![doc, up_to])?;
                    } else {
                        // The log stays (it may hold updates the snapshot
                        // lacks); replaying it over the snapshot is harmless.
                        tx.prepare_cached("UPDATE docs SET snapshot = ?2 WHERE id = ?1")?
                            .execute(params![doc, data])?;
                    }
                }
                DocOp::Remove { id } => {
                    tx.prepare_cached("DELETE FROM updates WHERE doc = ?1")?
                        .execute([id])?;
                    tx.prepare_cached("DELETE FROM docs WHERE id = ?1")?
                        .execute([id])?;
                }
            }
        }
        match fold {
            None if updates.is_empty() => {}
            None if floor.is_empty() => {
                // Nothing covered: the staged bytes are the row.
                tx.prepare_cached("INSERT INTO journal (data) VALUES (?1)")?
                    .execute([updates])?;
            }
            None => {
                let mut row = Vec::with_capacity(updates.len());
                // Staged by this process: never malformed.
                let _ = decode_journal(updates, |doc, seq, at| {
                    if !covered(doc, seq, None) {
                        row.extend_from_slice(&updates[at.start - ENTRY_HEADER..at.end]);
                    }
                });
                if !row.is_empty() {
                    tx.prepare_cached("INSERT INTO journal (data) VALUES (?1)")?
                        .execute([row])?;
                }
            }
            Some((journal, floors)) => {
                // One row per document: its journal entries, then this
                // commit's, concatenated (framed updates concatenate).
                let mut rows: BTreeMap<i64, (i64, Vec<u8>)> = BTreeMap::new();
                for row in journal.iter().map(|r| r.as_slice()).chain([updates]) {
                    let _ = decode_journal(row, |doc, seq, at| {
                        if !covered(doc, seq, Some(floors)) {
                            let out = rows.entry(doc).or_default();
                            out.0 = out.0.max(seq);
                            out.1.extend_from_slice(&row[at]);
                        }
                    });
                }
                let mut insert =
                    tx.prepare_cached("INSERT INTO updates (doc, seq, data) VALUES (?1, ?2, ?3)")?;
                for (doc, (seq, data)) in rows {
                    insert.execute(params![doc, seq, data])?;
                }
                tx.execute("DELETE FROM journal", [])?;
            }
        }
    }
    tx.commit()
}

impl<D: Document> Registry for SqliteRegistry<D> {
    type Doc = D;

    fn is_durable(&self) -> bool {
        true
    }

    fn open(&mut self, name: &str) -> Result<&mut D, RegistryError> {
        if name.is_empty() || name.len() > self.max_name_len {
            return Err(RegistryError::InvalidName(format!(
                "length must be 1..={}",
                self.max_name_len
            )));
        }
        if !self.docs.contains_key(name) {
            let loaded = match self.load(name)? {
                Some(l) => l,
                None => {
                    if self.policy == OpenPolicy::MustExist {
                        return Err(RegistryError::NotFound(name.to_string()));
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    let doc = (self.factory)(name);
                    // Its row is written with its first write.
                    let l = Loaded {
                        stored: false,
                        ..Loaded::new(id, doc)
                    };
                    self.docs.insert(name.to_string(), l);
                    let l = self
                        .docs
                        .get_mut(name)
                        .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
                    return Ok(&mut l.doc);
                }
            };
            self.docs.insert(name.to_string(), loaded);
        }
        let l = self
            .docs
            .get_mut(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        l.uses += 1;
        l.unload_wanted = false;
        Ok(&mut l.doc)
    }

    fn get(&mut self, name: &str) -> Option<&mut D> {
        let l = self.docs.get_mut(name)?;
        l.uses += 1;
        Some(&mut l.doc)
    }

    fn list(&self) -> Vec<String> {
        self.docs.keys().cloned().collect()
    }

    /// Drops `name` from memory; it stays stored (a document never written
    /// was never stored and is gone). While it has writes not yet on disk
    /// it stays (`false`) and is dropped once a later commit, flush or
    /// [`Registry::poll_commit`] finds them on disk, unless it is opened
    /// again before.
    fn unload(&mut self, name: &str) -> bool {
        let durable = self.shared.durable_through.load(Ordering::Acquire);
        let Some(l) = self.docs.get_mut(name) else {
            return false;
        };
        if l.unloadable(durable) {
            self.docs.remove(name);
            return true;
        }
        if !l.unload_wanted {
            l.unload_wanted = true;
            self.unload_due.push(name.to_string());
        }
        false
    }

    /// Deletes `name` from memory and from the file (committed at once with
    /// everything staged, waiting for the disk; if that commit fails, at the
    /// next one).
    fn remove(&mut self, name: &str) -> bool {
        self.forget_removed();
        let id = match self.docs.remove(name) {
            // Never written: nothing stored to delete.
            Some(l) if !l.stored => return true,
            Some(l) => Some(l.id),
            None if self.removed.contains_key(name) => None,
            None => self
                .query(|c| {
                    c.prepare_cached("SELECT id FROM docs WHERE name = ?1")?
                        .query_row([name], |r| r.get::<_, i64>(0))
                        .optional()
                })
                .ok()
                .flatten(),
        };
        let Some(id) = id else {
            return false;
        };
        self.stage(name, DocOp::Remove { id });
        self.removed.insert(name.to_string(), self.last_commit + 1);
        if let Ok(Some(commit)) = self.hand_over() {
            let _ = self.wait_for(commit);
        }
        true
    }

    fn update_applied(&mut self, name: &str, update: &[u8]) -> Result<(), RegistryError> {
        let waiting = self.staged.bytes + self.shared.in_flight_bytes.load(Ordering::Acquire);
        let next_commit = self.last_commit + 1;
        let compact_after = self.config.compact_after;
        if !self.docs.contains_key(name) {
            return Err(RegistryError::NotFound(name.to_string()));
        }
        let len = u32::try_from(update.len())
            .ok()
            .filter(|len| *len < u32::MAX - 4);
        let Some(len) = len else {
            self.needs_snapshot(name);
            return Err(RegistryError::Storage("update larger than 4 GiB".into()));
        };
        self.ensure_stored(name);
        let Some(l) = self.docs.get_mut(name) else {
            return Err(RegistryError::NotFound(name.to_string()));
        };
        if waiting + update.len() > self.config.max_staged_bytes {
            // Applied in memory but not staged: this flush fails, the next
            // successful one writes a snapshot holding it.
            let why =
                format!("{waiting} bytes wait for a commit that keeps failing; update not stored");
            self.needs_snapshot(name);
            self.unstaged = Some(why.clone());
            return Err(RegistryError::Storage(storage(&self.path, why)));
        }
        let seq = l.next_seq;
        l.next_seq += 1;
        l.log_len += 1;
        l.log_bytes += update.len() + 4;
        l.written_in = next_commit;
        let compact =
            !l.compact_queued && l.log_len >= compact_after && l.log_bytes >= l.snapshot_len;
        l.compact_queued |= compact;
        self.staged.push_update(l.id, seq, update, len);
        if compact {
            self.compact_due.push(name.to_string());
        }
        Ok(())
    }

    fn snapshot_taken(&mut self, name: &str, snapshot: &[u8]) -> Result<(), RegistryError> {
        let Some(l) = self.docs.get_mut(name) else {
            return Err(RegistryError::NotFound(name.to_string()));
        };
        let truncate = l.doc.pending_bytes() == 0;
        if truncate {
            l.log_len = 0;
            l.log_bytes = 0;
        }
        l.snapshot_len = snapshot.len();
        let op = DocOp::Snapshot {
            doc: l.id,
            up_to: l.next_seq - 1,
            data: snapshot.to_vec(),
            truncate,
        };
        self.stage(name, op);
        Ok(())
    }

    /// Commits everything staged in one transaction and waits for it.
    /// `Ok(true)`: every update reported so far (and everything handed over
    /// by [`Registry::commit`] before) is on disk. `Err`: nothing new is
    /// durable (the writes are kept and retried by the next commit).
    fn flush(&mut self) -> Result<bool, RegistryError> {
        let commit = self.hand_over()?;
        let unstaged = self.unstaged.take();
        if let Some(id) = commit {
            self.wait_for(id)?;
        }
        self.unload_when_durable();
        match unstaged {
            Some(why) => Err(RegistryError::Storage(storage(&self.path, why))),
            None => Ok(true),
        }
    }

    /// Hands everything staged to the committer thread and returns at once
    /// ([`Commit::Pending`]), or [`Commit::Durable`] when nothing is staged
    /// and everything handed over before is on disk. A commit whose
    /// predecessor failed retries the failed writes.
    fn commit(&mut self) -> Result<Commit, RegistryError> {
        if !self.reporting {
            self.reporting = true;
            self.shared.state().report = true;
        }
        let commit = self.hand_over()?;
        self.unload_when_durable();
        if let Some(why) = self.unstaged.take() {
            return Err(RegistryError::Storage(storage(&self.path, why)));
        }
        Ok(commit.map_or(Commit::Durable, |id| Commit::Pending(CommitId(id))))
    }

    fn poll_commit(&mut self) -> Option<CommitDone> {
        let done = self.shared.state().completions.pop_front();
        if done.is_some() {
            self.unload_when_durable();
        }
        done
    }

    fn set_commit_waker(&mut self, waker: CommitWaker) {
        self.shared.state().waker = Some(waker);
    }
}

impl<D> Drop for SqliteRegistry<D> {
    /// Stops the committer thread after it wrote what was handed over (the
    /// file is unlocked when this returns).
    fn drop(&mut self) {
        self.shared.state().stop = true;
        self.shared.work.notify_all();
        if let Some(c) = self.committer.take() {
            let _ = c.join();
        }
    }
}

impl<D> std::fmt::Debug for SqliteRegistry<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteRegistry")
            .field("path", &self.path)
            .field("loaded", &self.docs.len())
            .field("staged_bytes", &self.staged.bytes)
            .field("last_commit", &self.last_commit)
            .finish()
    }
}

// ---------------------------------------------------------------------------
// The relay store
// ---------------------------------------------------------------------------

const RELAY_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS relay_rooms (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        snapshot BLOB,
        up_to INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS relay_log (
        room INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (room, seq)
    );";

enum RelayOp {
    Create {
        id: i64,
        name: String,
    },
    Append {
        room: i64,
        seq: u64,
        data: Vec<u8>,
    },
    Snapshot {
        room: i64,
        up_to: u64,
        data: Vec<u8>,
    },
    Remove {
        id: i64,
    },
}

impl RelayOp {
    fn bytes(&self) -> usize {
        match self {
            RelayOp::Append { data, .. } | RelayOp::Snapshot { data, .. } => data.len() + 32,
            RelayOp::Create { name, .. } => name.len() + 32,
            RelayOp::Remove { .. } => 16,
        }
    }
}

#[derive(Clone, Copy)]
struct Room {
    id: i64,
    last: u64,
    up_to: u64,
    /// Sequence number of the first staged append (`u64::MAX`: none).
    first_staged: u64,
}

/// A durable [`RelayStore`] in one SQLite file: per room, a log of blobs
/// with sequence numbers and the latest snapshot. Writes are staged and
/// committed by [`RelayStore::flush`] in one transaction (group commit);
/// reads see staged writes at once. Same durability settings as
/// [`SqliteRegistry`] (WAL, `synchronous=FULL` by default).
///
/// ```
/// use crdt_socket_sync::store::{RelayStore, SqliteRelayStore};
/// let path = std::env::temp_dir().join(format!("css-relay-{}.sqlite", std::process::id()));
/// # let _ = std::fs::remove_file(&path);
/// let mut store = SqliteRelayStore::open(&path).unwrap();
/// assert_eq!(store.append("room", b"blob").unwrap(), 1);
/// assert!(store.flush().unwrap()); // durable: ack blob 1
/// drop(store);
/// let mut store = SqliteRelayStore::open(&path).unwrap();
/// assert_eq!(store.read_after("room", 0, 10).unwrap()[0].data, b"blob");
/// # drop(store);
/// # for ext in ["", "-wal", "-shm"] { let _ = std::fs::remove_file(format!("{}{ext}", path.display())); }
/// ```
pub struct SqliteRelayStore {
    conn: Connection,
    path: PathBuf,
    config: SqliteConfig,
    rooms: BTreeMap<String, Room>,
    staged: Vec<RelayOp>,
    staged_bytes: usize,
    removed: BTreeSet<String>,
    next_id: i64,
    stats: SqliteStats,
}

impl SqliteRelayStore {
    /// Opens (creating if needed) the store at `path` with the default
    /// [`SqliteConfig`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, RelayStoreError> {
        Self::open_with(path, SqliteConfig::default())
    }

    /// Opens the store at `path` with `config` (`compact_after` is unused:
    /// relay snapshots come from clients).
    pub fn open_with(
        path: impl AsRef<Path>,
        config: SqliteConfig,
    ) -> Result<Self, RelayStoreError> {
        let path = path.as_ref().to_path_buf();
        let conn = connect(&path, &config, RELAY_SCHEMA).map_err(RelayStoreError::Storage)?;
        let max: Option<i64> = conn
            .query_row("SELECT max(id) FROM relay_rooms", [], |r| r.get(0))
            .map_err(|e| RelayStoreError::Storage(storage(&path, e)))?;
        Ok(SqliteRelayStore {
            conn,
            path,
            config,
            rooms: BTreeMap::new(),
            staged: Vec::new(),
            staged_bytes: 0,
            removed: BTreeSet::new(),
            next_id: max.unwrap_or(0) + 1,
            stats: SqliteStats::default(),
        })
    }

    /// Counters: commits, appended blobs, snapshots, rooms loaded.
    pub fn stats(&self) -> SqliteStats {
        self.stats
    }

    fn err(&self, e: impl std::fmt::Display) -> RelayStoreError {
        RelayStoreError::Storage(storage(&self.path, e))
    }

    fn stage(&mut self, op: RelayOp) {
        self.staged_bytes += op.bytes();
        self.staged.push(op);
    }

    /// The room's state, loaded from the file on first use.
    fn room(&mut self, name: &str) -> Result<Option<Room>, RelayStoreError> {
        check_room(name)?;
        if let Some(r) = self.rooms.get(name) {
            return Ok(Some(*r));
        }
        if self.removed.contains(name) {
            return Ok(None);
        }
        let row = self
            .conn
            .prepare_cached("SELECT id, up_to FROM relay_rooms WHERE name = ?1")
            .and_then(|mut st| {
                st.query_row([name], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                    .optional()
            })
            .map_err(|e| self.err(e))?;
        let Some((id, up_to)) = row else {
            return Ok(None);
        };
        let last: Option<i64> = self
            .conn
            .prepare_cached("SELECT max(seq) FROM relay_log WHERE room = ?1")
            .and_then(|mut st| st.query_row([id], |r| r.get(0)))
            .map_err(|e| self.err(e))?;
        let up_to = to_u64(up_to);
        let room = Room {
            id,
            last: to_u64(last.unwrap_or(0)).max(up_to),
            up_to,
            first_staged: u64::MAX,
        };
        self.stats.loads += 1;
        self.rooms.insert(name.to_string(), room);
        Ok(Some(room))
    }

    fn check_backlog(&self, extra: usize) -> Result<(), RelayStoreError> {
        if self.staged_bytes + extra > self.config.max_staged_bytes {
            return Err(self.err(format!(
                "{} bytes wait for a commit that keeps failing",
                self.staged_bytes
            )));
        }
        Ok(())
    }
}

fn write_relay_ops(conn: &mut Connection, ops: &[RelayOp]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut append =
            tx.prepare_cached("INSERT INTO relay_log (room, seq, data) VALUES (?1, ?2, ?3)")?;
        for op in ops {
            match op {
                RelayOp::Create { id, name } => {
                    tx.prepare_cached("INSERT INTO relay_rooms (id, name) VALUES (?1, ?2)")?
                        .execute(params![id, name])?;
                }
                RelayOp::Append { room, seq, data } => {
                    append.execute(params![room, to_i64(*seq), data])?;
                }
                RelayOp::Snapshot { room, up_to, data } => {
                    tx.prepare_cached(
                        "UPDATE relay_rooms SET snapshot = ?2, up_to = ?3 WHERE id = ?1",
                    )?
                    .execute(params![room, data, to_i64(*up_to)])?;
                    tx.prepare_cached("DELETE FROM relay_log WHERE room = ?1 AND seq <= ?2")?
                        .execute(params![room, to_i64(*up_to)])?;
                }
                RelayOp::Remove { id } => {
                    tx.prepare_cached("DELETE FROM relay_log WHERE room = ?1")?
                        .execute([id])?;
                    tx.prepare_cached("DELETE FROM relay_rooms WHERE id = ?1")?
                        .execute([id])?;
                }
            }
        }
    }
    tx.commit()
}

impl RelayStore for SqliteRelayStore {
    fn append(&mut self, room: &str, blob: &[u8]) -> Result<u64, RelayStoreError> {
        self.check_backlog(blob.len())?;
        let mut r = match self.room(room)? {
            Some(r) => r,
            None => {
                let id = self.next_id;
                self.next_id += 1;
                self.stage(RelayOp::Create {
                    id,
                    name: room.to_string(),
                });
                Room {
                    id,
                    last: 0,
                    up_to: 0,
                    first_staged: u64::MAX,
                }
            }
        };
        r.last += 1;
        r.first_staged = r.first_staged.min(r.last);
        self.rooms.insert(room.to_string(), r);
        self.stage(RelayOp::Append {
            room: r.id,
            seq: r.last,
            data: blob.to_vec(),
        });
        Ok(r.last)
    }

    fn read_after(
        &mut self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<RelayEntry>, RelayStoreError> {
        let Some(r) = self.room(room)? else {
            return Ok(Vec::new());
        };
        if after < r.up_to {
            return Err(RelayStoreError::Compacted {
                after,
                up_to: r.up_to,
            });
        }
        let mut out = Vec::new();
        // Committed entries first (all below the staged ones).
        if after.saturating_add(1) < r.first_staged {
            let below = r.first_staged;
            let rows = self
                .conn
                .prepare_cached(
                    "SELECT seq, data FROM relay_log WHERE room = ?1 AND seq > ?2 AND seq < ?3 \
                     ORDER BY seq LIMIT ?4",
                )
                .and_then(|mut st| {
                    st.query_map(
                        params![r.id, to_i64(after), to_i64(below), to_i64(limit as u64)],
                        |row| {
                            Ok(RelayEntry {
                                seq: to_u64(row.get(0)?),
                                data: row.get(1)?,
                            })
                        },
                    )?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(|e| self.err(e))?;
            out = rows;
        }
        if out.len() < limit && r.first_staged != u64::MAX {
            for op in &self.staged {
                if out.len() >= limit {
                    break;
                }
                if let RelayOp::Append { room, seq, data } = op
                    && *room == r.id
                    && *seq > after
                {
                    out.push(RelayEntry {
                        seq: *seq,
                        data: data.clone(),
                    });
                }
            }
        }
        Ok(out)
    }

    fn last_seq(&mut self, room: &str) -> Result<u64, RelayStoreError> {
        Ok(self.room(room)?.map_or(0, |r| r.last))
    }

    fn snapshot(&mut self, room: &str) -> Result<Option<RelaySnapshot>, RelayStoreError> {
        let Some(r) = self.room(room)? else {
            return Ok(None);
        };
        let staged = self.staged.iter().rev().find_map(|op| match op {
            RelayOp::Snapshot { room, up_to, data } if *room == r.id => Some(RelaySnapshot {
                up_to: *up_to,
                data: data.clone(),
            }),
            _ => None,
        });
        if staged.is_some() {
            return Ok(staged);
        }
        let row = self
            .conn
            .prepare_cached("SELECT snapshot, up_to FROM relay_rooms WHERE id = ?1")
            .and_then(|mut st| {
                st.query_row([r.id], |row| {
                    Ok((row.get::<_, Option<Vec<u8>>>(0)?, row.get::<_, i64>(1)?))
                })
                .optional()
            })
            .map_err(|e| self.err(e))?;
        Ok(match row {
            Some((Some(data), up_to)) => Some(RelaySnapshot {
                up_to: to_u64(up_to),
                data,
            }),
            _ => None,
        })
    }

    fn replace_snapshot(
        &mut self,
        room: &str,
        up_to: u64,
        data: &[u8],
    ) -> Result<(), RelayStoreError> {
        let r = self.room(room)?.unwrap_or(Room {
            id: 0,
            last: 0,
            up_to: 0,
            first_staged: u64::MAX,
        });
        if up_to <= r.up_to {
            return Err(RelayStoreError::StaleSnapshot {
                up_to,
                current: r.up_to,
            });
        }
        if up_to > r.last {
            return Err(RelayStoreError::SnapshotAhead {
                up_to,
                last: r.last,
            });
        }
        self.check_backlog(data.len())?;
        // Staged appends the snapshot covers need not be written at all.
        self.staged.retain(
            |op| !matches!(op, RelayOp::Append { room, seq, .. } if *room == r.id && *seq <= up_to),
        );
        self.stage(RelayOp::Snapshot {
            room: r.id,
            up_to,
            data: data.to_vec(),
        });
        let first_staged = self
            .staged
            .iter()
            .filter_map(|op| match op {
                RelayOp::Append { room, seq, .. } if *room == r.id => Some(*seq),
                _ => None,
            })
            .min()
            .unwrap_or(u64::MAX);
        self.rooms.insert(
            room.to_string(),
            Room {
                up_to,
                first_staged,
                ..r
            },
        );
        Ok(())
    }

    fn remove_room(&mut self, room: &str) -> Result<bool, RelayStoreError> {
        let Some(r) = self.room(room)? else {
            return Ok(false);
        };
        self.staged.retain(|op| match op {
            RelayOp::Append { room, .. } | RelayOp::Snapshot { room, .. } => *room != r.id,
            _ => true,
        });
        self.stage(RelayOp::Remove { id: r.id });
        self.rooms.remove(room);
        self.removed.insert(room.to_string());
        Ok(true)
    }

    fn flush(&mut self) -> Result<bool, RelayStoreError> {
        if self.staged.is_empty() {
            return Ok(true);
        }
        if let Err(e) = write_relay_ops(&mut self.conn, &self.staged) {
            self.stats.failed_commits += 1;
            return Err(self.err(e));
        }
        self.stats.commits += 1;
        for op in self.staged.drain(..) {
            match op {
                RelayOp::Append { .. } => self.stats.appended += 1,
                RelayOp::Snapshot { .. } => self.stats.snapshots += 1,
                _ => {}
            }
        }
        self.staged_bytes = 0;
        self.removed.clear();
        for r in self.rooms.values_mut() {
            r.first_staged = u64::MAX;
        }
        Ok(true)
    }
}

impl std::fmt::Debug for SqliteRelayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteRelayStore")
            .field("path", &self.path)
            .field("rooms", &self.rooms.len())
            .field("staged", &self.staged.len())
            .field("stats", &self.stats)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::relay_store_contract;

    pub(crate) fn temp_path(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "css-sqlite-unit-{}-{tag}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("store.sqlite")
    }

    #[test]
    fn sqlite_relay_store_contract() {
        let path = temp_path("relay");
        let store = SqliteRelayStore::open(&path).unwrap();
        relay_store_contract(store, |s| {
            drop(s);
            SqliteRelayStore::open(&path).unwrap()
        });
    }

    #[test]
    fn relay_store_refuses_a_second_process_and_garbage() {
        let path = temp_path("relay-lock");
        let _first = SqliteRelayStore::open(&path).unwrap();
        assert!(matches!(
            SqliteRelayStore::open(&path),
            Err(RelayStoreError::Storage(_))
        ));
        let junk = temp_path("relay-junk");
        std::fs::write(&junk, vec![0x5a; 8192]).unwrap();
        assert!(matches!(
            SqliteRelayStore::open(&junk),
            Err(RelayStoreError::Storage(_))
        ));
    }

    #[test]
    fn relay_store_keeps_staged_blobs_when_the_disk_is_full() {
        let path = temp_path("relay-full");
        let config = SqliteConfig {
            max_size_bytes: Some(64 * 1024),
            ..SqliteConfig::default()
        };
        let mut store = SqliteRelayStore::open_with(&path, config).unwrap();
        let blob = vec![7u8; 4096];
        let mut durable = 0;
        let mut failed = false;
        for _ in 0..64 {
            let seq = store.append("r", &blob).unwrap();
            match store.flush() {
                Ok(true) => durable = seq,
                Err(RelayStoreError::Storage(_)) => {
                    failed = true;
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(failed, "the quota must be hit");
        // The refused blob is still readable (staged) and keeps its number.
        assert_eq!(store.last_seq("r").unwrap(), durable + 1);
        assert_eq!(store.read_after("r", durable, 10).unwrap().len(), 1);
        assert!(store.stats().failed_commits >= 1);
        drop(store);
        let mut again = SqliteRelayStore::open(&path).unwrap();
        assert_eq!(again.last_seq("r").unwrap(), durable);
    }
}
