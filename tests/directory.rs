//! The document directory: documents leave it (and the registry) once no
//! connection has them open, and every connection numbers its documents
//! itself (handles reveal nothing about other connections, and the first
//! 128 take one byte on the wire).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use crdt_socket_sync::registry::{MemoryRegistry, Registry};
use crdt_socket_sync::server::{AllowAll, Authorizer, ConnId, Hub, ServerConfig, StaticTokens};
use crdt_socket_sync::wire::{Access, Bytes, DocId, Message};

/// Long enough for any unload policy's linger to pass.
const LATER: Duration = Duration::from_secs(3600);

fn read_only() -> StaticTokens {
    StaticTokens::default().with("ro", "reader", Access::ReadOnly)
}

/// A handshaken raw connection.
fn connect<A: Authorizer, R: Registry>(hub: &mut Hub<A>, reg: &mut R, now: Instant) -> ConnId {
    let conn = hub.accept(now);
    hub.handle_input(conn, now, &frame(&[hello("reader", b"ro")]), reg);
    hub.commit(reg);
    drain(hub, conn);
    conn
}

/// Every message queued for `conn`.
fn drain<A: Authorizer>(hub: &mut Hub<A>, conn: ConnId) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(f) = hub.poll_transmit_for(conn) {
        crdt_socket_sync::wire::MessageDecoder::new(Default::default())
            .decode(&f, &mut out)
            .unwrap();
    }
    while hub.poll_transmit().is_some() {}
    while hub.poll_event().is_some() {}
    out
}

fn open_msg(name: &str) -> Message {
    Message::Open {
        name: name.into(),
        version: Bytes::default(),
        resume: None,
    }
}

/// Opens `name` on `conn`; returns the handle the hub gave it.
fn open<A: Authorizer, R: Registry>(
    hub: &mut Hub<A>,
    reg: &mut R,
    conn: ConnId,
    now: Instant,
    name: &str,
) -> DocId {
    hub.handle_input(conn, now, &frame(&[open_msg(name)]), reg);
    hub.commit(reg);
    drain(hub, conn)
        .into_iter()
        .find_map(|m| match m {
            Message::Opened { doc, .. } => Some(doc),
            _ => None,
        })
        .expect("Opened")
}

fn close_doc<A: Authorizer, R: Registry>(
    hub: &mut Hub<A>,
    reg: &mut R,
    conn: ConnId,
    now: Instant,
    doc: DocId,
) {
    hub.handle_input(conn, now, &frame(&[Message::CloseDoc { doc }]), reg);
    hub.commit(reg);
    drain(hub, conn);
}

/// Fires every deadline up to `now`, as an adapter's timer would.
fn fire<A: Authorizer, R: Registry>(hub: &mut Hub<A>, reg: &mut R, now: Instant) {
    for _ in 0..100 {
        match hub.poll_timeout() {
            Some(t) if t <= now => hub.handle_timeout(now, reg),
            _ => return,
        }
    }
}

/// 20,000 documents opened and closed one after the other by a read-only
/// client leave nothing behind: not in the hub's directory, not in the
/// registry, not in the session.
#[test]
fn open_close_cycles_leave_the_directory_and_the_registry_empty() {
    let mut hub = Hub::new(ServerConfig::default(), read_only());
    let mut reg = server_registry();
    let mut now = Instant::now();
    let conn = connect(&mut hub, &mut reg, now);
    let mut most = 0;
    for i in 0..20_000 {
        let doc = open(&mut hub, &mut reg, conn, now, &format!("doc-{i}"));
        close_doc(&mut hub, &mut reg, conn, now, doc);
        now += Duration::from_millis(1);
        fire(&mut hub, &mut reg, now);
        most = most.max(hub.documents());
    }
    fire(&mut hub, &mut reg, now + LATER);
    assert_eq!(hub.documents(), 0, "directory entries left");
    assert_eq!(reg.len(), 0, "registry documents left: {:?}", reg.len());
    assert_eq!(hub.session(conn).unwrap().open_documents(), 0);
    // The default linger holds at most what was closed within it.
    let linger = ServerConfig::default().unload_after.unwrap();
    let bound = usize::try_from(linger.as_millis()).unwrap() + 1;
    assert!(most <= bound, "{most} documents loaded at once");
}

/// A document that holds data stays in a memory registry (it is the only
/// copy) after it leaves the directory; reopened, it has its data.
#[test]
fn a_memory_registry_keeps_written_documents() {
    let mut n = Net::new(ServerConfig::default(), AllowAll);
    n.add_client(client_config("alice"));
    n.connect(0);
    n.open(0, "kept");
    n.edit(0, "kept", "hello");
    n.open(0, "empty");
    let c = &mut n.clients[0];
    c.session.close_doc("kept").unwrap();
    c.session.close_doc("empty").unwrap();
    n.run();
    // Past the default linger (1 s), within the heartbeat.
    n.advance(Duration::from_millis(1500));
    assert_eq!(n.hub.documents(), 0);
    assert_eq!(n.server_reg.list(), ["kept"]);
    n.open(0, "kept");
    assert_eq!(n.server_text("kept"), "hello");
    assert_eq!(n.hub.documents(), 1);
}

