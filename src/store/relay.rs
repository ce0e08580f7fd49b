//! Relay storage (feature `unstable-relay`): what relay mode, the server
//! that never parses CRDT data, needs from storage. The server does not run
//! relay mode yet; the trait may change before it does.

use std::collections::BTreeMap;

use thiserror::Error;

/// Longest room name a relay store accepts, in bytes.
pub const MAX_ROOM_NAME: usize = 512;

/// One blob of a relay room's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayEntry {
    /// Its sequence number in the room (from 1, never reused).
    pub seq: u64,
    /// The opaque blob.
    pub data: Vec<u8>,
}

/// A relay room's snapshot: the state of every blob up to `up_to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelaySnapshot {
    /// The last sequence number the snapshot covers.
    pub up_to: u64,
    /// The opaque snapshot.
    pub data: Vec<u8>,
}

/// Errors of a [`RelayStore`] operation.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayStoreError {
    /// The room name is not acceptable (empty or longer than
    /// [`MAX_ROOM_NAME`]).
    #[error("invalid room name: {0}")]
    InvalidRoom(String),
    /// A snapshot upload covers no more than the current snapshot.
    #[error("stale snapshot: covers up to {up_to}, the stored one up to {current}")]
    StaleSnapshot {
        /// What the upload claims to cover.
        up_to: u64,
        /// What the stored snapshot covers.
        current: u64,
    },
    /// A snapshot upload claims blobs the room does not have yet.
    #[error("snapshot covers up to {up_to} but the room's last blob is {last}")]
    SnapshotAhead {
        /// What the upload claims to cover.
        up_to: u64,
        /// The room's last sequence number.
        last: u64,
    },
    /// Blobs after `after` up to `up_to` were replaced by a snapshot: read
    /// [`RelayStore::snapshot`] first, then the log after its `up_to`.
    #[error("blobs after {after} were compacted into a snapshot up to {up_to}")]
    Compacted {
        /// The requested start.
        after: u64,
        /// The snapshot's `up_to`.
        up_to: u64,
    },
    /// The storage layer failed; nothing staged since the last successful
    /// flush is durable.
    #[error("storage error: {0}")]
    Storage(String),
}

/// Storage for relay mode: per room, an append-only log of opaque blobs with
/// monotonic sequence numbers and the latest snapshot.
///
/// Writes may be staged: they are visible to reads at once and durable after
/// a [`RelayStore::flush`] that returned `Ok(true)` (one commit for
/// everything staged: group commit). Acknowledge blobs as durable only then.
///
/// ```
/// use crdt_socket_sync::store::{MemoryRelayStore, RelayStore, RelayStoreError};
///
/// let mut store = MemoryRelayStore::new();
/// assert_eq!(store.append("room", b"a")?, 1);
/// assert_eq!(store.append("room", b"b")?, 2);
/// assert_eq!(store.append("room", b"c")?, 3);
/// // A client uploads a snapshot covering blobs 1..=2: the log keeps 3.
/// store.replace_snapshot("room", 2, b"ab")?;
/// let snap = store.snapshot("room")?.unwrap();
/// assert_eq!((snap.up_to, snap.data.as_slice()), (2, &b"ab"[..]));
/// let rest = store.read_after("room", snap.up_to, usize::MAX)?;
/// assert_eq!(rest.len(), 1);
/// assert_eq!(rest[0].seq, 3);
/// // Older uploads are refused.
/// assert!(matches!(
///     store.replace_snapshot("room", 1, b"a"),
///     Err(RelayStoreError::StaleSnapshot { .. })
/// ));
/// // The memory store is not durable.
/// assert_eq!(store.flush()?, false);
/// # Ok::<(), RelayStoreError>(())
/// ```
pub trait RelayStore {
    /// Appends `blob` to `room` (creating the room) and returns its sequence
    /// number: one more than the room's last, starting at 1.
    fn append(&mut self, room: &str, blob: &[u8]) -> Result<u64, RelayStoreError>;

