//! What one input can cost the hub on the apply and sync paths, from the
//! attacker's side: queued bytes in every session, events, delta/snapshot
//! computations, held payloads. Also: a panicking CRDT fails its document
//! alone.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{decode_frame as decode, frame};
use crdt_socket_sync::document::{ApplyOutcome, Document, DocumentError};
use crdt_socket_sync::registry::{MemoryRegistry, Registry};
use crdt_socket_sync::server::{Authorizer, ConnId, Hub, Identity, ServerConfig, ServerEvent};
use crdt_socket_sync::testing::OpLog;
use crdt_socket_sync::wire::{
    Access, Bytes, Compression, DocId, Encoder, ErrorCode, Message, PeerLimits,
};
use crdt_socket_sync::{CloseCause, Limits};

/// An update that makes [`Probe`] panic inside `apply`.
const BOMB: &[u8] = b"PANIC";

/// An [`OpLog`] that counts the delta and snapshot computations made from it
/// and panics on [`BOMB`] (in `apply`) or a version of [`BOMB`] (in
/// `delta_since`), like a CRDT library with a bug.
struct Probe {
    inner: OpLog,
    syncs: Arc<AtomicUsize>,
}

impl Document for Probe {
    fn version(&self) -> Vec<u8> {
        self.inner.version()
    }
    fn delta_since(&self, version: &[u8]) -> Result<Vec<u8>, DocumentError> {
        assert_ne!(version, BOMB, "CRDT bug in delta_since");
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.delta_since(version)
    }
    fn apply(&mut self, update: &[u8]) -> ApplyOutcome {
        assert_ne!(update, BOMB, "CRDT bug in apply");
        self.inner.apply(update)
    }
    fn pending_bytes(&self) -> usize {
        self.inner.pending_bytes()
    }
    fn snapshot(&self) -> Vec<u8> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.snapshot()
    }
    fn load_snapshot(&mut self, snapshot: &[u8]) -> Result<(), DocumentError> {
        self.inner.load_snapshot(snapshot)
    }
    fn take_local_update(&mut self) -> Option<Vec<u8>> {
        self.inner.take_local_update()
    }
}

/// Read-only access to documents named `ro*`, read-write to the rest.
struct Rules;

impl Authorizer for Rules {
    fn authenticate(&mut self, peer: &str, _token: &[u8]) -> Result<Identity, String> {
        Ok(Identity::new(peer))
    }
    fn authorize(&mut self, _identity: &Identity, doc: &str) -> Option<Access> {
        Some(if doc.starts_with("ro") {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        })
    }
}

type Reg = MemoryRegistry<Probe>;

/// A hub driven by hand over raw frames.
struct Harness {
    hub: Hub<Rules>,
    reg: Reg,
    now: Instant,
    syncs: Arc<AtomicUsize>,
    conns: Vec<ConnId>,
}

fn open(name: &str, version: &[u8]) -> Message {
    Message::Open {
        name: name.into(),
        version: Bytes(version.to_vec()),
        resume: None,
    }
}

impl Harness {
    fn new() -> Self {
        Self::with(ServerConfig::default())
    }

