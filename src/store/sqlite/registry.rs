//! [`SqliteRegistry`]: the documents in memory, the writes staged for the
//! next commit, and the [`Registry`] contract on top of the committer
//! thread (`committer`) and the file format (`journal`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension};

use super::committer::{CommitterState, Shared, run_committer};
use super::journal::{Batch, DocOp, REGISTRY_SCHEMA, Store, read_journal};
use super::{SqliteConfig, SqliteStats, connect, storage};
use crate::document::Document;
use crate::registry::{
    Commit, CommitDone, CommitId, CommitWaker, DocFactory, OpenPolicy, Registry, RegistryError,
};

pub(super) struct Loaded<D> {
    pub(super) id: i64,
    pub(super) doc: D,
    /// Sequence number of the next log entry.
    pub(super) next_seq: i64,
    /// Log entries since the last snapshot (committed or staged).
    pub(super) log_len: u64,
    /// Bytes of those entries.
    pub(super) log_bytes: usize,
    /// Size of the last snapshot written (compaction waits until the log
    /// is at least as large, so snapshots cost at most as much as updates).
    pub(super) snapshot_len: usize,
    /// The commit holding this document's newest write (staged writes: the
    /// next commit). Until it is on disk the document stays loaded: the
    /// file does not have those writes yet.
    pub(super) written_in: u64,
    /// Queued for a compaction check at the next commit.
    pub(super) compact_queued: bool,
    /// An update was applied but could not be staged: the next flush writes
    /// a snapshot (which holds it) and this document may not be unloaded.
    pub(super) needs_snapshot: bool,
    /// Bumped on every access; `unload_idle` watches it.
    pub(super) uses: u64,
    /// `(uses, when)` when `unload_idle` last saw the counter change.
    pub(super) idle_mark: Option<(u64, Instant)>,
    /// The file has its `docs` row, or the next commit writes it. A
    /// document only opened is not: its row is staged with its first
    /// write, so opening names writes nothing.
    pub(super) stored: bool,
    /// [`Registry::unload`] was asked while writes were not on disk: it is
    /// dropped once they are (unless opened again before).
    pub(super) unload_wanted: bool,
}

impl<D> Loaded<D> {
    pub(super) fn new(id: i64, doc: D) -> Self {
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

impl<D> Loaded<D> {
    /// No write of this document is waiting: the file has it all.
    fn unloadable(&self, durable_through: u64) -> bool {
        !self.needs_snapshot && self.written_in <= durable_through
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
    pub(super) shared: Arc<Shared>,
    pub(super) committer: Option<JoinHandle<()>>,
    pub(super) path: PathBuf,
    pub(super) config: SqliteConfig,
    pub(super) factory: DocFactory<D>,
    pub(super) policy: OpenPolicy,
    pub(super) max_name_len: usize,
    pub(super) docs: BTreeMap<String, Loaded<D>>,
    /// Writes since the last hand-over.
    pub(super) staged: Batch,
    /// Documents to heal with a snapshot / to check for compaction at the
    /// next commit.
    pub(super) heal_due: Vec<String>,
    pub(super) compact_due: Vec<String>,
    /// Names removed while their `Remove` is not on disk yet, with the
    /// commit holding it: not loadable.
    pub(super) removed: BTreeMap<String, u64>,
    /// Documents to drop once their writes are on disk
    /// ([`Loaded::unload_wanted`]).
    pub(super) unload_due: Vec<String>,
    /// An update could not be staged since the last flush: that flush fails.
    pub(super) unstaged: Option<String>,
    /// The newest commit id handed to the committer.
    pub(super) last_commit: u64,
    /// [`Registry::commit`] was used: the committer records completions.
    pub(super) reporting: bool,
    pub(super) next_id: i64,
    /// Loads and replays (the committer counts the rest).
    pub(super) stats: SqliteStats,
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
            store: Mutex::new(Store::new(conn, rows, floors)),
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
    pub(super) fn forget_removed(&mut self) {
        let durable = self.shared.durable_through.load(Ordering::Acquire);
        self.removed.retain(|_, id| *id > durable);
    }

    /// Stages what a commit writes besides the reported updates: snapshots
    /// healing updates that could not be staged, compaction of long logs.
    pub(super) fn prepare(&mut self) {
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