/// Closing and reopening within the linger reuses the loaded document; the
/// registry is told to unload only once the linger passed with nobody
/// subscribed.
#[test]
fn the_unload_policy_lingers_then_unloads() {
    let config = ServerConfig {
        unload_after: Some(Duration::from_secs(5)),
        ..ServerConfig::default()
    };
    let mut hub = Hub::new(config, read_only());
    let mut reg = server_registry();
    let t0 = Instant::now();
    let conn = connect(&mut hub, &mut reg, t0);
    let doc = open(&mut hub, &mut reg, conn, t0, "a");
    close_doc(&mut hub, &mut reg, conn, t0, doc);
    assert_eq!(hub.documents(), 1, "lingers");
    let deadline = hub.poll_timeout().unwrap();
    assert!(deadline <= t0 + Duration::from_secs(5));
    fire(&mut hub, &mut reg, t0 + Duration::from_secs(4));
    assert_eq!((hub.documents(), reg.len()), (1, 1));
    // Reopened before the deadline: the old deadline does nothing.
    let doc = open(&mut hub, &mut reg, conn, t0 + Duration::from_secs(4), "a");
    fire(&mut hub, &mut reg, t0 + Duration::from_secs(6));
    assert_eq!((hub.documents(), reg.len()), (1, 1), "subscribed again");
    close_doc(&mut hub, &mut reg, conn, t0 + Duration::from_secs(6), doc);
    fire(&mut hub, &mut reg, t0 + Duration::from_secs(10));
    assert_eq!((hub.documents(), reg.len()), (1, 1), "linger restarted");
    fire(&mut hub, &mut reg, t0 + Duration::from_secs(11));
    assert_eq!((hub.documents(), reg.len()), (0, 0));

    // `None`: documents stay loaded.
    let config = ServerConfig {
        unload_after: None,
        ..ServerConfig::default()
    };
    let mut hub = Hub::new(config, read_only());
    let conn = connect(&mut hub, &mut reg, t0);
    let doc = open(&mut hub, &mut reg, conn, t0, "a");
    close_doc(&mut hub, &mut reg, conn, t0, doc);
    fire(&mut hub, &mut reg, t0 + LATER);
    assert_eq!((hub.documents(), reg.len()), (1, 1));
}

/// A disconnect takes the connection's documents out of the directory too.
#[test]
fn a_disconnect_releases_its_documents() {
    let mut hub = Hub::new(ServerConfig::default(), read_only());
    let mut reg = server_registry();
    let now = Instant::now();
    let conn = connect(&mut hub, &mut reg, now);
    for i in 0..10 {
        open(&mut hub, &mut reg, conn, now, &format!("d{i}"));
    }
    assert_eq!(hub.documents(), 10);
    hub.connection_lost(conn, now);
    fire(&mut hub, &mut reg, now + LATER);
    assert_eq!((hub.documents(), reg.len()), (0, 0));
}

/// A connection's first document is handle 0 however many documents other
/// connections opened; 128 documents take the handles 0..128 (one byte
/// each on the wire).
#[test]
fn handles_are_per_connection_and_small() {
    let mut hub = Hub::new(ServerConfig::default(), read_only());
    let mut reg = MemoryRegistry::new(|_: &str| OpLog::new(0));
    let now = Instant::now();
    let busy = connect(&mut hub, &mut reg, now);
    for i in 0..1000 {
        assert_eq!(
            open(&mut hub, &mut reg, busy, now, &format!("other-{i}")),
            DocId(i)
        );
    }
    let conn = connect(&mut hub, &mut reg, now);
    assert_eq!(open(&mut hub, &mut reg, conn, now, "mine"), DocId(0));
    // A document the busy connection also has open: still this
    // connection's own next handle.
    assert_eq!(open(&mut hub, &mut reg, conn, now, "other-999"), DocId(1));
    let mut handles = BTreeSet::from([0, 1]);
    for i in 2..128 {
        handles.insert(open(&mut hub, &mut reg, conn, now, &format!("more-{i}")).0);
    }
    assert_eq!(handles, (0..128).collect());
    // A closed handle is the next one given out.
    close_doc(&mut hub, &mut reg, conn, now, DocId(5));
    assert_eq!(open(&mut hub, &mut reg, conn, now, "again"), DocId(5));
    assert_eq!(open(&mut hub, &mut reg, conn, now, "next"), DocId(128));
}

