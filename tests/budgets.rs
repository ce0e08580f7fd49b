//! The cost model, enforced: whatever several connections send — garbage,
//! arbitrary messages, the known amplifiers — every input stays within the
//! bounds [`Budget`] checks, for every session of the hub, before and after
//! the handshake, with read-only and read-write tokens, message and stream
//! framing, compressed or not. Each amplifier also has a test of its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crdt_socket_sync::document::{ApplyOutcome, Document, DocumentError};
use crdt_socket_sync::registry::MemoryRegistry;
use crdt_socket_sync::server::{ConnId, Hub, ServerConfig, StaticTokens};
use crdt_socket_sync::testing::{Budget, OpLog};
use crdt_socket_sync::wire::{
    Access, Bytes, Compression, DocId, Encoder, Message, MessageDecoder, PROTOCOL_VERSIONS, Route,
    SessionId,
};
use crdt_socket_sync::{Framing, Limits};
use proptest::prelude::*;

/// Small limits, so that the amplifiers reach them in a few frames.
fn limits() -> Limits {
    Limits {
        max_frame_len: 64 << 10,
        max_decompressed_len: 256 << 10,
        max_messages_per_frame: 64,
        max_message_len: 1 << 20,
        max_outbound_bytes: 256 << 10,
        max_outbound_messages: 4096,
        ..Limits::default()
    }
}

/// What an attacker encodes with: any number of messages per frame, bodies
/// up to what the server inflates.
fn attacker_limits() -> Limits {
    Limits {
        max_messages_per_frame: u32::MAX,
        ..limits()
    }
}

/// Syncs computed (deltas and snapshots), counted across all documents.
type Work = Arc<AtomicUsize>;

/// An [`OpLog`] that counts the syncs computed from it: the CPU a
/// `SyncRequest` or an `Open` costs the hub.
struct Metered {
    inner: OpLog,
    work: Work,
}

impl Document for Metered {
    fn version(&self) -> Vec<u8> {
        self.inner.version()
    }
    fn delta_since(&self, version: &[u8]) -> Result<Vec<u8>, DocumentError> {
        // A refused version costs nothing; the snapshot sent instead counts.
        let delta = self.inner.delta_since(version)?;
        self.work.fetch_add(1, Ordering::Relaxed);
        Ok(delta)
    }
    fn apply(&mut self, update: &[u8]) -> ApplyOutcome {
        self.inner.apply(update)
    }
    fn apply_batch(&mut self, updates: &[&[u8]], outcomes: &mut Vec<ApplyOutcome>) {
        self.inner.apply_batch(updates, outcomes)
    }
    fn pending_bytes(&self) -> usize {
        self.inner.pending_bytes()
    }
    fn snapshot(&self) -> Vec<u8> {
        self.work.fetch_add(1, Ordering::Relaxed);
        self.inner.snapshot()
    }
    fn load_snapshot(&mut self, snapshot: &[u8]) -> Result<(), DocumentError> {
        self.inner.load_snapshot(snapshot)
    }
    fn take_local_update(&mut self) -> Option<Vec<u8>> {
        self.inner.take_local_update()
    }
    fn common_version(&self, versions: &[&[u8]]) -> Option<Vec<u8>> {
        self.inner.common_version(versions)
    }
    fn prune_to(&mut self, version: &[u8]) -> Result<bool, DocumentError> {
        self.inner.prune_to(version)
    }
}

/// Credentials a connection presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    ReadWrite,
    ReadOnly,
    Unknown,
    /// No `Hello` at all.
    Silent,
}

struct Conn {
    id: ConnId,
    /// Document handles learnt from the `Opened`s drained so far.
    handles: BTreeMap<String, DocId>,
}

/// A hub, its registry and the connections talking to it.
struct World {
    hub: Hub<StaticTokens>,
    reg: MemoryRegistry<Metered>,
    work: Work,
    budget: Budget,
    now: Instant,
    stream: bool,
    /// Stream framing: inputs are cut into pieces of this many bytes.
    piece: usize,
    conns: Vec<Conn>,
}

/// Connections a world holds at most (the steps name them modulo this).
const MAX_CONNS: usize = 8;

