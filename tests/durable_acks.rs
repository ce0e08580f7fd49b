//! Asynchronous durability in the hub ([`Hub::commit`] /
//! [`Hub::poll_commits`]) against a registry whose commits complete only
//! when the test says so: `applied` acknowledgements go out at once, the
//! `durable` one only after the registry reports the commit on disk, a
//! failed commit becomes a typed `Storage` error and a `StorageError` event
//! and is never acknowledged durable, and acknowledgements stay cumulative
//! and monotone.

mod common;

use std::collections::VecDeque;
use std::time::Instant;

use common::{OpLog, client_config, client_registry, joining_client};
use crdt_socket_sync::Limits;
use crdt_socket_sync::client::{ClientEvent, ClientSession};
use crdt_socket_sync::registry::{
    Commit, CommitDone, CommitId, MemoryRegistry, Registry, RegistryError,
};
use crdt_socket_sync::server::{AllowAll, ConnId, Hub, ServerConfig, ServerEvent};
use crdt_socket_sync::wire::ErrorCode;

const DOC: &str = "notes";

/// Documents in memory whose commits complete when the test calls
/// [`Manual::complete`].
struct Manual {
    inner: MemoryRegistry<OpLog>,
    /// Updates reported since the last commit.
    unhanded: usize,
    /// The last id handed out, and the last one reported complete.
    last: u64,
    reported: u64,
    done: VecDeque<CommitDone>,
}

impl Manual {
    fn new() -> Self {
        Manual {
            inner: MemoryRegistry::new(|_: &str| OpLog::new(0)),
            unhanded: 0,
            last: 0,
            reported: 0,
            done: VecDeque::new(),
        }
    }

    /// The commits up to `through` completed with `result`.
    fn complete(&mut self, through: u64, result: Result<(), RegistryError>) {
        assert!(through > self.reported && through <= self.last);
        self.reported = through;
        self.done.push_back(CommitDone {
            through: CommitId(through),
            result,
        });
    }
}

impl Registry for Manual {
    type Doc = OpLog;
    fn open(&mut self, name: &str) -> Result<&mut OpLog, RegistryError> {
        self.inner.open(name)
    }
    fn get(&mut self, name: &str) -> Option<&mut OpLog> {
        self.inner.get(name)
    }
    fn list(&self) -> Vec<String> {
        self.inner.list()
    }
    fn unload(&mut self, _: &str) -> bool {
        false
    }
    fn remove(&mut self, name: &str) -> bool {
        self.inner.remove(name)
    }
    fn update_applied(&mut self, _: &str, _: &[u8]) -> Result<(), RegistryError> {
        self.unhanded += 1;
        Ok(())
    }
    /// Synchronous: everything handed over so far is on disk now.
    fn flush(&mut self) -> Result<bool, RegistryError> {
        if self.unhanded > 0 {
            self.unhanded = 0;
            self.last += 1;
        }
        if self.reported < self.last {
            self.complete(self.last, Ok(()));
        }
        Ok(true)
    }
    fn commit(&mut self) -> Result<Commit, RegistryError> {
        if self.unhanded > 0 {
            self.unhanded = 0;
            self.last += 1;
        }
        Ok(if self.reported < self.last {
            Commit::Pending(CommitId(self.last))
        } else {
            Commit::Durable
        })
    }
    fn poll_commit(&mut self) -> Option<CommitDone> {
        self.done.pop_front()
    }
}

struct Peer {
    session: ClientSession,
    reg: MemoryRegistry<OpLog>,
    conn: ConnId,
    /// Every `(applied, durable)` acknowledged, in order.
    acks: Vec<(u64, u64)>,
    storage_errors: Vec<Option<u64>>,
}

struct Rig {
    now: Instant,
    hub: Hub<AllowAll>,
    reg: Manual,
    peers: Vec<Peer>,
    events: Vec<ServerEvent>,
}

impl Rig {
    fn new(clients: usize, config: ServerConfig) -> Self {
        let now = Instant::now();
        let mut rig = Rig {
            now,
            hub: Hub::new(config, AllowAll),
            reg: Manual::new(),
            peers: Vec::new(),
            events: Vec::new(),
        };
        for i in 0..clients {
            let (session, reg, conn) = joining_client(&mut rig.hub, i, DOC, now);
            rig.peers.push(Peer {
                session,
                reg,
                conn,
                acks: Vec::new(),
                storage_errors: Vec::new(),
            });
        }
        // The handshake and the initial sync, committed synchronously.
        for _ in 0..20 {
            rig.round(true);
        }
        // Empty documents: the sync stored nothing, so commit ids start at 1.
        assert_eq!(rig.reg.last, 0);
        rig
    }

