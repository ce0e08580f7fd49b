//! The y-websocket translator against a real hub: a Yjs connection
//! ([`YjsSession`]) and a native [`ClientSession`] share a yrs document and
//! presence; bad input of every message type closes the Yjs connection with
//! a typed reason, at a bounded cost.
#![cfg(feature = "yrs")]

use std::time::{Duration, Instant};

use crdt_socket_sync::adapters::yrs::YrsDocument;
use crdt_socket_sync::client::{ClientConfig, ClientSession};
use crdt_socket_sync::registry::{MemoryRegistry, Registry};
use crdt_socket_sync::server::{AllowAll, ConnId, Hub, ServerConfig};
use crdt_socket_sync::ywebsocket::{
    AwarenessEntries, AwarenessEntry, YMessage, YjsConfig, YjsSession, encode_awareness,
};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{GetString, ReadTxn, Text, Transact};

type Reg = MemoryRegistry<YrsDocument>;

/// A hub, one native client and one Yjs connection (the Yjs client itself
/// is a yrs `Doc` answering sync steps as y-websocket's provider does).
struct Rig {
    now: Instant,
    hub: Hub<AllowAll>,
    server_docs: Reg,
    native: ClientSession,
    native_docs: Reg,
    native_conn: ConnId,
    yjs: YjsSession,
    yjs_conn: ConnId,
    ydoc: yrs::Doc,
    /// Awareness states the Yjs client was told of: (client, state).
    yjs_awareness: Vec<(u64, String)>,
}

impl Rig {
    fn new() -> Rig {
        let now = Instant::now();
        let mut hub = Hub::new(ServerConfig::default(), AllowAll);
        let native_conn = hub.accept(now);
        let mut native = ClientSession::new(
            ClientConfig {
                peer: "native".into(),
                ..ClientConfig::default()
            },
            now,
        );
        let mut native_docs = MemoryRegistry::new(|_: &str| YrsDocument::new(11));
        native.connect(now);
        native.open(&mut native_docs, "room", now).unwrap();
        let yjs_conn = hub.accept(now);
        let yjs = YjsSession::new("room", Vec::new(), YjsConfig::default(), now);
        let ydoc = yrs::Doc::with_client_id(22);
        let mut rig = Rig {
            now,
            hub,
            server_docs: MemoryRegistry::new(|_: &str| YrsDocument::server(0)),
            native,
            native_docs,
            native_conn,
            yjs,
            yjs_conn,
            ydoc,
            yjs_awareness: Vec::new(),
        };
        let sv = rig.ydoc.transact().state_vector().encode_v1();
        rig.client_sends(YMessage::SyncStep1(&sv));
        rig.run();
        rig
    }

    fn client_sends(&mut self, msg: YMessage<'_>) {
        let mut bytes = Vec::new();
        msg.encode(&mut bytes);
        let _ = self.yjs.handle_client(&bytes, self.now);
    }

    /// The Yjs client's side of the protocol.
    fn yjs_receives(&mut self, bytes: &[u8]) {
        match YMessage::decode(bytes).expect("the translator sends valid messages") {
            YMessage::SyncStep1(sv) => {
                let sv = yrs::StateVector::decode_v1(sv).unwrap();
                let update = self.ydoc.transact().encode_state_as_update_v1(&sv);
                self.client_sends(YMessage::SyncStep2(&update));
            }
            YMessage::SyncStep2(u) | YMessage::Update(u) => {
                let u = yrs::Update::decode_v1(u).unwrap();
                self.ydoc.transact_mut().apply_update(u).unwrap();
            }
            YMessage::Awareness(a) => {
                for e in AwarenessEntries::decode(a, 1000).unwrap() {
                    self.yjs_awareness.retain(|(c, _)| *c != e.client);
                    if e.state != "null" {
                        self.yjs_awareness.push((e.client, e.state.to_string()));
                    }
                }
            }
            _ => {}
        }
    }

