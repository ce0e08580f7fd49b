//! [`SqliteRelayStore`]: the relay rooms' append-only logs of opaque blobs
//! and their snapshots, staged in memory and written in one transaction per
//! flush.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteConfig, SqliteStats, connect, storage};
use crate::store::relay::check_room;
use crate::store::{RelayEntry, RelaySnapshot, RelayStore, RelayStoreError};

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
/// [`SqliteRegistry`](super::SqliteRegistry) (WAL, `synchronous=FULL` by default).
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

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::relay::relay_store_contract;

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
