//! The registry's file format: the schema, the journal (each commit's
//! updates as one row, folded into one `updates` row per document every few
//! dozen commits), the transaction that writes a batch, the in-memory mirror
//! of the unfolded journal, and loading a document back from all of it.

use std::collections::BTreeMap;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use super::registry::{Loaded, SqliteRegistry};
use super::storage;
use crate::document::{ApplyOutcome, Document};
use crate::registry::RegistryError;

pub(super) const REGISTRY_SCHEMA: &str = "
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
pub(super) enum DocOp {
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
    pub(super) fn bytes(&self) -> usize {
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
pub(super) struct Batch {
    pub(super) ops: Vec<DocOp>,
    pub(super) updates: Vec<u8>,
    /// Updates in `updates`.
    pub(super) count: u64,
    /// Bytes of the ops and updates.
    pub(super) bytes: usize,
}

impl Batch {
    pub(super) fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.updates.is_empty()
    }

    pub(super) fn push_update(&mut self, doc: i64, seq: i64, update: &[u8], len: u32) {
        self.updates.extend_from_slice(&doc.to_le_bytes());
        self.updates.extend_from_slice(&seq.to_le_bytes());
        self.updates.extend_from_slice(&(len + 4).to_le_bytes());
        self.updates.extend_from_slice(&len.to_le_bytes());
        self.updates.extend_from_slice(update);
        self.count += 1;
        self.bytes += update.len() + ENTRY_HEADER + 4;
    }

    pub(super) fn push_op(&mut self, op: DocOp) {
        self.bytes += op.bytes();
        self.ops.push(op);
    }

    /// Appends `later` (whose writes come after these).
    pub(super) fn append(&mut self, mut later: Batch) {
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
pub(super) struct Store {
    pub(super) conn: Connection,
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

impl Store {
    /// The store over `conn`, whose unfolded journal (rows and floors, from
    /// [`read_journal`]) is mirrored in memory.
    pub(super) fn new(conn: Connection, rows: Vec<Arc<Vec<u8>>>, floors: Floors) -> Self {
        Store {
            conn,
            journal_bytes: rows.iter().map(|r| r.len()).sum(),
            rows,
            index: BTreeMap::new(),
            indexed: 0,
            floors,
        }
    }

    /// Writes `ops` and the journal entries in `updates` in one transaction
    /// and updates the journal mirror.
    pub(super) fn write(&mut self, ops: &[DocOp], updates: &Arc<Vec<u8>>) -> rusqlite::Result<()> {
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
pub(super) fn read_journal(conn: &Connection) -> Result<JournalRead, String> {
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

impl<D: Document> SqliteRegistry<D> {
    /// Loads `name` from the file: snapshot, then its log replayed.
    pub(super) fn load(&mut self, name: &str) -> Result<Option<Loaded<D>>, RegistryError> {
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
}