    fn run(&mut self) {
        for _ in 0..20 {
            let mut moved = false;
            while let Some(frame) = self.native.poll_transmit() {
                moved = true;
                self.hub
                    .handle_input(self.native_conn, self.now, &frame, &mut self.server_docs);
            }
            while let Some(frame) = self.yjs.poll_to_server() {
                moved = true;
                self.hub
                    .handle_input(self.yjs_conn, self.now, &frame, &mut self.server_docs);
            }
            while let Some((conn, frame)) = self.hub.poll_transmit() {
                moved = true;
                if conn == self.native_conn {
                    self.native
                        .handle_input(self.now, &frame, &mut self.native_docs);
                } else if conn == self.yjs_conn {
                    let _ = self.yjs.handle_server(&frame, self.now);
                }
            }
            while let Some(msg) = self.yjs.poll_to_client() {
                moved = true;
                self.yjs_receives(&msg);
            }
            while self.native.poll_event().is_some() {}
            while self.hub.poll_event().is_some() {}
            if !moved {
                break;
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.native.handle_timeout(self.now);
        self.hub.handle_timeout(self.now, &mut self.server_docs);
        self.run();
    }

    fn yjs_text(&self) -> String {
        let text = self.ydoc.get_or_insert_text("body");
        text.get_string(&self.ydoc.transact())
    }

    fn native_text(&mut self) -> String {
        let doc = self.native_docs.open("room").unwrap();
        doc.get_or_insert_text("body").get_string(&doc.transact())
    }

    fn yjs_types(&mut self, s: &str) {
        let text = self.ydoc.get_or_insert_text("body");
        let update = {
            let mut txn = self.ydoc.transact_mut();
            let before = txn.state_vector();
            text.push(&mut txn, s);
            txn.encode_state_as_update_v1(&before)
        };
        self.client_sends(YMessage::Update(&update));
        self.run();
    }

    fn native_types(&mut self, s: &str) {
        let doc = self.native_docs.open("room").unwrap();
        let text = doc.get_or_insert_text("body");
        text.push(&mut doc.transact_mut(), s);
        self.native
            .flush_local(&mut self.native_docs, "room", self.now)
            .unwrap();
        self.run();
    }
}

#[test]
fn a_yjs_client_and_a_native_client_edit_one_document() {
    let mut rig = Rig::new();
    assert_eq!(rig.hub.subscribers("room"), 2);
    rig.yjs_types("from yjs;");
    rig.native_types("from native;");
    rig.yjs_types("again;");
    let yjs = rig.yjs_text();
    assert_eq!(yjs, rig.native_text());
    for part in ["from yjs;", "from native;", "again;"] {
        assert!(yjs.contains(part), "{yjs}");
    }
    let server = rig.server_docs.open("room").unwrap();
    let server_text = server
        .get_or_insert_text("body")
        .get_string(&server.transact());
    assert_eq!(server_text, yjs);
}

#[test]
fn awareness_crosses_both_ways() {
    let mut rig = Rig::new();
    rig.native
        .set_presence("room", Some(br#"{"user":"native"}"#.to_vec()), rig.now)
        .unwrap();
    rig.run();
    assert_eq!(rig.yjs_awareness.len(), 1, "{:?}", rig.yjs_awareness);
    assert_eq!(rig.yjs_awareness[0].1, r#"{"user":"native"}"#);

    let mut update = Vec::new();
    encode_awareness(
        &[AwarenessEntry {
            client: 22,
            clock: 1,
            state: r#"{"user":"yjs"}"#,
        }],
        &mut update,
    );
    rig.client_sends(YMessage::Awareness(&update));
    rig.run();
    let peers = rig.native.presence("room");
    assert_eq!(peers.len(), 1);
    assert_eq!(&peers[0].1.state[..], br#"{"user":"yjs"}"#);

    // A native state that is not JSON never reaches the Yjs client.
    rig.advance(Duration::from_secs(1));
    rig.native
        .set_presence("room", Some(b"\xff not json".to_vec()), rig.now)
        .unwrap();
    rig.run();
    assert!(rig.yjs_awareness.is_empty(), "{:?}", rig.yjs_awareness);
}