    fn with(config: ServerConfig) -> Self {
        let syncs = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&syncs);
        Harness {
            hub: Hub::new(config, Rules),
            reg: MemoryRegistry::new(move |_: &str| Probe {
                inner: OpLog::new(0),
                syncs: Arc::clone(&counter),
            }),
            now: Instant::now(),
            syncs,
            conns: Vec::new(),
        }
    }

    /// A document of `len` bytes held by the server.
    fn big_doc(&mut self, name: &str, len: usize) {
        let d = self.reg.open(name).unwrap();
        let mut left = len;
        while left > 0 {
            let n = left.min(60_000);
            d.inner.edit(&vec![b'x'; n]);
            left -= n;
        }
    }

    /// A handshaken connection.
    fn connect(&mut self, peer: &str) -> ConnId {
        let conn = self.hub.accept(self.now);
        self.conns.push(conn);
        let hello = Message::Hello {
            versions: crdt_socket_sync::wire::PROTOCOL_VERSIONS.to_vec(),
            peer: peer.into(),
            token: Bytes::default(),
            compression: vec![Compression::Deflate],
            limits: PeerLimits {
                max_frame_len: 1 << 20,
                max_decompressed_len: 4 << 20,
            },
        };
        self.send(conn, &frame(&[hello]));
        conn
    }

    /// Opens `name` on `conn` from `version`; its handle. Drains `conn`.
    fn open(&mut self, conn: ConnId, name: &str, version: &[u8]) -> DocId {
        self.send(conn, &frame(&[open(name, version)]))
            .into_iter()
            .find_map(|m| match m {
                Message::Opened { doc, .. } => Some(doc),
                _ => None,
            })
            .expect("opened")
    }

    /// Hands `bytes` to the hub; what it queued for `conn`, drained.
    fn send(&mut self, conn: ConnId, bytes: &[u8]) -> Vec<Message> {
        self.input(conn, bytes);
        self.drain(conn)
    }

    fn input(&mut self, conn: ConnId, bytes: &[u8]) {
        self.hub.handle_input(conn, self.now, bytes, &mut self.reg);
    }

    fn drain(&mut self, conn: ConnId) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(f) = self.hub.poll_transmit_for(conn) {
            out.extend(decode(&f));
        }
        out
    }

    fn events(&mut self) -> Vec<ServerEvent> {
        std::iter::from_fn(|| self.hub.poll_event()).collect()
    }

    /// Runs due timeouts at the current time.
    fn tick(&mut self) {
        if self.hub.poll_timeout().is_some_and(|t| t <= self.now) {
            self.hub.handle_timeout(self.now, &mut self.reg);
        }
    }

    /// Every session's queue is within its limit.
    fn assert_queues_bounded(&self) {
        let limit = self.hub.config().limits.max_outbound_bytes;
        for c in &self.conns {
            if let Some(s) = self.hub.session(*c) {
                assert!(
                    s.queued_bytes() <= limit,
                    "{c:?} holds {} queued bytes (limit {limit})",
                    s.queued_bytes()
                );
            }
        }
    }

    fn syncs(&self) -> usize {
        self.syncs.load(Ordering::Relaxed)
    }
}

fn errors(msgs: &[Message]) -> Vec<ErrorCode> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::Error { code, .. } => Some(*code),
            _ => None,
        })
        .collect()
}

/// A writer, a reader and an attacker on "doc".
fn three_on_doc() -> (Harness, ConnId, ConnId, ConnId, DocId) {
    let mut h = Harness::new();
    let writer = h.connect("writer");
    let reader = h.connect("reader");
    let attacker = h.connect("attacker");
    h.open(writer, "doc", b"");
    h.open(reader, "doc", b"");
    let doc = h.open(attacker, "doc", b"");
    h.events();
    (h, writer, reader, attacker, doc)
}

/// The writer's edit still reaches the reader.
fn still_works(h: &mut Harness, writer: ConnId, reader: ConnId) {
    let doc = h.open(writer, "doc", b"");
    h.drain(reader);
    let mut w = OpLog::new(77);
    w.edit(b"still");
    let update = Message::Update {
        doc,
        seq: 1,
        data: Bytes(w.take_local_update().unwrap()),
    };
    let back = h.send(writer, &frame(&[update]));
    assert!(
        back.iter().any(|m| matches!(m, Message::Ack { .. })),
        "{back:?}"
    );
    let got = h.drain(reader);
    assert!(
        got.iter().any(|m| matches!(m, Message::Broadcast { .. })),
        "{got:?}"
    );
}

// ---- item 1: the elements of a batch count ----