    /// Client `i` edits once; returns the update's sequence number.
    fn edit(&mut self, i: usize) -> u64 {
        let p = &mut self.peers[i];
        p.reg.open(DOC).unwrap().edit(b"x;");
        p.session
            .flush_local(&mut p.reg, DOC, self.now)
            .unwrap()
            .unwrap()
    }

    /// One server loop: every client's frames in, one commit (`Hub::flush`
    /// when `wait`, else `Hub::commit`), completed commits polled, every
    /// frame out.
    fn round(&mut self, wait: bool) {
        for p in &mut self.peers {
            while let Some(frame) = p.session.poll_transmit() {
                self.hub
                    .handle_input(p.conn, self.now, &frame, &mut self.reg);
            }
        }
        if wait {
            self.hub.flush(&mut self.reg);
        } else {
            self.hub.commit(&mut self.reg);
        }
        self.hub.poll_commits(&mut self.reg);
        self.deliver();
    }

    /// Only completed commits (no client input).
    fn poll(&mut self) {
        self.hub.poll_commits(&mut self.reg);
        self.deliver();
    }

    fn deliver(&mut self) {
        while let Some((conn, frame)) = self.hub.poll_transmit() {
            let p = self.peers.iter_mut().find(|p| p.conn == conn).unwrap();
            p.session.handle_input(self.now, &frame, &mut p.reg);
        }
        while let Some(e) = self.hub.poll_event() {
            self.events.push(e);
        }
        for p in &mut self.peers {
            while let Some(e) = p.session.poll_event() {
                match e {
                    ClientEvent::Acknowledged {
                        applied, durable, ..
                    } => {
                        if let Some(&(a, d)) = p.acks.last() {
                            assert!(applied >= a && durable >= d, "acks are monotone");
                        }
                        assert!(durable <= applied, "durable never passes applied");
                        p.acks.push((applied, durable));
                    }
                    ClientEvent::DocumentError {
                        code: ErrorCode::Storage,
                        seq,
                        ..
                    } => p.storage_errors.push(seq),
                    _ => {}
                }
            }
        }
    }

    fn durable(&self, i: usize) -> u64 {
        self.peers[i].acks.last().map_or(0, |a| a.1)
    }

    fn applied(&self, i: usize) -> u64 {
        self.peers[i].acks.last().map_or(0, |a| a.0)
    }
}

#[test]
fn applied_is_acknowledged_at_once_and_durable_after_the_commit() {
    let mut rig = Rig::new(1, ServerConfig::default());
    // (The initial sync's update was committed synchronously.)
    let base = rig.durable(0);
    let s1 = rig.edit(0);
    assert!(s1 > base);
    rig.round(false);
    assert_eq!(rig.applied(0), s1, "applied right away");
    assert_eq!(rig.durable(0), base, "not durable before the disk says so");
    let durable_before = rig.peers[0].acks.len();

    // The client pipelines while the first commit is in flight.
    let s2 = rig.edit(0);
    rig.round(false);
    let s3 = rig.edit(0);
    rig.round(false);
    assert_eq!(rig.applied(0), s3);
    assert_eq!(rig.durable(0), base);
    assert_eq!(rig.hub.commits_in_flight(), 3);
    rig.poll();
    assert_eq!(rig.durable(0), base, "nothing completed, nothing acked");

    // Commit 1 reaches the disk: exactly the first update is durable.
    rig.reg.complete(1, Ok(()));
    rig.poll();
    assert_eq!(rig.durable(0), s1);
    assert!(rig.peers[0].acks.len() > durable_before);
    // Commits 2 and 3 complete together.
    rig.reg.complete(3, Ok(()));
    rig.poll();
    assert_eq!(rig.durable(0), s3);
    assert!(s2 < s3);
    assert_eq!(rig.hub.commits_in_flight(), 0);
    assert!(rig.peers[0].storage_errors.is_empty());
}