/// Subscribers of one document under different handles each receive
/// updates, acknowledgements, presence and application messages under
/// their own handle.
#[test]
fn each_subscriber_hears_its_own_handle() {
    let mut n = Net::new(ServerConfig::default(), AllowAll);
    for p in ["a", "b", "c"] {
        n.add_client(client_config(p));
    }
    for i in 0..3 {
        n.connect(i);
    }
    // Client i has i other documents open first.
    for i in 0..3 {
        for k in 0..i {
            n.open(i, &format!("pad-{i}-{k}"));
        }
        n.open(i, "shared");
    }
    n.take_transcript();
    n.edit(2, "shared", "x");
    let lines = n.take_transcript();
    for want in [
        "c2> Update #2 ",
        "s>2 Ack #2 ",
        "s>0 Broadcast #0 ",
        "s>1 Broadcast #1 ",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(want)),
            "{want}: {lines:#?}"
        );
    }
    n.edit(0, "shared", "y");
    n.edit(1, "shared", "z");
    for i in 0..3 {
        assert_eq!(n.text(i, "shared"), n.server_text("shared"));
    }
    assert_eq!(n.server_text("shared").len(), 3);
}

/// Documents a read-only client only opened are not written to SQLite, and
/// leave its memory; a written one is stored, unloaded once its writes are
/// on disk, and loads again with its data.
#[cfg(feature = "sqlite")]
#[test]
fn sqlite_stores_no_row_for_documents_only_opened() {
    use crdt_socket_sync::document::Document;
    use crdt_socket_sync::store::SqliteRegistry;
    let dir = std::env::temp_dir().join(format!("css-directory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("docs.sqlite");
    let mut reg = SqliteRegistry::open(&path, |_: &str| OpLog::new(0)).unwrap();
    let auth = read_only().with("rw", "writer", Access::ReadWrite);
    let mut hub = Hub::new(ServerConfig::default(), auth);
    let mut now = Instant::now();
    let conn = connect(&mut hub, &mut reg, now);
    for i in 0..20_000 {
        let doc = open(&mut hub, &mut reg, conn, now, &format!("doc-{i}"));
        close_doc(&mut hub, &mut reg, conn, now, doc);
        now += Duration::from_millis(1);
        fire(&mut hub, &mut reg, now);
    }
    fire(&mut hub, &mut reg, now + LATER);
    reg.flush().unwrap();
    assert_eq!(hub.documents(), 0);
    assert!(reg.list().is_empty(), "{} loaded", reg.list().len());
    assert_eq!(reg.stored().unwrap(), Vec::<String>::new());

    // A written document is stored, and unloaded once on disk.
    now += LATER;
    let writer = hub.accept(now);
    hub.handle_input(writer, now, &frame(&[hello("writer", b"rw")]), &mut reg);
    hub.flush(&mut reg);
    drain(&mut hub, writer);
    let doc = open(&mut hub, &mut reg, writer, now, "kept");
    let mut edit = OpLog::new(7);
    edit.edit(b"hi");
    let update = edit.take_local_update().unwrap();
    let msg = Message::Update {
        doc,
        seq: 1,
        data: Bytes(update),
    };
    hub.handle_input(writer, now, &frame(&[msg]), &mut reg);
    hub.flush(&mut reg);
    close_doc(&mut hub, &mut reg, writer, now, doc);
    fire(&mut hub, &mut reg, now + Duration::from_secs(2));
    assert_eq!(hub.documents(), 0);
    assert!(reg.list().is_empty());
    assert_eq!(reg.stored().unwrap(), ["kept"]);
    assert_eq!(reg.open("kept").unwrap().text(), "hi");
    drop(reg);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Identity "all" may write everything; "b-only" only documents named b*.
struct Scoped;

impl Authorizer for Scoped {
    fn authenticate(
        &mut self,
        _peer: &str,
        token: &[u8],
    ) -> Result<crdt_socket_sync::server::Identity, String> {
        Ok(crdt_socket_sync::server::Identity::new(
            String::from_utf8_lossy(token).into_owned(),
        ))
    }

    fn authorize(
        &mut self,
        identity: &crdt_socket_sync::server::Identity,
        doc: &str,
    ) -> Option<Access> {
        (identity.name() == "all" || doc.starts_with('b')).then_some(Access::ReadWrite)
    }
}

/// A handle the server closed on its own (access revoked) is not given to
/// the next document until the client closes it too: an update the client
/// sent under it before hearing of the revocation cannot land in another
/// document.
#[test]
fn a_revoked_handle_is_not_reused_until_the_client_closes_it() {
    use crdt_socket_sync::document::Document;
    let mut hub = Hub::new(ServerConfig::default(), Scoped);
    let mut reg = server_registry();
    let now = Instant::now();
    let conn = hub.accept(now);
    hub.handle_input(conn, now, &frame(&[hello("c", b"all")]), &mut reg);
    hub.commit(&mut reg);
    drain(&mut hub, conn);
    let a = open(&mut hub, &mut reg, conn, now, "a");
    assert_eq!(a, DocId(0));
    let mut edit = OpLog::new(7);
    edit.edit(b"for a");
    let update = edit.take_local_update().unwrap();
    // The token change revokes "a"; before the client hears of it, it
    // opens "b" and sends an update for "a" under the old handle.
    let input = frame(&[
        Message::RefreshToken {
            token: Bytes(b"b-only".to_vec()),
        },
        open_msg("b"),
        Message::Update {
            doc: a,
            seq: 1,
            data: Bytes(update),
        },
    ]);
    hub.handle_input(conn, now, &input, &mut reg);
    hub.commit(&mut reg);
    let out = drain(&mut hub, conn);
    let b = out
        .iter()
        .find_map(|m| match m {
            Message::Opened { name, doc, .. } if name == "b" => Some(*doc),
            _ => None,
        })
        .expect("Opened b");
    assert_ne!(b, a, "{out:?}");
    assert_eq!(reg.get("b").unwrap().text(), "", "nothing landed in b");
    // Once the client closes the revoked handle, it is free again.
    close_doc(&mut hub, &mut reg, conn, now, a);
    assert_eq!(open(&mut hub, &mut reg, conn, now, "b2"), a);
}

/// An application message routed to a session reaches it only when the two
/// share a document: the same handle number on different documents (both
/// connections' first document is handle 0) is not sharing one.
#[test]
fn equal_handles_on_different_documents_share_nothing() {
    use crdt_socket_sync::wire::{ErrorCode, Route, SessionId};
    let mut hub = Hub::new(ServerConfig::default(), AllowAll);
    let mut reg = server_registry();
    let now = Instant::now();
    let welcome = |hub: &mut Hub<AllowAll>, reg: &mut Reg, peer: &str| {
        let conn = hub.accept(now);
        hub.handle_input(conn, now, &frame(&[hello(peer, b"")]), reg);
        hub.commit(reg);
        let session = drain(hub, conn)
            .into_iter()
            .find_map(|m| match m {
                Message::Welcome { session, .. } => Some(session),
                _ => None,
            })
            .unwrap();
        (conn, session)
    };
    let (a, _) = welcome(&mut hub, &mut reg, "a");
    let (b, b_session) = welcome(&mut hub, &mut reg, "b");
    assert_eq!(open(&mut hub, &mut reg, a, now, "x"), DocId(0));
    assert_eq!(open(&mut hub, &mut reg, b, now, "y"), DocId(0));
    let app = |to: SessionId| {
        frame(&[Message::App {
            kind: 1,
            route: Route::Session(to),
            from: None,
            data: Bytes(b"hi".to_vec()),
        }])
    };
    hub.handle_input(a, now, &app(b_session), &mut reg);
    hub.commit(&mut reg);
    let back = drain(&mut hub, a);
    assert!(
        back.iter().any(|m| matches!(
            m,
            Message::Error {
                code: ErrorCode::UnknownSession,
                ..
            }
        )),
        "{back:?}"
    );
    assert!(drain(&mut hub, b).is_empty(), "nothing reached b");
    // Sharing a document (under different handles) they can.
    assert_eq!(open(&mut hub, &mut reg, b, now, "x"), DocId(1));
    hub.handle_input(a, now, &app(b_session), &mut reg);
    hub.commit(&mut reg);
    let got = drain(&mut hub, b);
    assert!(
        got.iter().any(|m| matches!(m, Message::App { .. })),
        "{got:?}"
    );
}

/// Our client answers a document the server closed on its own (access
/// revoked) with its own `CloseDoc`, so the retired handle is free again and
/// does not count against `max_docs_per_connection` for the rest of the
/// connection.
#[test]
fn a_client_frees_the_handles_the_server_retired() {
    let mut net = Net::new(ServerConfig::default(), Scoped);
    let mut config = client_config("c");
    config.token = b"all".to_vec();
    let c = net.add_client(config);
    net.connect(c);
    net.open(c, "a");
    net.open(c, "b");
    // The new token keeps "b" and revokes "a" (handle 0).
    net.clients[c].session.refresh_token(b"b-only".to_vec());
    net.run();
    net.take_transcript();
    // The next document gets handle 0 again: the client closed it.
    net.open(c, "b2");
    let transcript = net.take_transcript();
    assert!(
        transcript.iter().any(|l| l.contains("Opened b2#0")),
        "the retired handle 0 was not freed: {transcript:?}"
    );
}