fn empty_batch(doc: DocId, n: usize) -> Message {
    Message::UpdateBatch {
        doc,
        first_seq: 1,
        data: vec![Bytes::default(); n],
    }
}

/// Asserts what one flood input may cost: every queue within its limit, a
/// handful of events, the sender closed.
fn assert_flood_cost(h: &mut Harness, attacker: ConnId) {
    h.assert_queues_bounded();
    let events = h.events();
    assert!(
        events.len() <= 4,
        "{} events: {:?}",
        events.len(),
        &events[..4.min(events.len())]
    );
    assert!(h.hub.is_closed(attacker), "the sender is closed");
    assert!(events.iter().any(|e| matches!(
        e,
        ServerEvent::ClientDisconnected {
            cause: CloseCause::Inbound(_),
            ..
        }
    )));
    let back = h.drain(attacker);
    assert!(back.len() <= 2, "{} messages back", back.len());
}

#[test]
fn a_deflated_frame_of_four_million_empty_updates_costs_a_bounded_amount() {
    let (mut h, writer, reader, attacker, doc) = three_on_doc();
    let mut encoder = Encoder::new(&Limits::default());
    encoder.set_compression(Compression::Deflate, 0);
    let mut f = Vec::new();
    encoder
        .encode(&[empty_batch(doc, 4_000_000)], &mut f)
        .unwrap();
    assert!(f.len() < 32 * 1024, "{} bytes on the wire", f.len());
    let started = Instant::now();
    h.input(attacker, &f);
    eprintln!("handle_input: {:?}", started.elapsed());
    assert_flood_cost(&mut h, attacker);
    still_works(&mut h, writer, reader);
}

#[test]
fn an_uncompressed_megabyte_of_empty_updates_costs_a_bounded_amount() {
    let (mut h, writer, reader, attacker, doc) = three_on_doc();
    let f = frame(&[empty_batch(doc, (1 << 20) - 64)]);
    assert!(f.len() <= 1 << 20);
    h.input(attacker, &f);
    assert_flood_cost(&mut h, attacker);
    still_works(&mut h, writer, reader);
}

#[test]
fn a_batch_at_the_limit_is_still_accepted() {
    let (mut h, writer, reader, attacker, doc) = three_on_doc();
    let mut w = OpLog::new(9);
    let data: Vec<Bytes> = (0..1024)
        .map(|i| {
            w.edit(&[i as u8]);
            Bytes(w.take_local_update().unwrap())
        })
        .collect();
    let back = h.send(
        attacker,
        &frame(&[Message::UpdateBatch {
            doc,
            first_seq: 1,
            data,
        }]),
    );
    assert!(!h.hub.is_closed(attacker));
    assert!(
        back.contains(&Message::Ack {
            doc,
            applied: 1024,
            durable: 0
        }),
        "{back:?}"
    );
    // Two messages of 1024 elements are more than a frame may carry.
    let two = frame(&[empty_batch(doc, 1024), empty_batch(doc, 1)]);
    h.input(attacker, &two);
    assert!(h.hub.is_closed(attacker));
    still_works(&mut h, writer, reader);
}

#[test]
fn invalid_updates_in_one_input_cost_one_error_and_one_event() {
    let (mut h, writer, reader, attacker, doc) = three_on_doc();
    let invalid = Message::UpdateBatch {
        doc,
        first_seq: 1,
        data: vec![Bytes(vec![0]); 1000],
    };
    let back = h.send(attacker, &frame(&[invalid]));
    assert_eq!(
        errors(&back),
        [ErrorCode::InvalidUpdate],
        "{} messages back",
        back.len()
    );
    // The error, the batch's event, and the close: 1,000 invalid updates
    // are more than a session may send.
    let events = h.events();
    assert!(events.len() <= 3, "{events:?}");
    assert!(h.hub.is_closed(attacker));
    assert!(h.drain(reader).is_empty());
    // The same as single `Update` messages.
    let other = h.connect("other");
    let doc = h.open(other, "doc", b"");
    h.events();
    let singles: Vec<Message> = (0..1000)
        .map(|i| Message::Update {
            doc,
            seq: 1 + i,
            data: Bytes(vec![0]),
        })
        .collect();
    let back = h.send(other, &frame(&singles));
    assert_eq!(
        errors(&back),
        [ErrorCode::InvalidUpdate],
        "{} messages back",
        back.len()
    );
    assert!(h.events().len() <= 3);
    assert!(h.hub.is_closed(other));
    still_works(&mut h, writer, reader);
}

