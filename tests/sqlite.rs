//! The SQLite registry behind a real hub: durability across restarts, lazy
//! loading, compaction, group commit, the asynchronous path (`Hub::commit`
//! with the committer thread), and storage failures (corrupt file, read-only
//! storage, full disk) that must never produce a `durable` ack for an update
//! that is not on disk.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{OpLog, joining_client};
use crdt_socket_sync::client::{ClientEvent, ClientSession};
use crdt_socket_sync::document::Document;
use crdt_socket_sync::registry::{MemoryRegistry, Registry, RegistryError};
use crdt_socket_sync::server::{AllowAll, ConnId, Hub, ServerConfig};
use crdt_socket_sync::store::{SqliteConfig, SqliteRegistry};
use crdt_socket_sync::wire::ErrorCode;

const DOC: &str = "notes";

/// A fresh directory for one test.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("css-sqlite-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn open_reg(path: &Path) -> SqliteRegistry<OpLog> {
    SqliteRegistry::open(path, |_| OpLog::new(0)).unwrap()
}

fn open_reg_with(path: &Path, config: SqliteConfig) -> SqliteRegistry<OpLog> {
    SqliteRegistry::open_with(path, config, |_| OpLog::new(0)).unwrap()
}

/// Per-client op counters of an `OpLog` version.
fn clock(doc: &OpLog) -> BTreeMap<u32, u32> {
    doc.version()
        .chunks(8)
        .map(|c| {
            (
                u32::from_le_bytes(c[0..4].try_into().unwrap()),
                u32::from_le_bytes(c[4..8].try_into().unwrap()),
            )
        })
        .collect()
}

struct Peer {
    session: ClientSession,
    reg: MemoryRegistry<OpLog>,
    conn: ConnId,
    /// Highest `durable` / `applied` the server acknowledged.
    durable: u64,
    applied: u64,
    /// Sequence number of each edit (edit `n` is op `n` of this client).
    seqs: Vec<u64>,
    storage_errors: usize,
}

/// How the rig's server loop commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `Hub::handle_input` and `Hub::flush` per frame: one commit (waiting
    /// for the disk) per frame.
    Immediate,
    /// A round delivers every client's frames with `handle_input` and
    /// then calls `Hub::flush` once (group commit, waiting).
    Deferred,
    /// Like `Deferred` with `Hub::commit` (no waiting); `Hub::poll_commits`
    /// when the registry's commit waker fires.
    Async,
}

/// One hub with a durable registry and some clients, over in-memory pipes.
struct Rig {
    now: Instant,
    hub: Hub<AllowAll>,
    reg: SqliteRegistry<OpLog>,
    peers: Vec<Peer>,
    mode: Mode,
    /// Fired by the registry's commit waker (async mode).
    woken: mpsc::Receiver<()>,
    /// Hub commits made (async mode).
    hub_commits: u64,
    /// Every `(applied, durable)` ack of client 0, in order.
    acks0: Vec<(u64, u64)>,
}

impl Rig {
    fn new(reg: SqliteRegistry<OpLog>, clients: usize, deferred: bool) -> Self {
        let mode = if deferred {
            Mode::Deferred
        } else {
            Mode::Immediate
        };
        Self::with_mode(reg, clients, mode)
    }

    fn with_mode(mut reg: SqliteRegistry<OpLog>, clients: usize, mode: Mode) -> Self {
        let now = Instant::now();
        let (tx, woken) = mpsc::channel();
        let tx = Mutex::new(tx);
        reg.set_commit_waker(Arc::new(move || {
            let _ = tx.lock().unwrap().send(());
        }));
        let mut rig = Rig {
            now,
            hub: Hub::new(ServerConfig::default(), AllowAll),
            reg,
            peers: Vec::new(),
            mode,
            woken,
            hub_commits: 0,
            acks0: Vec::new(),
        };
        for i in 0..clients {
            let (session, reg, conn) = joining_client(&mut rig.hub, i, DOC, now);
            rig.peers.push(Peer {
                session,
                reg,
                conn,
                durable: 0,
                applied: 0,
                seqs: Vec::new(),
                storage_errors: 0,
            });
        }
        rig.run();
        rig
    }

