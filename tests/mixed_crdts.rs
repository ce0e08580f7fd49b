//! Three clients on yrs documents and one on loro documents edit
//! concurrently through one hub, several documents over each connection; the
//! server's registry holds both kinds as `Box<dyn Document>`.
#![cfg(all(feature = "yrs", feature = "loro"))]

use std::time::Instant;

use crdt_socket_sync::adapters::loro::LoroDocument;
use crdt_socket_sync::adapters::yrs::YrsDocument;
use crdt_socket_sync::client::{ClientConfig, ClientSession};
use crdt_socket_sync::document::Document;
use crdt_socket_sync::registry::{MemoryRegistry, Registry};
use crdt_socket_sync::rng::Rng;
use crdt_socket_sync::server::{AllowAll, ConnId, Hub, ServerConfig};
use yrs::{GetString, Text, Transact};

const YRS_DOCS: [&str; 2] = ["yrs-notes", "yrs-todo"];
const LORO_DOCS: [&str; 2] = ["loro-draft", "loro-log"];

fn yrs_text(d: &YrsDocument) -> String {
    let t = d.get_or_insert_text("body");
    t.get_string(&d.transact())
}

struct Peer<D> {
    session: ClientSession,
    docs: MemoryRegistry<D>,
    conn: ConnId,
}

fn peer<D: Document>(
    hub: &mut Hub<AllowAll>,
    docs: MemoryRegistry<D>,
    name: &str,
    now: Instant,
    seed: u64,
) -> Peer<D> {
    let conn = hub.accept(now);
    let mut session = ClientSession::new(
        ClientConfig {
            peer: name.into(),
            seed,
            ..ClientConfig::default()
        },
        now,
    );
    session.connect(now);
    Peer {
        session,
        docs,
        conn,
    }
}

/// Moves frames both ways until nothing moves.
fn pump<D: Document>(
    hub: &mut Hub<AllowAll>,
    server: &mut MemoryRegistry<Box<dyn Document>>,
    p: &mut Peer<D>,
    now: Instant,
) -> bool {
    let mut moved = false;
    while let Some(f) = p.session.poll_transmit() {
        moved = true;
        hub.handle_input(p.conn, now, &f, server);
        hub.commit(server);
    }
    while let Some(f) = hub.poll_transmit_for(p.conn) {
        moved = true;
        p.session.handle_input(now, &f, &mut p.docs);
    }
    while p.session.poll_event().is_some() {}
    moved
}

#[test]
fn yrs_and_loro_clients_converge_through_one_hub() {
    let now = Instant::now();
    let mut hub = Hub::new(ServerConfig::default(), AllowAll);
    let mut server: MemoryRegistry<Box<dyn Document>> =
        MemoryRegistry::new(|name: &str| -> Box<dyn Document> {
            if name.starts_with("loro-") {
                Box::new(LoroDocument::with_peer_id(1))
            } else {
                Box::new(YrsDocument::with_client_id(1))
            }
        });
    let mut yrs_peers: Vec<Peer<YrsDocument>> = (0..3u64)
        .map(|i| {
            let docs = MemoryRegistry::new(move |_: &str| YrsDocument::with_client_id(100 + i));
            peer(&mut hub, docs, &format!("yrs{i}"), now, i)
        })
        .collect();
    let mut loro_peer = peer(
        &mut hub,
        MemoryRegistry::new(|_: &str| LoroDocument::with_peer_id(200)),
        "loro",
        now,
        9,
    );
    for p in &mut yrs_peers {
        for d in YRS_DOCS {
            p.session.open(&mut p.docs, d, now).unwrap();
        }
    }
    for d in LORO_DOCS {
        loro_peer.session.open(&mut loro_peer.docs, d, now).unwrap();
    }
    let settle = |hub: &mut Hub<AllowAll>,
                  server: &mut MemoryRegistry<Box<dyn Document>>,
                  yrs_peers: &mut [Peer<YrsDocument>],
                  loro_peer: &mut Peer<LoroDocument>| {
        for _ in 0..1000 {
            let mut moved = false;
            for p in yrs_peers.iter_mut() {
                moved |= pump(hub, server, p, now);
            }
            moved |= pump(hub, server, loro_peer, now);
            if !moved {
                return;
            }
        }
        panic!("did not settle");
    };
    settle(&mut hub, &mut server, &mut yrs_peers, &mut loro_peer);

    // Concurrent rounds: every client edits every one of its documents
    // before anything is delivered.
    let mut rng = Rng::new(5);
    for round in 0..30 {
        for (i, p) in yrs_peers.iter_mut().enumerate() {
            for d in YRS_DOCS {
                let doc = p.docs.get(d).unwrap();
                let text = doc.get_or_insert_text("body");
                {
                    let mut txn = doc.transact_mut();
                    let len = text.len(&txn);
                    let pos = rng.below_or_equal(u64::from(len)) as u32;
                    text.insert(&mut txn, pos, &format!("[{i}.{round}]"));
                    if len > 10 && round % 3 == 0 {
                        text.remove_range(&mut txn, 0, 2);
                    }
                }
                p.session.flush_local(&mut p.docs, d, now).unwrap();
            }
        }
        for d in LORO_DOCS {
            let doc = loro_peer.docs.get(d).unwrap();
            let text = doc.get_text("body");
            let pos = rng.below_or_equal(text.len_unicode() as u64) as usize;
            text.insert(pos, &format!("<{round}>")).unwrap();
            loro_peer
                .session
                .flush_local(&mut loro_peer.docs, d, now)
                .unwrap();
        }
        settle(&mut hub, &mut server, &mut yrs_peers, &mut loro_peer);
    }

    for d in YRS_DOCS {
        let texts: Vec<String> = yrs_peers
            .iter_mut()
            .map(|p| yrs_text(p.docs.get(d).unwrap()))
            .collect();
        assert!(texts[0].len() > 100, "{d} has content");
        assert!(texts.iter().all(|t| *t == texts[0]), "{d} diverged");
        let server_version = server.get(d).unwrap().version();
        for p in yrs_peers.iter_mut() {
            assert_eq!(p.docs.get(d).unwrap().version(), server_version, "{d}");
            assert_eq!(p.session.unacknowledged(d), 0);
        }
    }
    for d in LORO_DOCS {
        let client = loro_peer.docs.get(d).unwrap();
        // Thirty inserts: "<0>".."<9>" are 3 characters, the rest 4.
        assert_eq!(client.get_text("body").len_unicode(), 10 * 3 + 20 * 4);
        assert_eq!(client.version(), server.get(d).unwrap().version(), "{d}");
        assert_eq!(loro_peer.session.unacknowledged(d), 0);
    }
}