#[test]
fn errors_one_input_causes_are_bounded() {
    let (mut h, writer, reader, attacker, _) = three_on_doc();
    // Every update to a different handle that is not open: each is its own
    // batch, each an error.
    let msgs: Vec<Message> = (0..1024)
        .map(|i| Message::Update {
            doc: DocId(100 + i),
            seq: 1,
            data: Bytes(vec![0]),
        })
        .collect();
    let back = h.send(attacker, &frame(&msgs));
    let n = errors(&back).len();
    assert!((1..=16).contains(&n), "{n} errors");
    let events = h.events();
    assert!(events.len() <= 17, "{} events", events.len());
    h.assert_queues_bounded();
    still_works(&mut h, writer, reader);
}

#[test]
fn a_flood_of_invalid_updates_closes_the_session() {
    let (mut h, writer, reader, attacker, doc) = three_on_doc();
    let limit = h.hub.config().limits.max_invalid_updates as usize;
    let mut sent = 0;
    while !h.hub.is_closed(attacker) && sent <= 2 * limit {
        let bad = Message::Update {
            doc,
            seq: 1 + sent as u64,
            data: Bytes(vec![0]),
        };
        h.send(attacker, &frame(&[bad]));
        sent += 1;
    }
    assert!(
        h.hub.is_closed(attacker),
        "open after {sent} invalid updates"
    );
    assert_eq!(sent, limit + 1);
    let closed = h.events().into_iter().any(|e| matches!(
        e,
        ServerEvent::ClientDisconnected { conn, cause: CloseCause::Protocol(_) } if conn == attacker
    ));
    assert!(closed, "closed with ProtocolError");
    still_works(&mut h, writer, reader);
}

// ---- item 5: resync is not a CPU amplifier ----

/// One frame of 1,024 `SyncRequest`s against a 1 MB document computes at
/// most one delta.
#[test]
fn status_requests_in_one_frame_compute_one_sync() {
    let mut h = Harness::new();
    h.big_doc("big", 1 << 20);
    let c = h.connect("c");
    let version = h.reg.get("big").unwrap().version();
    let doc = h.open(c, "big", &version);
    let before = h.syncs();
    let requests: Vec<Message> = (0..1024)
        .map(|_| Message::SyncRequest {
            doc,
            version: Bytes(version.clone()),
        })
        .collect();
    let f = frame(&requests);
    assert!(f.len() < 16 * 1024);
    h.input(c, &f);
    let computed = h.syncs() - before;
    assert!(
        computed <= 1,
        "{computed} delta/snapshot computations for one frame"
    );
    // The request is answered all the same.
    let mut got = h.drain(c);
    for _ in 0..10 {
        h.now += Duration::from_millis(100);
        h.tick();
        got.extend(h.drain(c));
    }
    assert!(
        got.iter().any(|m| matches!(m, Message::SyncDone { .. })),
        "{got:?}"
    );
    assert!(h.events().len() <= 4);
}