impl World {
    /// Three connections: a read-write subscriber of "a" that never reads
    /// (the victim), a read-only one and a read-write one, also on "a",
    /// which holds a few KiB.
    fn new(stream: bool, piece: usize) -> Self {
        let work = Work::default();
        let factory_work = work.clone();
        let mut reg = MemoryRegistry::new(move |_: &str| Metered {
            inner: OpLog::new(0),
            work: factory_work.clone(),
        });
        let mut seeded = OpLog::new(7);
        for i in 0..64u32 {
            seeded.edit(&[b'x'; 100]);
            seeded.edit(&i.to_le_bytes());
        }
        reg.insert(
            "a",
            Metered {
                inner: seeded,
                work: work.clone(),
            },
        );
        let auth = StaticTokens::default()
            .with("rw", "writer", Access::ReadWrite)
            .with("ro", "reader", Access::ReadOnly);
        let hub = Hub::new(
            ServerConfig {
                limits: limits(),
                framing: if stream {
                    Framing::Stream
                } else {
                    Framing::Datagram
                },
                ..ServerConfig::default()
            },
            auth,
        );
        let mut w = World {
            budget: Budget::new(&hub),
            hub,
            reg,
            work,
            now: Instant::now(),
            stream,
            piece: piece.max(1),
            conns: Vec::new(),
        };
        for token in [Token::ReadWrite, Token::ReadOnly, Token::ReadWrite] {
            let c = w.connect(token, false).expect("setup within budget");
            w.send(c, &[open("a")], false).expect("setup within budget");
            w.drain(c);
        }
        w
    }

    /// Index of connection `i` (modulo those held).
    fn pick(&self, i: usize) -> usize {
        i % self.conns.len()
    }