#[test]
fn a_failed_commit_is_a_storage_error_and_never_durable() {
    let mut rig = Rig::new(2, ServerConfig::default());
    let ok = rig.edit(0);
    rig.round(false);
    rig.reg.complete(1, Ok(()));
    rig.poll();
    assert_eq!(rig.durable(0), ok);

    // Commit 2 (client 0) fails on disk.
    let lost = rig.edit(0);
    rig.round(false);
    assert_eq!(rig.applied(0), lost);
    rig.events.clear();
    rig.reg
        .complete(2, Err(RegistryError::Storage("disk full".into())));
    rig.poll();
    assert_eq!(rig.durable(0), ok, "the failed update is not durable");
    assert_eq!(rig.peers[0].storage_errors, vec![Some(lost)], "typed error");
    assert!(rig.peers[1].storage_errors.is_empty(), "only its writers");
    assert!(
        rig.events
            .iter()
            .any(|e| matches!(e, ServerEvent::StorageError { .. }))
    );
    assert!(rig.events.iter().any(|e| matches!(
        e,
        ServerEvent::DocumentError {
            code: ErrorCode::Storage,
            seq: Some(s),
            ..
        } if *s == lost
    )));

    // Another client's later commit succeeds: client 0 gets no durable ack
    // for the failed update.
    let other = rig.edit(1);
    rig.round(false);
    rig.reg.complete(3, Ok(()));
    for _ in 0..3 {
        rig.poll();
    }
    assert_eq!(rig.durable(1), other);
    assert_eq!(rig.durable(0), ok, "never acknowledged durable");
    assert_eq!(rig.hub.commits_in_flight(), 0);
}

#[test]
fn a_synchronous_flush_settles_commits_in_flight() {
    let mut rig = Rig::new(2, ServerConfig::default());
    let a = rig.edit(0);
    rig.round(false);
    assert!(rig.durable(0) < a);
    // Client 1's flush waits for the disk: everything before it is on disk.
    let b = rig.edit(1);
    rig.round(true);
    assert_eq!(rig.durable(1), b);
    assert_eq!(rig.durable(0), a, "the earlier commit is settled too");
    assert_eq!(rig.hub.commits_in_flight(), 0);
    // The registry's late report of those commits changes nothing.
    let acks = rig.peers[0].acks.len();
    rig.poll();
    assert_eq!(rig.peers[0].acks.len(), acks);
}

#[test]
fn commits_in_flight_are_bounded_and_never_acked_early() {
    let config = ServerConfig {
        limits: Limits {
            max_commits_in_flight: 2,
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    let mut rig = Rig::new(1, config);
    let mut seqs = Vec::new();
    for _ in 0..6 {
        seqs.push(rig.edit(0));
        rig.round(false);
        assert!(rig.hub.commits_in_flight() <= 2);
    }
    assert_eq!(rig.applied(0), seqs[5]);
    // Commit 1 stands alone; 2..=6 were merged into the newest (id 6).
    rig.reg.complete(1, Ok(()));
    rig.poll();
    assert_eq!(rig.durable(0), seqs[0]);
    rig.reg.complete(5, Ok(()));
    rig.poll();
    assert_eq!(
        rig.durable(0),
        seqs[0],
        "merged acks wait for the newest id"
    );
    rig.reg.complete(6, Ok(()));
    rig.poll();
    assert_eq!(rig.durable(0), seqs[5]);
}

#[test]
fn the_default_commit_is_synchronous() {
    // A registry without a committer: `Hub::commit` acks like `Hub::flush`.
    let now = Instant::now();
    let mut hub = Hub::new(ServerConfig::default(), AllowAll);
    let mut server = MemoryRegistry::new(|_: &str| OpLog::new(0));
    let mut session = ClientSession::new(client_config("c"), now);
    let mut reg = client_registry(1);
    let conn = hub.accept(now);
    session.connect(now);
    session.open(&mut reg, DOC, now).unwrap();
    let mut acks = Vec::new();
    for step in 0..20 {
        if step == 10 {
            reg.open(DOC).unwrap().edit(b"y");
            session.flush_local(&mut reg, DOC, now).unwrap();
        }
        while let Some(frame) = session.poll_transmit() {
            hub.handle_input(conn, now, &frame, &mut server);
        }
        hub.commit(&mut server);
        hub.poll_commits(&mut server);
        assert_eq!(hub.commits_in_flight(), 0);
        while let Some((_, frame)) = hub.poll_transmit() {
            session.handle_input(now, &frame, &mut reg);
        }
        while let Some(e) = session.poll_event() {
            if let ClientEvent::Acknowledged {
                applied, durable, ..
            } = e
            {
                acks.push((applied, durable));
            }
        }
    }
    assert_eq!(session.unacknowledged(DOC), 0);
    assert!(acks.iter().all(|(_, d)| *d == 0), "memory is never durable");
    assert_eq!(server.get(DOC).unwrap().text(), "y");
}