/// Requests spread over many inputs are rate limited: what is computed in
/// a second is at most the burst plus the rate.
#[test]
fn status_requests_over_many_inputs_are_rate_limited() {
    let mut h = Harness::new();
    h.big_doc("big", 1 << 20);
    let c = h.connect("c");
    let version = h.reg.get("big").unwrap().version();
    let doc = h.open(c, "big", &version);
    let before = h.syncs();
    let f = frame(&[Message::SyncRequest {
        doc,
        version: Bytes(version.clone()),
    }]);
    // 2,000 inputs in one second, the client reading everything.
    for _ in 0..2000 {
        h.now += Duration::from_micros(500);
        h.send(c, &f);
        h.tick();
        h.drain(c);
    }
    let computed = h.syncs() - before;
    let rate = 2 * h.hub.config().limits.sync_rate as usize;
    assert!(computed <= rate, "{computed} computations in one second");
    assert!(!h.hub.is_closed(c));
}

/// A client that never reads, opening many large documents, pins at most
/// one computed payload beyond its bounded queue.
#[test]
fn a_client_that_never_reads_pins_a_bounded_amount() {
    let mut h = Harness::new();
    for i in 0..20 {
        h.big_doc(&format!("big{i}"), 1 << 20);
    }
    let c = h.connect("c");
    h.drain(c);
    let before = h.syncs();
    let opens: Vec<Message> = (0..20).map(|i| open(&format!("big{i}"), b"")).collect();
    h.input(c, &frame(&opens));
    for _ in 0..10 {
        h.now += Duration::from_millis(100);
        h.tick();
    }
    let computed = h.syncs() - before;
    // The queue (8 MiB) holds a few; the rest wait uncomputed.
    assert!(
        computed <= 4,
        "{computed} payloads computed for a client that reads nothing"
    );
    h.assert_queues_bounded();
    assert!(
        h.hub.transfer_cache_bytes() <= 4 << 20,
        "{}",
        h.hub.transfer_cache_bytes()
    );
    // Once it reads, every document syncs.
    let mut done = 0;
    for _ in 0..200 {
        done += h
            .drain(c)
            .iter()
            .filter(|m| matches!(m, Message::SyncDone { .. }))
            .count();
        h.now += Duration::from_millis(10);
        h.tick();
        if done == 20 {
            break;
        }
    }
    assert_eq!(done, 20);
}

// ---- item 13: fast-path order, CRDT panics ----

/// The single-update fast path refuses a read-only or unsubscribed sender
/// before looking at anyone else, with the same errors as the general path.
#[test]
fn the_fast_path_checks_the_sender_first() {
    let mut h = Harness::new();
    let a = h.connect("a");
    let b = h.connect("b");
    let ro = h.open(a, "ro-doc", b"");
    h.open(b, "ro-doc", b"");
    let mut w = OpLog::new(5);
    w.edit(b"x");
    let data = Bytes(w.take_local_update().unwrap());
    let back = h.send(
        a,
        &frame(&[Message::Update {
            doc: ro,
            seq: 1,
            data: data.clone(),
        }]),
    );
    assert_eq!(errors(&back), [ErrorCode::ReadOnly]);
    let back = h.send(
        a,
        &frame(&[Message::Update {
            doc: DocId(99),
            seq: 1,
            data,
        }]),
    );
    assert_eq!(errors(&back), [ErrorCode::UnknownDocument]);
    assert!(
        h.drain(b).is_empty(),
        "nothing reached the other subscriber"
    );
    assert!(h.reg.get("ro-doc").unwrap().inner.text().is_empty());
}

