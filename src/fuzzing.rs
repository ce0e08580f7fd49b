//! Bodies of the cargo-fuzz targets in `fuzz/`.
//!
//! They live in the library so normal builds compile them and the targets
//! stay three lines long. Each must never panic, whatever the input. The
//! server targets also check the cost model after every input
//! ([`crate::testing::Budget`]): a bound broken panics with which bound,
//! which session and the numbers.

use crate::Limits;
#[cfg(feature = "yrs")]
mod ywebsocket;
use crate::wire::compress::Inflater;
use crate::wire::{Encoder, MessageDecoder, StreamDecoder};
#[cfg(feature = "yrs")]
pub use ywebsocket::ywebsocket;

/// Small limits so the fuzzer reaches the limit checks quickly: a few
/// frames of input can fill a send queue.
fn fuzz_limits() -> Limits {
    Limits {
        max_frame_len: 64 * 1024,
        max_decompressed_len: 256 * 1024,
        max_messages_per_frame: 64,
        max_outbound_bytes: 64 * 1024,
        max_outbound_messages: 256,
        ..Limits::default()
    }
}

/// Decodes `data` as one frame and as a stream (split at a point taken from
/// the first byte); both must agree. Whatever decodes must re-encode to a
/// frame that decodes to the same messages.
///
/// ```
/// crdt_socket_sync::fuzzing::frame_decode(&[0x10, 0x01, 0x00, 0, 0, 0, 0]);
/// ```
pub fn frame_decode(data: &[u8]) {
    let limits = fuzz_limits();
    let mut one = Vec::new();
    let whole = MessageDecoder::new(limits).decode(data, &mut one);

    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut stream = StreamDecoder::new(limits);
    let mut streamed = Vec::new();
    let mut frames = 0;
    let mut failed = false;
    for part in [&data[..split], &data[split..]] {
        let mut input = part;
        loop {
            match stream.decode(&mut input, &mut streamed) {
                Ok(true) => frames += 1,
                Ok(false) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            break;
        }
    }
    if whole.is_ok() {
        // A valid single frame must decode identically as a stream.
        assert_eq!(frames, 1);
        assert_eq!(one, streamed);
        let mut encoder = Encoder::new(&limits);
        let mut again = Vec::new();
        if encoder.encode(&one, &mut again).is_ok() {
            let mut back = Vec::new();
            MessageDecoder::new(limits)
                .decode(&again, &mut back)
                .expect("re-encoded frame decodes");
            assert_eq!(back, one);
        }
    }
}

/// Inflates `data` into a buffer whose size comes from the first two bytes,
/// as the frame decoder does after checking the declared size.
///
/// ```
/// crdt_socket_sync::fuzzing::inflate(&[0, 4, 1, 2, 3]);
/// ```
pub fn inflate(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let declared = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let mut out = vec![0u8; declared];
    let _ = Inflater::default().inflate_exact(&data[2..], &mut out);
}

/// Structure-aware: encodes arbitrary messages (optionally compressed) and
/// checks they decode back unchanged.
#[cfg(feature = "arbitrary")]
pub fn message_round_trip(messages: Vec<crate::wire::Message>, deflate: bool) {
    let limits = fuzz_limits();
    let mut encoder = Encoder::new(&limits);
    if deflate {
        encoder.set_compression(crate::wire::Compression::Deflate, 0);
    }
    let mut frame = Vec::new();
    if encoder.encode(&messages, &mut frame).is_err() {
        return;
    }
    let mut out = Vec::new();
    MessageDecoder::new(limits)
        .decode(&frame, &mut out)
        .expect("encoded frame decodes");
    assert_eq!(out, messages);
}

/// Drives a client session to `Connected` with one synced document, then
/// feeds `data` as a byte stream split at points taken from the data itself.
/// The session must never panic, must end each connection at most once, and
/// must never spin (after `handle_timeout(now)`, output is queued or the next
/// deadline is later).
///
/// ```
/// crdt_socket_sync::fuzzing::client_session(b"\x10\x05garbage");
/// ```
pub fn client_session(data: &[u8]) {
    use crate::client::ClientEvent;
    use std::time::Duration;

    // A genuine handshake and sync first, so the fuzzer's bytes reach the
    // connected state.
    let mut h = Harness::new(crate::inbound::Framing::Stream);
    while let Some(e) = h.client.poll_event() {
        debug_assert!(!matches!(e, ClientEvent::Closed { .. }));
    }
    let mut t = h.now;
    let mut closed = 0;
    for (i, piece) in data.chunks(17).enumerate() {
        t += Duration::from_millis(u64::from(piece[0] % 8) * 100);
        h.client.handle_input(t, piece, &mut h.docs);
        if i % 3 == 0 {
            h.client.handle_timeout(t);
            let spins = h.client.poll_timeout().is_some_and(|d| d <= t);
            assert!(!spins || h.client.queued_bytes() > 0, "client would spin");
        }
        while h.client.poll_transmit().is_some() {}
        while let Some(e) = h.client.poll_event() {
            if matches!(e, ClientEvent::Closed { .. }) {
                closed += 1;
            }
        }
        assert!(closed <= 1, "one Closed per connection");
    }
}

/// Feeds `data` to a hub connection as a byte stream, next to a healthy
/// client on another connection, which must still sync an edit afterwards.
/// Every input must stay within the cost model.
///
/// ```
/// crdt_socket_sync::fuzzing::server_session(b"\x10\x05garbage");
/// ```
pub fn server_session(data: &[u8]) {
    let mut h = Harness::new(crate::inbound::Framing::Stream);
    let raw = h.hub.accept(h.now);
    for piece in data.chunks(23) {
        h.feed(raw, piece);
        while h.hub.poll_transmit_for(raw).is_some() {}
        // The healthy client reads as it goes.
        h.pump();
    }
    h.check_healthy();
}

/// The `Hello` of the raw connection in the structure-aware targets.
#[cfg(feature = "arbitrary")]
fn fuzz_hello() -> crate::wire::Message {
    crate::wire::Message::Hello {
        versions: crate::wire::PROTOCOL_VERSIONS.to_vec(),
        peer: "fuzz".into(),
        token: crate::wire::Bytes::default(),
        compression: vec![crate::wire::Compression::Deflate],
        limits: fuzz_limits().peer_limits(),
    }
}

/// Structure-aware: a valid `Hello`, then arbitrary messages in valid frames,
/// each input within the cost model.
#[cfg(feature = "arbitrary")]
pub fn server_messages(messages: Vec<crate::wire::Message>) {
    let mut h = Harness::new(crate::inbound::Framing::Stream);
    let raw = h.hub.accept(h.now);
    let hello = fuzz_hello();
    let mut encoder = Encoder::new(&fuzz_limits());
    for batch in std::iter::once(vec![hello]).chain(messages.chunks(4).map(|c| c.to_vec())) {
        let mut frame = Vec::new();
        if encoder.encode(&batch, &mut frame).is_err() {
            continue;
        }
        let mut input = &frame[..];
        while !input.is_empty() {
            let (piece, rest) = input.split_at(input.len().min(29));
            h.feed(raw, piece);
            input = rest;
        }
        while h.hub.poll_transmit_for(raw).is_some() {}
        h.pump();
    }
    h.check_healthy();
}

/// Structure-aware, with message framing (a WebSocket server's): a valid
/// `Hello` and `Open` of the healthy client's document, then each arbitrary
/// message in a frame of its own, so a single `Update` takes the hub's
/// shortcut (`Hub::apply_one`) and reaches the healthy client's document.
///
/// ```
/// # #[cfg(feature = "arbitrary")] {
/// use crdt_socket_sync::wire::{Bytes, DocId, Message};
/// crdt_socket_sync::fuzzing::server_frames(vec![Message::Update {
///     doc: DocId(0),
///     seq: 1,
///     data: Bytes(b"not an op".to_vec()),
/// }]);
/// # }
/// ```
#[cfg(feature = "arbitrary")]
pub fn server_frames(messages: Vec<crate::wire::Message>) {
    use crate::wire::{Bytes, Message};
    let mut h = Harness::new(crate::inbound::Framing::Datagram);
    let raw = h.hub.accept(h.now);
    let hello = fuzz_hello();
    let open = Message::Open {
        name: "doc".into(),
        version: Bytes::default(),
        resume: None,
    };
    let mut encoder = Encoder::new(&fuzz_limits());
    for m in [hello, open]
        .into_iter()
        .chain(messages.into_iter().take(256))
    {
        let mut frame = Vec::new();
        if encoder
            .encode(std::slice::from_ref(&m), &mut frame)
            .is_err()
        {
            continue;
        }
        h.feed(raw, &frame);
        while h.hub.poll_transmit_for(raw).is_some() {}
        // The healthy client takes what was fanned out to it as it goes.
        h.pump();
    }
    h.check_healthy();
}

/// A hub with one healthy client, for the server targets.
struct Harness {
    now: crate::time::Instant,
    hub: crate::server::Hub<crate::server::AllowAll>,
    budget: crate::testing::Budget,
    server_docs: crate::registry::MemoryRegistry<crate::testing::OpLog>,
    client: crate::client::ClientSession,
    docs: crate::registry::MemoryRegistry<crate::testing::OpLog>,
    conn: crate::server::ConnId,
}

impl Harness {
    fn new(framing: crate::inbound::Framing) -> Self {
        use crate::registry::MemoryRegistry;
        use crate::testing::OpLog;
        let now = crate::time::Instant::now();
        let mut hub = crate::server::Hub::new(
            crate::server::ServerConfig {
                framing,
                limits: fuzz_limits(),
                ..Default::default()
            },
            crate::server::AllowAll,
        );
        let conn = hub.accept(now);
        let mut client = crate::client::ClientSession::new(
            crate::client::ClientConfig {
                peer: "good".into(),
                framing,
                ..Default::default()
            },
            now,
        );
        let mut docs = MemoryRegistry::new(|_| OpLog::new(1));
        let _ = client.open(&mut docs, "doc", now);
        client.connect(now);
        let mut h = Harness {
            now,
            budget: crate::testing::Budget::new(&hub),
            hub,
            server_docs: MemoryRegistry::new(|_| OpLog::new(0)),
            client,
            docs,
            conn,
        };
        h.pump();
        h.budget.drain_events(&mut h.hub);
        h
    }

    /// Feeds `bytes` from `conn` to the hub; panics, saying which bound,
    /// if the input cost more than the cost model allows.
    fn feed(&mut self, conn: crate::server::ConnId, bytes: &[u8]) {
        let cost = self
            .budget
            .input(&mut self.hub, conn, self.now, bytes, &mut self.server_docs);
        if let Err(e) = cost {
            panic!("{e}");
        }
    }

    fn pump(&mut self) {
        for _ in 0..64 {
            let mut moved = false;
            while let Some(f) = self.client.poll_transmit() {
                moved = true;
                self.feed(self.conn, &f);
            }
            while let Some(f) = self.hub.poll_transmit_for(self.conn) {
                moved = true;
                self.client.handle_input(self.now, &f, &mut self.docs);
            }
            if !moved {
                return;
            }
        }
    }

    /// The healthy client's edit still reaches the server.
    fn check_healthy(&mut self) {
        use crate::registry::Registry;
        if let Some(d) = self.docs.get("doc") {
            d.edit(b"still alive");
        }
        let _ = self.client.flush_local(&mut self.docs, "doc", self.now);
        self.pump();
        let text = self
            .server_docs
            .get("doc")
            .map(|d| d.text())
            .unwrap_or_default();
        assert!(
            text.contains("still alive"),
            "the healthy session stopped working"
        );
        while self.hub.poll_event().is_some() {}
    }
}

/// An arbitrary scenario through the simulator: it must converge.
#[cfg(all(feature = "sim", feature = "arbitrary"))]
pub fn sim(seed: u64, clients: u8, ops: Vec<crate::sim::SimOp>) {
    use crate::sim::{Sim, SimConfig};
    let mut sim: Sim<crate::testing::OpLog> = Sim::new(SimConfig {
        clients: 1 + usize::from(clients % 8),
        docs: 2,
        seed,
        ..SimConfig::default()
    });
    // The simulator drains the hub's events itself: the sessions' bounds
    // are checked after every step, the per-input event bound is not.
    let budget = crate::testing::Budget::new(sim.hub());
    for op in ops.into_iter().take(200) {
        if let Err(f) = sim.apply(op) {
            panic!("{f}");
        }
        if let Err(e) = budget.check(sim.hub(), 0, 0) {
            panic!("{e}");
        }
    }
    if let Err(f) = sim.heal().and_then(|()| sim.check_converged()) {
        panic!("{f}");
    }
}