    /// Up to `limit` blobs of `room` with a sequence number above `after`,
    /// in order. An unknown room has none. Fails with
    /// [`RelayStoreError::Compacted`] when some of them were replaced by a
    /// snapshot.
    fn read_after(
        &mut self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<RelayEntry>, RelayStoreError>;

    /// The room's last sequence number (0 for an unknown or empty room).
    fn last_seq(&mut self, room: &str) -> Result<u64, RelayStoreError>;

    /// The room's latest snapshot, if any.
    fn snapshot(&mut self, room: &str) -> Result<Option<RelaySnapshot>, RelayStoreError>;

    /// Replaces the room's snapshot with `data`, covering blobs up to
    /// `up_to`, and drops those blobs from the log. Refuses uploads that
    /// cover no more than the stored snapshot
    /// ([`RelayStoreError::StaleSnapshot`]) or blobs the room does not have
    /// ([`RelayStoreError::SnapshotAhead`]).
    fn replace_snapshot(
        &mut self,
        room: &str,
        up_to: u64,
        data: &[u8],
    ) -> Result<(), RelayStoreError>;

    /// Deletes a room, its log and its snapshot. Returns whether it existed.
    fn remove_room(&mut self, room: &str) -> Result<bool, RelayStoreError>;

    /// Makes everything staged durable (one commit). `Ok(true)`: it is on
    /// durable storage; `Ok(false)`: this store is not durable.
    fn flush(&mut self) -> Result<bool, RelayStoreError>;
}

pub(crate) fn check_room(room: &str) -> Result<(), RelayStoreError> {
    if room.is_empty() || room.len() > MAX_ROOM_NAME {
        return Err(RelayStoreError::InvalidRoom(format!(
            "length must be 1..={MAX_ROOM_NAME}"
        )));
    }
    Ok(())
}

#[derive(Debug, Default)]
struct MemoryRoom {
    log: BTreeMap<u64, Vec<u8>>,
    snapshot: Option<RelaySnapshot>,
    last: u64,
}

/// A [`RelayStore`] in memory: nothing survives a restart and
/// [`RelayStore::flush`] returns `Ok(false)`.
///
/// ```
/// use crdt_socket_sync::store::{MemoryRelayStore, RelayStore};
/// let mut store = MemoryRelayStore::new();
/// store.append("room", b"hello").unwrap();
/// assert_eq!(store.last_seq("room").unwrap(), 1);
/// assert_eq!(store.rooms(), vec!["room".to_string()]);
/// ```
#[derive(Debug, Default)]
pub struct MemoryRelayStore {
    rooms: BTreeMap<String, MemoryRoom>,
}

impl MemoryRelayStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names of the rooms, sorted.
    pub fn rooms(&self) -> Vec<String> {
        self.rooms.keys().cloned().collect()
    }
}

impl RelayStore for MemoryRelayStore {
    fn append(&mut self, room: &str, blob: &[u8]) -> Result<u64, RelayStoreError> {
        check_room(room)?;
        let r = self.rooms.entry(room.to_string()).or_default();
        r.last += 1;
        r.log.insert(r.last, blob.to_vec());
        Ok(r.last)
    }

    fn read_after(
        &mut self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<RelayEntry>, RelayStoreError> {
        check_room(room)?;
        let Some(r) = self.rooms.get(room) else {
            return Ok(Vec::new());
        };
        if let Some(s) = &r.snapshot
            && after < s.up_to
        {
            return Err(RelayStoreError::Compacted {
                after,
                up_to: s.up_to,
            });
        }
        Ok(r.log
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(seq, data)| RelayEntry {
                seq: *seq,
                data: data.clone(),
            })
            .collect())
    }

    fn last_seq(&mut self, room: &str) -> Result<u64, RelayStoreError> {
        check_room(room)?;
        Ok(self.rooms.get(room).map_or(0, |r| r.last))
    }

    fn snapshot(&mut self, room: &str) -> Result<Option<RelaySnapshot>, RelayStoreError> {
        check_room(room)?;
        Ok(self.rooms.get(room).and_then(|r| r.snapshot.clone()))
    }

    fn replace_snapshot(
        &mut self,
        room: &str,
        up_to: u64,
        data: &[u8],
    ) -> Result<(), RelayStoreError> {
        check_room(room)?;
        let r = self.rooms.entry(room.to_string()).or_default();
        let current = r.snapshot.as_ref().map_or(0, |s| s.up_to);
        if up_to <= current {
            return Err(RelayStoreError::StaleSnapshot { up_to, current });
        }
        if up_to > r.last {
            return Err(RelayStoreError::SnapshotAhead {
                up_to,
                last: r.last,
            });
        }
        r.log = r.log.split_off(&(up_to + 1));
        r.snapshot = Some(RelaySnapshot {
            up_to,
            data: data.to_vec(),
        });
        Ok(())
    }

    fn remove_room(&mut self, room: &str) -> Result<bool, RelayStoreError> {
        check_room(room)?;
        Ok(self.rooms.remove(room).is_some())
    }