    /// Client `i` makes one edit and hands it to its session.
    fn edit(&mut self, i: usize) {
        let p = &mut self.peers[i];
        let n = p.seqs.len();
        p.reg
            .open(DOC)
            .unwrap()
            .edit(format!("c{i}e{n};").as_bytes());
        let seq = p
            .session
            .flush_local(&mut p.reg, DOC, self.now)
            .unwrap()
            .expect("an edit was made");
        p.seqs.push(seq);
    }

    /// Moves frames until nothing moves.
    fn run(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            let mut delivered = false;
            for p in &mut self.peers {
                while let Some(frame) = p.session.poll_transmit() {
                    moved = true;
                    delivered = true;
                    if self.mode == Mode::Immediate {
                        self.hub
                            .handle_input(p.conn, self.now, &frame, &mut self.reg);
                        self.hub.flush(&mut self.reg);
                    } else {
                        self.hub
                            .handle_input(p.conn, self.now, &frame, &mut self.reg);
                    }
                }
            }
            match self.mode {
                Mode::Deferred if delivered => self.hub.flush(&mut self.reg),
                Mode::Async => {
                    if delivered {
                        self.hub.commit(&mut self.reg);
                        self.hub_commits += 1;
                    }
                    if !delivered && self.hub.commits_in_flight() > 0 {
                        // Nothing else to do: wait for the disk.
                        self.woken
                            .recv_timeout(Duration::from_secs(10))
                            .expect("the committer reports");
                        moved = true;
                    }
                    self.hub.poll_commits(&mut self.reg);
                }
                _ => {}
            }
            while let Some((conn, frame)) = self.hub.poll_transmit() {
                moved = true;
                let p = self.peers.iter_mut().find(|p| p.conn == conn).unwrap();
                p.session.handle_input(self.now, &frame, &mut p.reg);
            }
            while self.hub.poll_event().is_some() {}
            for p in &mut self.peers {
                while let Some(e) = p.session.poll_event() {
                    match e {
                        ClientEvent::Acknowledged {
                            applied, durable, ..
                        } => {
                            if std::env::var_os("DBG").is_some() {
                                eprintln!(
                                    "ack {} applied={applied} durable={durable} seqs={:?}",
                                    p.conn.0, p.seqs
                                );
                            }
                            assert!(durable >= p.durable, "durable acks never go back");
                            assert!(applied >= p.applied, "applied acks never go back");
                            assert!(durable <= applied, "durable never passes applied");
                            p.durable = durable;
                            p.applied = applied;
                            if p.conn.0 == 0 {
                                self.acks0.push((applied, durable));
                            }
                        }
                        ClientEvent::DocumentError {
                            code: ErrorCode::Storage,
                            ..
                        } => p.storage_errors += 1,
                        _ => {}
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("network did not quiesce");
    }

    /// Edits of client `i` acknowledged as durable (a prefix of its edits).
    fn durable_edits(&self, i: usize) -> u32 {
        let p = &self.peers[i];
        p.seqs.iter().take_while(|s| **s <= p.durable).count() as u32
    }
}

/// Every edit acknowledged as durable is in `reg`'s copy of the document.
fn assert_durable_edits_present(
    reg: &mut SqliteRegistry<OpLog>,
    durable: &[u32],
) -> BTreeMap<u32, u32> {
    let stored = clock(reg.open(DOC).unwrap());
    for (i, want) in durable.iter().enumerate() {
        let have = stored.get(&(i as u32 + 1)).copied().unwrap_or(0);
        assert!(
            have >= *want,
            "client {i}: {want} edits acked durable, only {have} stored"
        );
    }
    stored
}

#[test]
fn durable_acks_survive_dropping_the_registry_mid_stream() {
    let dir = temp_dir("reopen");
    let path = dir.join("docs.sqlite");
    let mut total_checked = 0u64;
    for round in 0..6u32 {
        let mode = [Mode::Deferred, Mode::Immediate, Mode::Async][round as usize % 3];
        let mut rig = Rig::with_mode(open_reg(&path), 3, mode);
        let mut x = 0x9e37_79b9u32.wrapping_mul(round + 1);
        for step in 0..60 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            rig.edit((x % 3) as usize);
            if step % 7 != 0 {
                rig.run();
            }
        }
        // Frames in flight: the last inputs reach the hub without a flush,
        // then the "process" dies (the registry is dropped uncommitted).
        for p in &mut rig.peers {
            while let Some(frame) = p.session.poll_transmit() {
                rig.hub.handle_input(p.conn, rig.now, &frame, &mut rig.reg);
            }
        }
        let durable: Vec<u32> = (0..3).map(|i| rig.durable_edits(i)).collect();
        // Durable acks are outstanding only for updates after the last flush.
        assert!(durable.iter().sum::<u32>() > 0);
        drop(rig);
        let mut reg = open_reg(&path);
        assert_durable_edits_present(&mut reg, &durable);
        total_checked += u64::from(durable.iter().sum::<u32>());
    }
    assert!(total_checked >= 100, "checked {total_checked}");
}

#[test]
fn documents_load_lazily_on_first_open() {
    let dir = temp_dir("lazy");
    let path = dir.join("docs.sqlite");
    {
        let mut reg = open_reg(&path);
        for name in ["a", "b", "c"] {
            let mut author = OpLog::new(9);
            author.edit(name.as_bytes());
            let u = author.take_local_update().unwrap();
            reg.open(name).unwrap().apply(&u);
            reg.update_applied(name, &u).unwrap();
        }
        assert_eq!(reg.flush(), Ok(true));
    }
    let mut reg = open_reg(&path);
    assert!(
        reg.list().is_empty(),
        "nothing is loaded before it is opened"
    );
    assert_eq!(reg.stored().unwrap(), vec!["a", "b", "c"]);
    assert!(reg.get("b").is_none());
    assert_eq!(reg.open("b").unwrap().text(), "b");
    assert_eq!(reg.list(), vec!["b".to_string()]);
    assert_eq!(reg.stats().loads, 1);
    // Unloading keeps it stored; the next open loads it again.
    assert!(reg.unload("b"));
    assert!(reg.list().is_empty());
    assert_eq!(reg.open("b").unwrap().text(), "b");
    assert_eq!(reg.stats().loads, 2);
    // Removing deletes it from the file.
    assert!(reg.remove("a"));
    assert!(!reg.remove("a"));
    drop(reg);
    let mut reg = open_reg(&path);
    assert_eq!(reg.stored().unwrap(), vec!["b", "c"]);
    assert_eq!(reg.open("a").unwrap().text(), "", "a new, empty document");
}

#[test]
fn unload_refuses_documents_with_uncommitted_updates() {
    let dir = temp_dir("unload");
    let path = dir.join("docs.sqlite");
    let mut reg = open_reg(&path);
    let mut author = OpLog::new(3);
    author.edit(b"x");
    let u = author.take_local_update().unwrap();
    reg.open(DOC).unwrap().apply(&u);
    reg.update_applied(DOC, &u).unwrap();
    assert!(!reg.unload(DOC), "its update is not committed yet");
    assert_eq!(reg.list(), [DOC], "still loaded");
    assert_eq!(reg.flush(), Ok(true));
    assert!(reg.list().is_empty(), "dropped once its update is on disk");
    assert_eq!(reg.open(DOC).unwrap().text(), "x");
    // Opened again before its writes are on disk: it stays.
    author.edit(b"y");
    let u = author.take_local_update().unwrap();
    reg.open(DOC).unwrap().apply(&u);
    reg.update_applied(DOC, &u).unwrap();
    assert!(!reg.unload(DOC));
    reg.open(DOC).unwrap();
    assert_eq!(reg.flush(), Ok(true));
    assert_eq!(reg.list(), [DOC]);
    assert!(reg.unload(DOC));
}

#[test]
fn compaction_keeps_the_state() {
    let dir = temp_dir("compact");
    let path = dir.join("docs.sqlite");
    let config = SqliteConfig {
        compact_after: 10,
        ..SqliteConfig::default()
    };
    let mut author = OpLog::new(5);
    let mut expected = String::new();
    {
        let mut reg = open_reg_with(&path, config.clone());
        for i in 0..57 {
            let payload = format!("{i},");
            expected.push_str(&payload);
            author.edit(payload.as_bytes());
            let u = author.take_local_update().unwrap();
            reg.open(DOC).unwrap().apply(&u);
            reg.update_applied(DOC, &u).unwrap();
            if i % 3 == 0 {
                assert_eq!(reg.flush(), Ok(true));
            }
        }
        assert_eq!(reg.flush(), Ok(true));
        assert!(reg.stats().snapshots >= 2, "{:?}", reg.stats());
    }
    let mut reg = open_reg_with(&path, config);
    assert_eq!(reg.open(DOC).unwrap().text(), expected);
    assert!(
        reg.stats().replayed < 57,
        "only the log after the snapshot is replayed: {:?}",
        reg.stats()
    );
    // Sequence numbers continue after the snapshot.
    author.edit(b"tail");
    let u = author.take_local_update().unwrap();
    reg.open(DOC).unwrap().apply(&u);
    reg.update_applied(DOC, &u).unwrap();
    assert_eq!(reg.flush(), Ok(true));
    drop(reg);
    let mut reg = open_reg(&path);
    assert_eq!(reg.open(DOC).unwrap().text(), format!("{expected}tail"));
}

#[test]
fn group_commit_one_transaction_per_hub_flush() {
    let dir = temp_dir("group");
    let path = dir.join("docs.sqlite");
    let mut rig = Rig::new(open_reg(&path), 20, true);
    let before = rig.reg.stats();
    for i in 0..20 {
        rig.edit(i);
    }
    // Deliver every client's update without flushing...
    for p in &mut rig.peers {
        while let Some(frame) = p.session.poll_transmit() {
            rig.hub.handle_input(p.conn, rig.now, &frame, &mut rig.reg);
        }
    }
    assert_eq!(
        rig.reg.stats().commits,
        before.commits,
        "nothing committed yet"
    );
    // ...then one flush: one transaction, and every client acked durable.
    rig.hub.flush(&mut rig.reg);
    let after = rig.reg.stats();
    assert_eq!(after.commits, before.commits + 1);
    assert_eq!(after.appended, before.appended + 20);
    rig.run();
    for i in 0..20 {
        assert_eq!(rig.durable_edits(i), 1, "client {i}");
    }
}

#[test]
fn a_file_that_is_not_a_database_is_a_typed_error() {
    let dir = temp_dir("garbage");
    let path = dir.join("docs.sqlite");
    std::fs::write(
        &path,
        b"this is not an SQLite database, just some text.\n".repeat(200),
    )
    .unwrap();
    match SqliteRegistry::open(&path, |_| OpLog::new(0)) {
        Err(RegistryError::Storage(msg)) => assert!(msg.contains("docs.sqlite"), "{msg}"),
        other => panic!("expected a storage error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn corrupted_pages_and_records_are_typed_errors() {
    let dir = temp_dir("corrupt");
    let path = dir.join("docs.sqlite");
    {
        let mut reg = open_reg(&path);
        let mut author = OpLog::new(4);
        for i in 0..200 {
            author.edit(format!("MARK{i:04}").as_bytes());
            let u = author.take_local_update().unwrap();
            reg.open(DOC).unwrap().apply(&u);
            reg.update_applied(DOC, &u).unwrap();
        }
        assert_eq!(reg.flush(), Ok(true));
    }
    let clean = std::fs::read(&path).unwrap();
    // 1. One stored update's bytes changed (its magic byte): the document
    //    does not load, with a typed error.
    // (Page splits may leave stale copies in free pages: change them all.)
    let mut bad_record = clean.clone();
    let hits: Vec<usize> = bad_record
        .windows(8)
        .enumerate()
        .filter(|(_, w)| *w == b"MARK0100")
        .map(|(at, _)| at)
        .collect();
    assert!(!hits.is_empty(), "the update is in the file");
    for at in hits {
        // Layout: magic, client u32, counter u32, len u16, payload.
        bad_record[at - 10 - 1] ^= 0xff;
    }
    std::fs::write(&path, &bad_record).unwrap();
    let mut reg = open_reg(&path);
    assert!(matches!(reg.open(DOC), Err(RegistryError::Storage(_))));
    drop(reg);
    // 2. Pages overwritten with garbage: a typed error when opening the
    //    file or loading the document, never a panic.
    for (offset, len) in [(4096usize, 4096usize), (8192, 8192), (100, 2000)] {
        let mut bad = clean.clone();
        let end = (offset + len).min(bad.len());
        for (i, b) in bad[offset..end].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31) ^ 0x5a;
        }
        std::fs::write(&path, &bad).unwrap();
        match SqliteRegistry::open(&path, |_| OpLog::new(0)) {
            Err(RegistryError::Storage(_)) => {}
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(mut reg) => match reg.open(DOC) {
                Err(RegistryError::Storage(_)) => {}
                Err(other) => panic!("unexpected error {other:?}"),
                // The damage missed what this document needs.
                Ok(doc) => assert_eq!(doc.op_count(), 200),
            },
        }
    }
    // 3. A truncated file.
    std::fs::write(&path, &clean[..clean.len() / 3]).unwrap();
    if let Ok(mut reg) = SqliteRegistry::open(&path, |_| OpLog::new(0)) {
        assert!(matches!(reg.open(DOC), Err(RegistryError::Storage(_))));
    }
}

#[test]
fn a_second_registry_on_the_same_file_is_refused() {
    let dir = temp_dir("lock");
    let path = dir.join("docs.sqlite");
    let _first = open_reg(&path);
    assert!(matches!(
        SqliteRegistry::open(&path, |_| OpLog::new(0)),
        Err(RegistryError::Storage(_))
    ));
}

/// Whether this process can still write into a directory it made read-only
/// (root can).
fn permissions_enforced(dir: &Path) -> bool {
    std::fs::File::create(dir.join("probe")).is_err()
}

#[test]
fn a_read_only_data_directory_is_a_typed_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("ro-dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let enforced = permissions_enforced(&dir);
    let result = SqliteRegistry::open(dir.join("docs.sqlite"), |_| OpLog::new(0));
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    if enforced {
        assert!(matches!(result, Err(RegistryError::Storage(_))));
    } else {
        eprintln!("running as root: directory permissions are not enforced");
    }
}

#[test]
fn read_only_storage_never_acks_durable() {
    let dir = temp_dir("ro-hub");
    let path = dir.join("docs.sqlite");
    {
        let mut reg = open_reg(&path);
        let mut author = OpLog::new(99);
        author.edit(b"before;");
        let u = author.take_local_update().unwrap();
        reg.open(DOC).unwrap().apply(&u);
        reg.update_applied(DOC, &u).unwrap();
        assert_eq!(reg.flush(), Ok(true));
    }
    let config = SqliteConfig {
        read_only: true,
        ..SqliteConfig::default()
    };
    let mut rig = Rig::new(open_reg_with(&path, config), 2, false);
    assert_eq!(rig.peers[0].reg.get(DOC).unwrap().text(), "before;");
    for round in 0..10 {
        rig.edit(round % 2);
        rig.run();
    }
    for (i, p) in rig.peers.iter().enumerate() {
        assert_eq!(p.applied, *p.seqs.last().unwrap(), "applied in memory");
        // (The sync's initial update from the client carried nothing new,
        // so an ack covering only it may say durable.)
        assert_eq!(rig.durable_edits(i), 0, "no edit acknowledged as durable");
        assert!(p.storage_errors > 0, "the client was told");
    }
    assert!(rig.reg.stats().failed_commits > 0);
    drop(rig);
    let mut reg = open_reg(&path);
    assert_eq!(reg.open(DOC).unwrap().text(), "before;");
}

#[test]
fn a_full_disk_never_acks_unwritten_updates() {
    full_disk(Mode::Deferred);
}

#[test]
fn a_full_disk_never_acks_unwritten_updates_without_waiting() {
    full_disk(Mode::Async);
}

/// The disk fills up (`max_page_count`, which works as root too): typed
/// errors, no `durable` ack for anything not written.
fn full_disk(mode: Mode) {
    let dir = temp_dir(&format!("full-{mode:?}"));
    let path = dir.join("docs.sqlite");
    let config = SqliteConfig {
        max_size_bytes: Some(96 * 1024),
        ..SqliteConfig::default()
    };
    let mut rig = Rig::with_mode(open_reg_with(&path, config), 2, mode);
    let mut stalled_at = None;
    for round in 0..400 {
        let i = round % 2;
        let p = &mut rig.peers[i];
        let n = p.seqs.len();
        // Large edits fill the quota quickly.
        let payload = format!("c{i}e{n};{}", "x".repeat(700));
        p.reg.open(DOC).unwrap().edit(payload.as_bytes());
        let seq = p
            .session
            .flush_local(&mut p.reg, DOC, rig.now)
            .unwrap()
            .unwrap();
        p.seqs.push(seq);
        rig.run();
        if stalled_at.is_none() && rig.reg.stats().failed_commits > 0 {
            stalled_at = Some(round);
        }
    }
    assert!(stalled_at.is_some(), "the quota must be hit");
    let durable: Vec<u32> = (0..2).map(|i| rig.durable_edits(i)).collect();
    for (i, p) in rig.peers.iter().enumerate() {
        assert_eq!(p.applied, *p.seqs.last().unwrap(), "everything applied");
        assert!(
            (durable[i] as usize) < p.seqs.len(),
            "client {i}: not everything can be durable"
        );
        assert!(p.storage_errors > 0);
    }
    drop(rig);
    // Reopened without the quota: every durable ack is backed by the file,
    // and nothing past the quota was written.
    let mut reg = open_reg(&path);
    let stored = assert_durable_edits_present(&mut reg, &durable);
    assert!(stored.values().sum::<u32>() < 400);
}

#[test]
fn an_update_that_could_not_be_staged_is_healed_by_a_snapshot() {
    let dir = temp_dir("heal");
    let path = dir.join("docs.sqlite");
    let config = SqliteConfig {
        max_staged_bytes: 300,
        ..SqliteConfig::default()
    };
    let mut reg = open_reg_with(&path, config);
    reg.open(DOC).unwrap();
    assert_eq!(reg.flush(), Ok(true));
    let mut author = OpLog::new(8);
    author.edit(&[b'y'; 400]);
    let big = author.take_local_update().unwrap();
    reg.open(DOC).unwrap().apply(&big);
    assert!(matches!(
        reg.update_applied(DOC, &big),
        Err(RegistryError::Storage(_))
    ));
    // The flush covering it does not claim durability (it already writes
    // a snapshot holding the update); the next one succeeds.
    assert!(matches!(reg.flush(), Err(RegistryError::Storage(_))));
    assert_eq!(reg.flush(), Ok(true));
    assert!(reg.stats().snapshots >= 1);
    drop(reg);
    let mut reg = open_reg(&path);
    assert_eq!(reg.open(DOC).unwrap().op_count(), 1);
}

#[test]
fn journal_folds_and_reopens_across_removals_and_snapshots() {
    let dir = temp_dir("journal");
    let path = dir.join("docs.sqlite");
    let config = SqliteConfig {
        compact_after: 50,
        ..SqliteConfig::default()
    };
    let mut authors: Vec<OpLog> = (0..5).map(|i| OpLog::new(i + 1)).collect();
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    // Crash (drop) at several points of the fold cycle.
    for (round, commits) in [37usize, 64, 100, 3, 130].into_iter().enumerate() {
        let mut reg = open_reg_with(&path, config.clone());
        for (name, ops) in &expected {
            assert_eq!(
                reg.open(name).unwrap().op_count(),
                *ops,
                "round {round} {name}"
            );
        }
        for c in 0..commits {
            for (i, a) in authors.iter_mut().enumerate() {
                if (c + i) % 3 == 0 {
                    continue;
                }
                let name = format!("d{i}");
                a.edit(format!("r{round}c{c};").as_bytes());
                let u = a.take_local_update().unwrap();
                reg.open(&name).unwrap().apply(&u);
                reg.update_applied(&name, &u).unwrap();
                *expected.entry(name).or_default() += 1;
            }
            assert_eq!(reg.flush(), Ok(true));
        }
        if round == 2 {
            // A removed document's journal entries never come back, even
            // under a reused name.
            assert!(reg.remove("d4"));
            expected.remove("d4");
            authors[4] = OpLog::new(50);
        }
    }
    let mut reg = open_reg_with(&path, config);
    for (name, ops) in &expected {
        assert_eq!(reg.open(name).unwrap().op_count(), *ops, "{name}");
    }
}

#[test]
fn without_waiting_applied_is_acked_first_and_durable_once_on_disk() {
    let dir = temp_dir("async");
    let path = dir.join("docs.sqlite");
    let mut rig = Rig::with_mode(open_reg(&path), 2, Mode::Async);
    for step in 0..40 {
        rig.edit(step % 2);
        if step % 5 != 4 {
            rig.run();
        }
    }
    rig.run();
    for (i, p) in rig.peers.iter().enumerate() {
        assert_eq!(p.applied, *p.seqs.last().unwrap());
        assert_eq!(rig.durable_edits(i) as usize, p.seqs.len(), "client {i}");
        assert_eq!(p.storage_errors, 0);
    }
    // Every edit was acknowledged `applied` in an ack that did not yet say
    // `durable` (the disk had not answered when the hub acked it).
    for seq in &rig.peers[0].seqs {
        let first = rig.acks0.iter().find(|(a, _)| a >= seq).unwrap();
        assert!(first.1 < *seq, "seq {seq}: first ack {first:?}");
    }
    assert!(rig.hub_commits > 0);
    let stats = rig.reg.stats();
    assert!(stats.commits <= rig.hub_commits + 2, "{stats:?}");
    let durable: Vec<u32> = (0..2).map(|i| rig.durable_edits(i)).collect();
    drop(rig);
    let mut reg = open_reg(&path);
    let stored = assert_durable_edits_present(&mut reg, &durable);
    assert_eq!(stored.values().sum::<u32>(), 40);
}

/// A commit waker that blocks the committer thread (it calls the waker
/// after each transaction) until the test opens the gate: commits handed
/// over meanwhile wait in its queue.
struct Gate {
    entered: mpsc::Receiver<()>,
    open: mpsc::Sender<()>,
}

fn gate(reg: &mut SqliteRegistry<OpLog>) -> Gate {
    let (entered_tx, entered) = mpsc::channel();
    let (open, open_rx) = mpsc::channel::<()>();
    let (entered_tx, open_rx) = (Mutex::new(entered_tx), Mutex::new(open_rx));
    reg.set_commit_waker(Arc::new(move || {
        let _ = entered_tx.lock().unwrap().send(());
        let _ = open_rx.lock().unwrap().recv();
    }));
    Gate { entered, open }
}

/// One update from a fresh author to document `name`, reported to `reg`.
fn write(reg: &mut SqliteRegistry<OpLog>, name: &str) {
    let mut author = OpLog::new(7);
    author.edit(name.as_bytes());
    let u = author.take_local_update().unwrap();
    reg.open(name).unwrap().apply(&u);
    reg.update_applied(name, &u).unwrap();
}

#[test]
fn commits_handed_over_during_a_transaction_share_the_next_one() {
    use crdt_socket_sync::registry::{Commit, CommitId};
    let dir = temp_dir("group-async");
    let path = dir.join("docs.sqlite");
    let mut reg = open_reg(&path);
    let g = gate(&mut reg);
    write(&mut reg, "a");
    assert_eq!(reg.commit(), Ok(Commit::Pending(CommitId(1))));
    // The committer wrote commit 1 and is held in the waker.
    g.entered.recv_timeout(Duration::from_secs(10)).unwrap();
    let before = reg.stats();
    assert_eq!(before.commits, 1);
    for (i, name) in ["b", "c", "d"].into_iter().enumerate() {
        write(&mut reg, name);
        assert_eq!(reg.commit(), Ok(Commit::Pending(CommitId(i as u64 + 2))));
    }
    // Writes in flight: not on disk, so the document may not be unloaded
    // (a reload from the file would miss them).
    assert!(!reg.unload("d"));
    g.open.send(()).unwrap();
    // One transaction for the three commits.
    g.entered.recv_timeout(Duration::from_secs(10)).unwrap();
    g.open.send(()).unwrap();
    let after = reg.stats();
    assert_eq!(after.commits, 2, "{after:?}");
    assert_eq!(after.appended, 4);
    let done: Vec<_> = std::iter::from_fn(|| reg.poll_commit()).collect();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].through, CommitId(4));
    assert_eq!(done[0].result, Ok(()));
    assert!(
        !reg.list().contains(&"d".to_string()),
        "unloaded once on disk"
    );
    assert_eq!(reg.open("d").unwrap().text(), "d", "reloaded from the file");
    // Nothing new: everything is on disk.
    assert_eq!(reg.commit(), Ok(Commit::Durable));
    drop(g);
    drop(reg);
    let mut reg = open_reg(&path);
    assert_eq!(reg.stored().unwrap(), vec!["a", "b", "c", "d"]);
}