/// A CRDT that panics in `apply` fails its document only: its subscribers
/// get a typed error, it cannot be reopened, every other document and
/// session goes on.
#[test]
fn a_panicking_document_fails_alone() {
    for batched in [false, true] {
        let mut h = Harness::new();
        let a = h.connect("a");
        let b = h.connect("b");
        let bomb_a = h.open(a, "bomb", b"");
        h.open(b, "bomb", b"");
        h.open(a, "doc", b"");
        h.open(b, "doc", b"");
        h.events();
        let bomb = Message::Update {
            doc: bomb_a,
            seq: 1,
            data: Bytes(BOMB.to_vec()),
        };
        let msgs = if batched {
            vec![Message::UpdateBatch {
                doc: bomb_a,
                first_seq: 1,
                data: vec![Bytes(vec![0]), Bytes(BOMB.to_vec())],
            }]
        } else {
            vec![bomb]
        };
        let back = h.send(a, &frame(&msgs));
        assert!(errors(&back).contains(&ErrorCode::Internal), "{back:?}");
        assert!(errors(&h.drain(b)).contains(&ErrorCode::Internal));
        assert!(!h.hub.is_closed(a) && !h.hub.is_closed(b));
        assert_eq!(h.hub.subscribers("bomb"), 0);
        // Reopening it is refused with a typed error.
        let back = h.send(b, &frame(&[open("bomb", b"")]));
        assert!(
            back.iter().any(|m| matches!(
                m,
                Message::OpenRefused {
                    code: ErrorCode::Internal,
                    ..
                }
            )),
            "{back:?}"
        );
        // The other document goes on.
        still_works(&mut h, a, b);
    }
}

/// A panic while computing a sync fails the document the same way.
#[test]
fn a_panic_while_computing_a_sync_fails_the_document_alone() {
    let mut h = Harness::new();
    let a = h.connect("a");
    let b = h.connect("b");
    h.open(b, "bomb", b"");
    h.open(a, "doc", b"");
    h.open(b, "doc", b"");
    let back = h.send(a, &frame(&[open("bomb", BOMB)]));
    assert!(
        errors(&back).contains(&ErrorCode::Internal)
            || back.iter().any(|m| matches!(
                m,
                Message::OpenRefused {
                    code: ErrorCode::Internal,
                    ..
                }
            )),
        "{back:?}"
    );
    assert!(errors(&h.drain(b)).contains(&ErrorCode::Internal));
    still_works(&mut h, a, b);
}

/// A session asking for syncs from ever new versions cannot flush the
/// payload another client may resume: its own entries replace each other.
#[test]
fn one_session_cannot_evict_the_transfers_others_may_resume() {
    let mut h = Harness::with(ServerConfig {
        limits: Limits {
            max_transfer_cache_bytes: 8 << 20,
            ..Limits::default()
        },
        ..ServerConfig::default()
    });
    h.big_doc("big", 3 << 19);
    // A gets the first chunk of its sync, then its connection is cut.
    let a = h.connect("a");
    h.input(a, &frame(&[open("big", b"")]));
    let first = h.hub.poll_transmit_for(a).unwrap();
    let (transfer, offset) = decode(&first)
        .into_iter()
        .chain(std::iter::from_fn(|| h.hub.poll_transmit_for(a).map(|f| decode(&f))).flatten())
        .find_map(|m| match m {
            Message::SyncChunk {
                transfer,
                offset,
                data,
                ..
            } => Some((transfer, offset + data.len() as u64)),
            _ => None,
        })
        .expect("a sync chunk");
    h.hub.connection_lost(a, h.now);
    // The attacker asks for the document from 40 different versions,
    // reading everything.
    let b = h.connect("b");
    let doc = h.open(b, "big", b"");
    for k in 1..=40u32 {
        let mut version = 0u32.to_le_bytes().to_vec();
        version.extend_from_slice(&k.to_le_bytes());
        h.now += Duration::from_millis(10);
        h.send(
            b,
            &frame(&[Message::SyncRequest {
                doc,
                version: Bytes(version),
            }]),
        );
        h.tick();
        h.drain(b);
    }
    // A comes back and resumes.
    let a2 = h.connect("a2");
    h.events();
    let resume = Message::Open {
        name: "big".into(),
        version: Bytes::default(),
        resume: Some(crdt_socket_sync::wire::Resume { transfer, offset }),
    };
    h.send(a2, &frame(&[resume]));
    let resumed = h
        .events()
        .into_iter()
        .any(|e| matches!(e, ServerEvent::TransferResumed { .. }));
    assert!(resumed, "A's transfer was evicted");
}