    fn flush(&mut self) -> Result<bool, RelayStoreError> {
        Ok(false)
    }
}

/// The behaviour every [`RelayStore`] must have, as a function the tests of
/// each implementation call. `reopen` rebuilds the store from its storage
/// (dropping the old one first), or returns the same store when it has none.
#[cfg(test)]
pub(crate) fn relay_store_contract<S: RelayStore>(mut store: S, mut reopen: impl FnMut(S) -> S) {
    assert!(matches!(
        store.append("", b"x"),
        Err(RelayStoreError::InvalidRoom(_))
    ));
    assert_eq!(store.last_seq("r").unwrap(), 0);
    assert!(store.read_after("r", 0, 10).unwrap().is_empty());
    assert_eq!(store.snapshot("r").unwrap(), None);
    for i in 1..=5u64 {
        assert_eq!(store.append("r", &[i as u8]).unwrap(), i);
    }
    assert_eq!(store.append("other", b"o").unwrap(), 1);
    let all = store.read_after("r", 0, usize::MAX).unwrap();
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(all[2].data, vec![3]);
    let _ = store.flush().unwrap();
    // Reads mix committed and staged blobs.
    assert_eq!(store.append("r", b"x6").unwrap(), 6);
    let mixed = store.read_after("r", 4, 10).unwrap();
    assert_eq!(mixed.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5, 6]);
    assert_eq!(mixed[1].data, b"x6".to_vec());
    assert_eq!(store.read_after("r", 3, 1).unwrap().len(), 1);
    assert_eq!(store.read_after("r", 3, 1).unwrap()[0].seq, 4);
    assert!(store.read_after("r", 6, 10).unwrap().is_empty());
    assert!(matches!(
        store.replace_snapshot("r", 7, b"s"),
        Err(RelayStoreError::SnapshotAhead { up_to: 7, last: 6 })
    ));
    assert!(matches!(
        store.replace_snapshot("r", 0, b"s"),
        Err(RelayStoreError::StaleSnapshot { .. })
    ));
    store.replace_snapshot("r", 3, b"s3").unwrap();
    assert!(matches!(
        store.replace_snapshot("r", 3, b"again"),
        Err(RelayStoreError::StaleSnapshot {
            up_to: 3,
            current: 3
        })
    ));
    assert!(matches!(
        store.read_after("r", 1, 10),
        Err(RelayStoreError::Compacted { after: 1, up_to: 3 })
    ));
    let rest = store.read_after("r", 3, 10).unwrap();
    assert_eq!(
        rest.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    // Sequence numbers continue after a snapshot and across a restart.
    assert_eq!(store.append("r", b"7").unwrap(), 7);
    let _ = store.flush().unwrap();
    let mut store = reopen(store);
    assert_eq!(store.last_seq("r").unwrap(), 7);
    assert_eq!(
        store.snapshot("r").unwrap(),
        Some(RelaySnapshot {
            up_to: 3,
            data: b"s3".to_vec()
        })
    );
    let rest = store.read_after("r", 3, 10).unwrap();
    assert_eq!(
        rest.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![4, 5, 6, 7]
    );
    assert_eq!(rest[3].data, b"7".to_vec());
    // A snapshot covering everything, staged appends included.
    assert_eq!(store.append("r", b"8").unwrap(), 8);
    store.replace_snapshot("r", 8, b"s8").unwrap();
    assert!(store.read_after("r", 8, 10).unwrap().is_empty());
    assert_eq!(store.append("r", b"9").unwrap(), 9);
    assert_eq!(store.last_seq("other").unwrap(), 1);
    assert!(store.remove_room("other").unwrap());
    assert!(!store.remove_room("other").unwrap());
    assert_eq!(store.last_seq("other").unwrap(), 0);
    assert_eq!(store.append("other", b"again").unwrap(), 1);
    let _ = store.flush().unwrap();
    let mut store = reopen(store);
    assert_eq!(store.last_seq("r").unwrap(), 9);
    assert_eq!(store.snapshot("r").unwrap().unwrap().up_to, 8);
    assert_eq!(store.read_after("r", 8, 10).unwrap()[0].data, b"9".to_vec());
    assert_eq!(store.last_seq("other").unwrap(), 1);
    assert_eq!(
        store.read_after("other", 0, 10).unwrap()[0].data,
        b"again".to_vec()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_relay_store_contract() {
        relay_store_contract(MemoryRelayStore::new(), |s| s);
    }
}
