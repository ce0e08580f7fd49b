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
use crdt_socket_sync::wire::CloseReason;
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
    /// The Yjs connection reads nothing (a stalled reader).
    stalled: bool,
    /// Bytes and count of y-protocols messages the Yjs client received.
    yjs_received: usize,
    yjs_messages: usize,
}

impl Rig {
    fn new() -> Rig {
        Rig::with_config(ServerConfig::default())
    }

    fn with_config(config: ServerConfig) -> Rig {
        let now = Instant::now();
        let mut hub = Hub::new(config, AllowAll);
        let native_conn = hub.accept(now);
        let mut native = ClientSession::new(
            ClientConfig {
                peer: "native".into(),
                ..ClientConfig::default()
            },
            now,
        );
        let mut native_docs = MemoryRegistry::new(|_: &str| YrsDocument::with_client_id(11));
        native.connect(now);
        native.open(&mut native_docs, "room", now).unwrap();
        let yjs_conn = hub.accept(now);
        let yjs = YjsSession::new("room", Vec::new(), YjsConfig::default(), now);
        let ydoc = yrs::Doc::with_client_id(22);
        let mut rig = Rig {
            now,
            hub,
            server_docs: MemoryRegistry::new(|_: &str| YrsDocument::server()),
            native,
            native_docs,
            native_conn,
            yjs,
            yjs_conn,
            ydoc,
            yjs_awareness: Vec::new(),
            stalled: false,
            yjs_received: 0,
            yjs_messages: 0,
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
            while let Some(frame) = self.hub.poll_transmit_for(self.native_conn) {
                moved = true;
                self.native
                    .handle_input(self.now, &frame, &mut self.native_docs);
            }
            while !self.stalled
                && let Some(frame) = self.hub.poll_transmit_for(self.yjs_conn)
            {
                moved = true;
                let _ = self.yjs.handle_server(&frame, self.now);
            }
            while let Some(msg) = self.yjs.poll_to_client() {
                moved = true;
                self.yjs_received += msg.len();
                self.yjs_messages += 1;
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
        self.yjs.handle_timeout(self.now);
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

#[test]
fn a_stalled_yjs_reader_gets_one_coalesced_catch_up() {
    use crdt_socket_sync::Limits;
    let limits = Limits {
        max_outbound_bytes: 64 * 1024,
        ..Limits::default()
    };
    let mut rig = Rig::with_config(ServerConfig {
        limits,
        ..ServerConfig::default()
    });
    rig.stalled = true;
    let line = "x".repeat(1000);
    let mut typed = 0;
    for _ in 0..400 {
        rig.native_types(&line);
        typed += line.len();
    }
    // The hub held at most its queue bound for the stalled reader.
    let held = rig.hub.session(rig.yjs_conn).unwrap().queued_bytes();
    assert!(held <= limits.max_outbound_bytes, "{held} bytes queued");
    let before = rig.yjs_messages;
    rig.stalled = false;
    rig.advance(Duration::from_secs(1));
    rig.advance(Duration::from_secs(6));
    assert_eq!(rig.yjs_text(), rig.native_text());
    assert_eq!(rig.yjs_text().len(), typed);
    // What fit in the queue, then one catch-up, instead of 400 updates.
    let messages = rig.yjs_messages - before;
    assert!(messages < 100, "{messages} messages for 400 updates");
    assert!(
        rig.yjs_received < typed + 64 * 1024,
        "{} bytes for {typed}",
        rig.yjs_received
    );
}

// ---- bad input: every message type, and what it may cost ----

/// A fresh rig whose Yjs connection receives `bytes`; returns the close
/// reason the translator reports, and checks that the native client got
/// nothing from it.
fn after_bad_input(bytes: &[u8]) -> (Option<CloseReason>, Rig) {
    let mut rig = Rig::new();
    let before = rig.native_text();
    let _ = rig.yjs.handle_client(bytes, rig.now);
    rig.run();
    assert_eq!(
        rig.native_text(),
        before,
        "bad input reached the native replica"
    );
    (rig.yjs.closed().map(|(r, _)| *r), rig)
}

#[test]
fn malformed_messages_of_every_type_close_with_protocol_error() {
    let cases: &[(&str, &[u8])] = &[
        ("empty", &[]),
        ("unknown type", &[9]),
        ("type varint over 64 bits", &[0xff; 11]),
        ("sync without step", &[0]),
        ("unknown sync step", &[0, 7, 0]),
        ("step 1 truncated", &[0, 0, 5, 0]),
        ("step 2 truncated", &[0, 1, 0x80, 0x80, 0x80, 0x01]),
        ("update truncated", &[0, 2, 3, 1]),
        ("update with trailing bytes", &[0, 2, 0, 9]),
        ("awareness truncated", &[1, 4, 1, 7]),
        ("awareness entry count over its bytes", &[1, 2, 0x7f, 0]),
        ("awareness state not UTF-8", &[1, 6, 1, 7, 1, 2, 0xff, 0xfe]),
        ("auth from a client", &[2, 0, 1, b'x']),
        ("query-awareness with trailing bytes", &[3, 0]),
    ];
    for (what, bytes) in cases {
        let (reason, rig) = after_bad_input(bytes);
        assert_eq!(reason, Some(CloseReason::ProtocolError), "{what}");
        // The hub was told, and closed the session.
        assert!(
            rig.hub.is_closed(rig.yjs_conn),
            "{what}: hub session still open"
        );
        assert!(!rig.hub.is_closed(rig.native_conn), "{what}");
    }
}

#[test]
fn well_formed_messages_with_bad_payloads_are_refused_by_the_hub() {
    // A state vector that is not one: the hub refuses the status request.
    let mut bytes = Vec::new();
    YMessage::SyncStep1(&[0x7f, 1]).encode(&mut bytes);
    let (reason, rig) = after_bad_input(&bytes);
    assert_eq!(reason, None);
    assert!(!rig.hub.is_closed(rig.yjs_conn));

    // An update yrs refuses, and one declaring 2^28 blocks in 9 bytes (the
    // adapter's check refuses it before yrs reserves anything).
    for update in [&[0xff, 0xff][..], &[1, 0x80, 0x80, 0x80, 0x80, 1, 1, 0, 0]] {
        for msg in [YMessage::SyncStep2(update), YMessage::Update(update)] {
            let mut bytes = Vec::new();
            msg.encode(&mut bytes);
            let (reason, rig) = after_bad_input(&bytes);
            assert_eq!(reason, None, "{msg:?}");
            assert_eq!(rig.yjs_text(), "");
        }
    }
}

#[test]
fn awareness_speaks_for_one_client_id_and_within_limits() {
    let mut rig = Rig::new();
    // Two client ids in one update: only the first one named counts.
    let mut update = Vec::new();
    encode_awareness(
        &[
            AwarenessEntry {
                client: 5,
                clock: 1,
                state: r#"{"me":1}"#,
            },
            AwarenessEntry {
                client: 6,
                clock: 9,
                state: r#"{"spoofed":1}"#,
            },
        ],
        &mut update,
    );
    rig.client_sends(YMessage::Awareness(&update));
    rig.run();
    let peers = rig.native.presence("room");
    assert_eq!(peers.len(), 1);
    assert_eq!(&peers[0].1.state[..], br#"{"me":1}"#);

    // A state over the hub's presence limit is refused by the hub; the
    // connection stays.
    rig.advance(Duration::from_secs(1));
    let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(8000));
    let mut update = Vec::new();
    encode_awareness(
        &[AwarenessEntry {
            client: 5,
            clock: 2,
            state: &big,
        }],
        &mut update,
    );
    rig.client_sends(YMessage::Awareness(&update));
    rig.run();
    assert_eq!(&rig.native.presence("room")[0].1.state[..], br#"{"me":1}"#);
    assert!(rig.yjs.closed().is_none());

    // More entries than the hub keeps states: refused whole.
    let entries: Vec<AwarenessEntry<'_>> = (0..300)
        .map(|c| AwarenessEntry {
            client: c,
            clock: 1,
            state: "{}",
        })
        .collect();
    let mut update = Vec::new();
    encode_awareness(&entries, &mut update);
    let mut bytes = Vec::new();
    YMessage::Awareness(&update).encode(&mut bytes);
    let (reason, _) = after_bad_input(&bytes);
    assert_eq!(reason, Some(CloseReason::ProtocolError));
}

fn config_with(max_held_bytes: usize) -> YjsConfig {
    YjsConfig {
        max_held_bytes,
        ..YjsConfig::default()
    }
}

#[test]
fn too_much_input_before_the_room_opens_closes_with_limit_exceeded() {
    let now = Instant::now();
    let mut yjs = YjsSession::new("room", Vec::new(), config_with(1000), now);
    let mut update = Vec::new();
    YMessage::Update(&[0u8; 400]).encode(&mut update);
    // No Welcome yet: updates are held, up to the limit.
    assert!(yjs.handle_client(&update, now).is_ok());
    assert!(yjs.handle_client(&update, now).is_ok());
    assert!(yjs.handle_client(&update, now).is_err());
    // Tiny messages are charged their allocation too.
    let mut yjs = YjsSession::new("room", Vec::new(), config_with(1000), now);
    let mut sent = 0;
    while yjs.handle_client(&[3], now).is_ok() {
        sent += 1;
        assert!(sent < 100, "{sent} one-byte messages held in 1000 bytes");
    }
    assert_eq!(
        yjs.closed().map(|(r, _)| *r),
        Some(CloseReason::LimitExceeded)
    );
}

#[test]
fn a_silent_yjs_client_is_closed_by_the_hub_idle_deadline() {
    let mut rig = Rig::new();
    // The translator pings the hub only while the client spoke within
    // `client_idle_timeout` (60 s); then the hub's idle deadline ends it.
    for _ in 0..20 {
        rig.advance(Duration::from_secs(2));
        // The native client stays alive on its own pings.
    }
    assert!(
        !rig.hub.is_closed(rig.yjs_conn),
        "closed while the client was recently heard"
    );
    for _ in 0..25 {
        rig.advance(Duration::from_secs(2));
    }
    assert!(
        rig.hub.is_closed(rig.yjs_conn),
        "a silent Yjs client outlived the idle deadline"
    );
    assert!(!rig.hub.is_closed(rig.native_conn));
    assert_eq!(
        rig.yjs.closed().map(|(r, _)| *r),
        Some(CloseReason::IdleTimeout)
    );
}

#[test]
fn the_fuzz_body_holds_on_seeded_random_inputs() {
    // A cheap stand-in for the fuzzer in `cargo test`: valid messages cut,
    // spliced and corrupted by a seeded generator.
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for m in [
        YMessage::SyncStep1(&[0]),
        YMessage::Update(&[
            1, 1, 5, 0, 4, 1, 4, b'b', b'o', b'd', b'y', 2, b'h', b'i', 0,
        ]),
        YMessage::Awareness(&[1, 7, 1, 2, b'{', b'}']),
        YMessage::QueryAwareness,
    ] {
        let mut b = Vec::new();
        m.encode(&mut b);
        seeds.push(b);
    }
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..300 {
        let mut input = Vec::new();
        for _ in 0..(next() % 6) {
            let mut msg = seeds[(next() % seeds.len() as u64) as usize].clone();
            for _ in 0..(next() % 3) {
                let i = (next() as usize) % msg.len();
                msg[i] = next() as u8;
            }
            if next() % 4 == 0 {
                msg.truncate((next() as usize) % (msg.len() + 1));
            }
            input.push(msg.len() as u8);
            input.extend_from_slice(&msg);
        }
        crdt_socket_sync::fuzzing::ywebsocket(&input);
    }
}

/// A query-awareness costs one byte; its answer carries every known state.
/// A client that keeps asking without reading must not grow the queue for
/// it: unread answers coalesce into one, built when it is sent.
#[test]
fn repeated_awareness_queries_from_a_stalled_reader_coalesce() {
    let mut rig = Rig::new();
    rig.native
        .set_presence("room", Some(br#"{"user":"native"}"#.to_vec()), rig.now)
        .unwrap();
    rig.run();
    rig.stalled = true;
    for _ in 0..1000 {
        rig.client_sends(YMessage::QueryAwareness);
    }
    let mut answers = Vec::new();
    while let Some(msg) = rig.yjs.poll_to_client() {
        if let Ok(YMessage::Awareness(a)) = YMessage::decode(&msg) {
            answers.push(a.to_vec());
        }
    }
    assert_eq!(
        answers.len(),
        1,
        "{} awareness answers queued",
        answers.len()
    );
    let states: Vec<String> = AwarenessEntries::decode(&answers[0], 1000)
        .unwrap()
        .map(|e| e.state.to_string())
        .collect();
    assert_eq!(states, [r#"{"user":"native"}"#]);
}