#[test]
fn a_failed_commit_is_reported_and_retried_by_the_next() {
    use crdt_socket_sync::registry::Commit;
    let dir = temp_dir("retry");
    let path = dir.join("docs.sqlite");
    let config = SqliteConfig {
        max_size_bytes: Some(64 * 1024),
        ..SqliteConfig::default()
    };
    let mut reg = open_reg_with(&path, config);
    let mut author = OpLog::new(2);
    author.edit(&[b'z'; 200 * 1024]);
    let big = author.take_local_update().unwrap();
    reg.open(DOC).unwrap().apply(&big);
    reg.update_applied(DOC, &big).unwrap();
    let Ok(Commit::Pending(id)) = reg.commit() else {
        panic!("pending")
    };
    let done = loop {
        if let Some(d) = reg.poll_commit() {
            break d;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(done.through, id);
    assert!(matches!(done.result, Err(RegistryError::Storage(_))));
    assert!(!reg.unload(DOC), "its update is not on disk");
    // Nothing new staged, the last commit failed: the next one retries.
    assert!(matches!(reg.commit(), Ok(Commit::Pending(next)) if next > id));
    assert!(matches!(reg.flush(), Err(RegistryError::Storage(_))));
    assert!(reg.stats().failed_commits >= 2);
}

#[test]
fn a_data_path_that_cannot_be_created_is_a_typed_error() {
    // Works as root too: no permission can make a regular file a directory.
    let dir = temp_dir("not-a-dir");
    let file = dir.join("plain-file");
    std::fs::write(&file, b"not a directory").unwrap();
    match SqliteRegistry::open(file.join("docs.sqlite"), |_| OpLog::new(0)) {
        Err(RegistryError::Storage(msg)) => assert!(msg.contains("docs.sqlite"), "{msg}"),
        other => panic!("expected a storage error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn documents_reload_from_the_journal_between_commits() {
    // Loads read the unfolded journal from memory: interleave commits,
    // loads, compactions and a removal, and compare with a fresh process.
    let dir = temp_dir("reload");
    let path = dir.join("docs.sqlite");
    let config = SqliteConfig {
        compact_after: 7,
        ..SqliteConfig::default()
    };
    let mut reg = open_reg_with(&path, config.clone());
    let mut authors: Vec<OpLog> = (0..3).map(|i| OpLog::new(i + 1)).collect();
    let mut expected = [0usize; 3];
    for round in 0..40 {
        for (i, a) in authors.iter_mut().enumerate() {
            if (round + i) % 4 == 0 {
                continue;
            }
            let name = format!("d{i}");
            a.edit(format!("r{round};").as_bytes());
            let u = a.take_local_update().unwrap();
            reg.open(&name).unwrap().apply(&u);
            reg.update_applied(&name, &u).unwrap();
            expected[i] += 1;
        }
        assert_eq!(reg.flush(), Ok(true));
        // Unload one document and load it back from the file and journal.
        let name = format!("d{}", round % 3);
        let loaded = reg.list().contains(&name);
        assert_eq!(reg.unload(&name), loaded, "round {round}");
        assert_eq!(
            reg.open(&name).unwrap().op_count(),
            expected[round % 3],
            "round {round} {name}"
        );
        if round == 25 {
            assert!(reg.remove("d2"));
            expected[2] = 0;
            authors[2] = OpLog::new(30);
        }
    }
    assert!(reg.stats().snapshots > 0, "compactions happened");
    drop(reg);
    let mut reg = open_reg_with(&path, config);
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(
            reg.open(&format!("d{i}")).unwrap().op_count(),
            *want,
            "d{i}"
        );
    }
}