    /// One input from connection `c`, checked against the budget.
    fn input(&mut self, c: usize, bytes: &[u8]) -> Result<(), String> {
        let conn = self.conns[c].id;
        self.budget
            .input(&mut self.hub, conn, self.now, bytes, &mut self.reg)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Sends `bytes` from `c` as the transport would deliver them: one
    /// input per frame with message framing, pieces of `self.piece` bytes
    /// on a stream.
    fn deliver(&mut self, c: usize, frames: &[Vec<u8>]) -> Result<(), String> {
        if self.stream {
            let all: Vec<u8> = frames.concat();
            for piece in all.chunks(self.piece) {
                self.input(c, piece)?;
            }
        } else {
            for f in frames {
                self.input(c, f)?;
            }
        }
        Ok(())
    }

    /// Frames holding `msgs`, as many per frame as fit.
    fn frames(msgs: &[Message], deflate: bool) -> Vec<Vec<u8>> {
        let mut encoder = Encoder::new(&attacker_limits());
        if deflate {
            encoder.set_compression(Compression::Deflate, 0);
        }
        let mut out = Vec::new();
        let mut frame = Vec::new();
        if encoder.encode(msgs, &mut frame).is_ok() {
            out.push(frame);
            return out;
        }
        // Too large together: one frame each, skipping what fits none.
        for m in msgs {
            let mut frame = Vec::new();
            if encoder.encode(std::slice::from_ref(m), &mut frame).is_ok() {
                out.push(frame);
            }
        }
        out
    }

    fn send(&mut self, c: usize, msgs: &[Message], deflate: bool) -> Result<(), String> {
        if msgs.is_empty() {
            return Ok(());
        }
        let frames = Self::frames(msgs, deflate);
        self.deliver(c, &frames)
    }

    /// Accepts a connection and sends its `Hello` (none for
    /// [`Token::Silent`]); `None` once the world is full.
    fn connect(&mut self, token: Token, deflate: bool) -> Result<usize, String> {
        if self.conns.len() >= MAX_CONNS {
            return Ok(self.pick(0));
        }
        let id = self.hub.accept(self.now);
        self.budget
            .check(&self.hub, 0, 1)
            .map_err(|e| e.to_string())?;
        self.budget.drain_events(&mut self.hub);
        self.conns.push(Conn {
            id,
            handles: BTreeMap::new(),
        });
        let c = self.conns.len() - 1;
        let token = match token {
            Token::ReadWrite => "rw",
            Token::ReadOnly => "ro",
            Token::Unknown => "nope",
            Token::Silent => return Ok(c),
        };
        self.send(c, &[hello(token)], deflate)?;
        Ok(c)
    }

    /// Takes everything queued for `c`, learning its document handles.
    fn drain(&mut self, c: usize) {
        let mut decoder = MessageDecoder::new(attacker_limits());
        let mut got = Vec::new();
        for _ in 0..100_000 {
            let Some(frame) = self.hub.poll_transmit_for(self.conns[c].id) else {
                break;
            };
            let _ = decoder.decode(&frame, &mut got);
        }
        for m in got {
            if let Message::Opened { name, doc, .. } = m {
                self.conns[c].handles.insert(name, doc);
            }
        }
    }

    /// `c`'s handle of `name`, opening it first if needed.
    fn handle(&mut self, c: usize, name: &str) -> Result<DocId, String> {
        if let Some(doc) = self.conns[c].handles.get(name) {
            return Ok(*doc);
        }
        self.send(c, &[open(name)], false)?;
        self.drain(c);
        Ok(self.conns[c].handles.get(name).copied().unwrap_or(DocId(0)))
    }

    fn session_id(&self, c: usize) -> SessionId {
        self.hub
            .session(self.conns[c].id)
            .map_or(SessionId(0), |s| s.session_id())
    }

    fn advance(&mut self, ms: u16) -> Result<(), String> {
        self.now += Duration::from_millis(u64::from(ms));
        self.hub.handle_timeout(self.now, &mut self.reg);
        let events = self.budget.drain_events(&mut self.hub);
        self.budget
            .check(&self.hub, 0, events)
            .map_err(|e| e.to_string())
    }

    /// Runs `step`, then checks the syncs it computed: at most one per
    /// `Open` and one per document named in a `SyncRequest`, plus one.
    fn run(&mut self, step: &Step) -> Result<(), String> {
        let before = self.work.load(Ordering::Relaxed);
        let allowed = self.step(step)?;
        let syncs = self.work.load(Ordering::Relaxed) - before;
        if syncs > allowed {
            return Err(format!(
                "budget Syncs exceeded: {step:?} computed {syncs} syncs > {allowed}"
            ));
        }
        Ok(())
    }

    /// Runs `step`; returns the syncs it may compute.
    fn step(&mut self, step: &Step) -> Result<usize, String> {
        match step {
            Step::Connect { token, deflate } => {
                self.connect(*token, *deflate)?;
                Ok(0)
            }
            Step::Garbage { conn, bytes } => {
                let c = self.pick(*conn);
                self.input(c, bytes)?;
                Ok(1)
            }
            Step::Send {
                conn,
                msgs,
                deflate,
            } => {
                let c = self.pick(*conn);
                self.send(c, msgs, *deflate)?;
                Ok(sync_allowance(msgs))
            }
            Step::EmptyBatch { conn, n, deflate } => {
                let c = self.pick(*conn);
                let doc = self.handle(c, "a")?;
                let batch = Message::UpdateBatch {
                    doc,
                    first_seq: 1,
                    data: vec![Bytes::default(); *n],
                };
                self.send(c, &[batch], *deflate)?;
                // The `Open` that learnt the handle.
                Ok(1)
            }
            Step::StatusFlood { conn, n } => {
                let c = self.pick(*conn);
                let doc = self.handle(c, "a")?;
                let request = Message::SyncRequest {
                    doc,
                    version: Bytes::default(),
                };
                let msgs = vec![request; *n];
                self.send(c, &msgs, false)?;
                // One more for the `Open` that learnt the handle.
                Ok(1 + sync_allowance(&msgs))
            }
            Step::AppFlood {
                conn,
                to,
                frames,
                deflate,
            } => {
                let c = self.pick(*conn);
                let victim = self.session_id(self.pick(*to));
                let app = Message::App {
                    kind: 7,
                    route: Route::Session(victim),
                    from: None,
                    data: Bytes(vec![0x5a; 60 << 10]),
                };
                for _ in 0..*frames {
                    self.send(c, std::slice::from_ref(&app), *deflate)?;
                }
                Ok(1)
            }
            Step::FragmentsBeforeHello { frames, deflate } => {
                let c = self.connect(Token::Silent, false)?;
                // Zeros: deflated, each frame carries a whole inflated body.
                let len = if *deflate { 200 << 10 } else { 60 << 10 };
                let total = (*frames as u64) * len as u64 + 1;
                let msgs: Vec<Message> = (0..*frames)
                    .map(|i| Message::Fragment {
                        id: 1,
                        offset: i as u64 * len as u64,
                        total,
                        data: Bytes(vec![0; len]),
                    })
                    .collect();
                let frames: Vec<Vec<u8>> = msgs
                    .iter()
                    .flat_map(|m| Self::frames(std::slice::from_ref(m), *deflate))
                    .collect();
                self.deliver(c, &frames)?;
                Ok(1)
            }
            Step::HugeHeader { conn } => {
                let c = self.pick(*conn);
                // Version 1, no flags, a body of 65,000 bytes (a varint),
                // and none of it.
                self.input(c, &[0x10, 0xe8, 0xfb, 0x03])?;
                Ok(1)
            }
            Step::Drain { conn } => {
                let c = self.pick(*conn);
                self.drain(c);
                // Draining sends what is queued, catch-ups included.
                Ok(usize::MAX)
            }
            Step::Advance { ms } => {
                self.advance(*ms)?;
                // Timeouts may start catch-ups.
                Ok(usize::MAX)
            }
        }
    }
}

/// Syncs the messages of one send may compute: one per `Open` and one per
/// document named in a `SyncRequest`, plus one.
fn sync_allowance(msgs: &[Message]) -> usize {
    let opens = msgs
        .iter()
        .filter(|m| matches!(m, Message::Open { .. }))
        .count();
    let mut docs: Vec<DocId> = msgs
        .iter()
        .filter_map(|m| match m {
            Message::SyncRequest { doc, .. } => Some(*doc),
            _ => None,
        })
        .collect();
    docs.sort_unstable();
    docs.dedup();
    1 + opens + docs.len()
}

fn hello(token: &str) -> Message {
    Message::Hello {
        versions: PROTOCOL_VERSIONS.to_vec(),
        peer: "p".into(),
        token: Bytes(token.as_bytes().to_vec()),
        compression: vec![Compression::Deflate],
        limits: limits().peer_limits(),
    }
}

fn open(name: &str) -> Message {
    Message::Open {
        name: name.into(),
        version: Bytes::default(),
        resume: None,
    }
}

#[derive(Clone, Debug)]
enum Step {
    Connect {
        token: Token,
        deflate: bool,
    },
    Garbage {
        conn: usize,
        bytes: Vec<u8>,
    },
    Send {
        conn: usize,
        msgs: Vec<Message>,
        deflate: bool,
    },
    /// Item 1: one `UpdateBatch` of `n` empty (invalid) updates.
    EmptyBatch {
        conn: usize,
        n: usize,
        deflate: bool,
    },
    /// Item 5: `n` `SyncRequest`s for one document in one frame.
    StatusFlood {
        conn: usize,
        n: usize,
    },
    /// Item 3: `frames` 60 KiB application messages to another session.
    AppFlood {
        conn: usize,
        to: usize,
        frames: usize,
        deflate: bool,
    },
    /// Item 2: a new connection sends fragments and no `Hello`.
    FragmentsBeforeHello {
        frames: usize,
        deflate: bool,
    },
    /// Item 9: a stream header declaring a 65,000-byte frame, and nothing
    /// more.
    HugeHeader {
        conn: usize,
    },
    Drain {
        conn: usize,
    },
    Advance {
        ms: u16,
    },
}

fn token() -> impl Strategy<Value = Token> {
    prop_oneof![
        Just(Token::ReadWrite),
        Just(Token::ReadOnly),
        Just(Token::Unknown),
        Just(Token::Silent),
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes)
}

fn doc() -> impl Strategy<Value = DocId> {
    (0u32..4).prop_map(DocId)
}

/// Arbitrary client messages, a few of them adversarial in size.
fn message() -> impl Strategy<Value = Message> {
    let name = prop_oneof![Just("a".to_string()), Just("b".to_string()), "[a-z]{1,12}"];
    prop_oneof![
        (doc(), 0u64..8, bytes(64)).prop_map(|(doc, seq, data)| Message::Update { doc, seq, data }),
        (doc(), 0u64..8, prop::collection::vec(bytes(16), 0..300)).prop_map(
            |(doc, first_seq, data)| Message::UpdateBatch {
                doc,
                first_seq,
                data
            }
        ),
        any::<u64>().prop_map(|t| Message::Ping { t }),
        (name.clone(), bytes(24)).prop_map(|(name, version)| Message::Open {
            name,
            version,
            resume: None
        }),
        (doc(), bytes(24)).prop_map(|(doc, version)| Message::SyncRequest { doc, version }),
        doc().prop_map(|doc| Message::CloseDoc { doc }),
        (doc(), any::<u32>(), prop::option::of(bytes(5000)))
            .prop_map(|(doc, clock, state)| { Message::AwarenessSet { doc, clock, state } }),
        (any::<u32>(), 0u64..4, bytes(4000)).prop_map(|(kind, to, data)| Message::App {
            kind,
            route: Route::Session(SessionId(to)),
            from: None,
            data
        }),
        (any::<u32>(), doc(), bytes(4000)).prop_map(|(kind, doc, data)| Message::App {
            kind,
            route: Route::Document(doc),
            from: None,
            data
        }),
        (doc(), bytes(24)).prop_map(|(doc, version)| Message::SyncDone { doc, version }),
        prop_oneof![Just("rw"), Just("ro"), Just("x")].prop_map(|t| Message::RefreshToken {
            token: Bytes(t.as_bytes().to_vec())
        }),
        (0u32..3, 0u64..1000, 0u64..2_000_000, bytes(2000)).prop_map(
            |(id, offset, total, data)| Message::Fragment {
                id,
                offset,
                total,
                data
            }
        ),
        prop_oneof![Just("rw"), Just("ro"), Just("x")].prop_map(hello),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let conn = 0usize..MAX_CONNS;
    prop_oneof![
        2 => (token(), any::<bool>()).prop_map(|(token, deflate)| Step::Connect { token, deflate }),
        2 => (conn.clone(), prop::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(conn, bytes)| Step::Garbage { conn, bytes }),
        6 => (conn.clone(), prop::collection::vec(message(), 1..40), any::<bool>())
            .prop_map(|(conn, msgs, deflate)| Step::Send { conn, msgs, deflate }),
        1 => (conn.clone(), 100usize..30_000, any::<bool>())
            .prop_map(|(conn, n, deflate)| Step::EmptyBatch { conn, n, deflate }),
        1 => (conn.clone(), 2usize..64).prop_map(|(conn, n)| Step::StatusFlood { conn, n }),
        1 => (conn.clone(), conn.clone(), 1usize..10, any::<bool>())
            .prop_map(|(conn, to, frames, deflate)| Step::AppFlood { conn, to, frames, deflate }),
        1 => (1usize..6, any::<bool>())
            .prop_map(|(frames, deflate)| Step::FragmentsBeforeHello { frames, deflate }),
        1 => conn.clone().prop_map(|conn| Step::HugeHeader { conn }),
        2 => conn.prop_map(|conn| Step::Drain { conn }),
        1 => (0u16..3000).prop_map(|ms| Step::Advance { ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 64, ..ProptestConfig::default() })]

    /// Every input of every connection stays within the cost model.
    #[test]
    fn every_input_stays_within_budget(
        stream in any::<bool>(),
        piece in 1usize..4096,
        steps in prop::collection::vec(step(), 1..12),
    ) {
        let mut w = World::new(stream, piece);
        for s in &steps {
            if let Err(e) = w.run(s) {
                prop_assert!(false, "{}", e);
            }
        }
    }
}

/// Runs `step` in a fresh world of each framing.
fn check(step: Step) {
    for stream in [false, true] {
        let mut w = World::new(stream, 29);
        if let Err(e) = w.run(&step) {
            panic!("stream={stream}: {e}");
        }
    }
}

/// Item 1: an `UpdateBatch` of many empty updates.
#[test]
fn empty_update_batch_within_budget() {
    check(Step::EmptyBatch {
        conn: 2,
        n: 30_000,
        deflate: true,
    });
}

/// Item 1 from a read-only token: each refused update must not cost an
/// error apiece either.
#[test]
fn read_only_update_batch_within_budget() {
    check(Step::EmptyBatch {
        conn: 1,
        n: 30_000,
        deflate: true,
    });
}

/// Item 2: fragments before `Hello`.
#[test]
fn fragments_before_hello_within_budget() {
    check(Step::FragmentsBeforeHello {
        frames: 4,
        deflate: true,
    });
}

/// Item 3: application messages to a session that does not read.
#[test]
fn app_flood_to_another_session_within_budget() {
    check(Step::AppFlood {
        conn: 2,
        to: 0,
        frames: 9,
        deflate: true,
    });
}

/// Item 5: many `SyncRequest`s for one document in one frame.
#[test]
fn status_request_flood_within_budget() {
    check(Step::StatusFlood { conn: 2, n: 64 });
}

/// Item 9: a stream header declaring a large frame reserves nothing.
#[test]
fn huge_stream_header_within_budget() {
    let mut w = World::new(true, 29);
    if let Err(e) = w.run(&Step::HugeHeader { conn: 2 }) {
        panic!("{e}");
    }
}

/// Byte streams for the `server_session` fuzz target that replay known
/// amplifiers against its limits (`fuzzing::server_session` cuts them into
/// 23-byte inputs): seeds of its committed corpus.
fn amplifier_streams() -> Vec<(&'static str, Vec<u8>)> {
    let frame = |msgs: &[Message], deflate: bool| {
        let mut out = Vec::new();
        let mut encoder = Encoder::new(&attacker_limits());
        if deflate {
            encoder.set_compression(Compression::Deflate, 0);
        }
        encoder.encode(msgs, &mut out).expect("encodes");
        out
    };
    let hello = frame(&[hello("fuzz")], false);
    let opened = [hello.clone(), frame(&[open("doc")], false)].concat();
    let batch = Message::UpdateBatch {
        doc: DocId(0),
        first_seq: 1,
        data: vec![Bytes::default(); 2000],
    };
    let fragments: Vec<u8> = (0..2u64)
        .flat_map(|i| {
            let fragment = Message::Fragment {
                id: 1,
                offset: i * (200 << 10),
                total: 1 << 20,
                data: Bytes(vec![0; 200 << 10]),
            };
            frame(&[fragment], true)
        })
        .collect();
    vec![
        (
            "item1-empty-update-batch",
            [opened, frame(&[batch], true)].concat(),
        ),
        ("item2-fragments-before-hello", fragments),
        (
            "item9-huge-stream-header",
            [hello, vec![0x10, 0xe8, 0xfb, 0x03]].concat(),
        ),
    ]
}

/// The `server_session` fuzz body (budget checked after every input) over
/// the amplifier seeds.
#[test]
fn fuzz_seeds_within_budget() {
    let mut failed = Vec::new();
    for (name, bytes) in amplifier_streams() {
        let outcome =
            std::panic::catch_unwind(|| crdt_socket_sync::fuzzing::server_session(&bytes));
        if let Err(panic) = outcome {
            let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
            failed.push(format!("{name}: {message}"));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

/// Writes the amplifier seeds into the fuzz corpus:
/// `cargo test --test budgets write_fuzz_seeds -- --ignored`.
#[test]
#[ignore = "writes fuzz/corpus/server_session"]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/server_session");
    for (name, bytes) in amplifier_streams() {
        std::fs::write(dir.join(name), bytes).expect("writes the seed");
    }
}

/// Before the handshake, one input causes at most a handshake outcome and a
/// close, whatever it carries (the README's security table): a good `Hello`
/// followed by a frame's worth of pings, a refused `Hello`, requests before
/// any `Hello`, and garbage.
#[test]
fn an_input_before_the_handshake_causes_at_most_two_events() {
    let auth = || StaticTokens::default().with("rw", "writer", Access::ReadWrite);
    let pings: Vec<Message> = (0..60).map(|t| Message::Ping { t }).collect();
    let frame = |msgs: &[Message]| {
        let mut out = Vec::new();
        Encoder::new(&limits()).encode(msgs, &mut out).unwrap();
        out
    };
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        (
            "hello then pings",
            frame(&[&[hello("rw")][..], &pings].concat()),
        ),
        (
            "refused hello then pings",
            frame(&[&[hello("nope")][..], &pings].concat()),
        ),
        (
            "requests before hello",
            frame(&[open("a"), open("b"), Message::Ping { t: 1 }]),
        ),
        ("garbage", vec![0x5a; 300]),
    ];
    for (what, input) in inputs {
        let config = ServerConfig {
            limits: limits(),
            ..ServerConfig::default()
        };
        let mut hub = Hub::new(config, auth());
        let mut reg = MemoryRegistry::new(|_: &str| OpLog::new(0));
        let now = Instant::now();
        let conn = hub.accept(now);
        while hub.poll_event().is_some() {}
        hub.handle_input(conn, now, &input, &mut reg);
        let mut events = Vec::new();
        while let Some(e) = hub.poll_event() {
            events.push(e);
        }
        assert!(events.len() <= 2, "{what}: {events:?}");
        assert!(!events.is_empty(), "{what}: the input had an outcome");
    }
}
