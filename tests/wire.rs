//! Property and attack tests of the frame codec.
//!
//! - round trips of random message batches through both decoders, with and
//!   without deflate;
//! - any split of a byte stream decodes to the same messages;
//! - single-bit / single-byte corruption and truncation are always errors
//!   (never a panic, never different messages);
//! - declared lengths over the limits are refused from the header alone, and
//!   deflate bombs are refused without inflating past the limit;
//! - the wire overhead targets of a keystroke update.
//!
//! Attack frames are hand-built with [`Header`] and [`checksum`], so their
//! CRC is valid and the check under test is the one that fires.

use std::collections::BTreeSet;

use crdt_socket_sync::Limits;
use crdt_socket_sync::wire::frame::{
    CRC_LEN, FLAG_DEFLATE, FRAME_VERSION, Header, MAX_HEADER_LEN, checksum,
};
use crdt_socket_sync::wire::{
    Access, AwarenessEntry, Bytes, CloseReason, Compression, DocId, EncodeError, Encoder,
    ErrorCode, FrameError, Message, MessageDecoder, PeerLimits, RejectCode, Resume, Route,
    SessionId, StreamDecoder, SyncKind,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// The name of every `Message` variant. `all_variants_are_generated` checks
/// the strategy reaches each of them; `variant_count_is_known` guards the
/// list itself.
const VARIANTS: [&str; 31] = [
    "Update",
    "UpdateBatch",
    "Broadcast",
    "Ack",
    "Ping",
    "Pong",
    "Hello",
    "Welcome",
    "Reject",
    "RefreshToken",
    "Open",
    "Opened",
    "SyncChunk",
    "SyncDone",
    "SyncRequest",
    "VersionReport",
    "CloseDoc",
    "AwarenessSet",
    "Awareness",
    "App",
    "RelayJoin",
    "RelayWelcome",
    "RelayPush",
    "RelayAck",
    "RelayChanges",
    "RelaySnapshot",
    "RelayStateRequest",
    "Error",
    "Close",
    "OpenRefused",
    "Fragment",
];

/// Payloads: random bytes (incompressible) or runs of one byte (compressible,
/// so deflated frames are actually produced).
fn bytes() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..48),
        1 => (0..1500usize, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
        1 => (prop::collection::vec(any::<u8>(), 1..8), 0..200usize)
            .prop_map(|(pattern, n)| pattern.repeat(n)),
    ]
    .prop_map(Bytes)
}

fn byte_list() -> impl Strategy<Value = Vec<Bytes>> {
    prop::collection::vec(bytes(), 0..6)
}

/// Small numbers (one-byte varints, the common case) and any value.
fn num64() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..300, any::<u64>()]
}

fn num32() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..300, any::<u32>()]
}

fn doc() -> impl Strategy<Value = DocId> {
    num32().prop_map(DocId)
}

fn session() -> impl Strategy<Value = SessionId> {
    num64().prop_map(SessionId)
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,24}"
}

fn compression() -> impl Strategy<Value = Compression> {
    prop::sample::select(vec![Compression::None, Compression::Deflate])
}

fn peer_limits() -> impl Strategy<Value = PeerLimits> {
    (any::<u32>(), any::<u32>()).prop_map(|(max_frame_len, max_decompressed_len)| PeerLimits {
        max_frame_len,
        max_decompressed_len,
    })
}

fn access() -> impl Strategy<Value = Access> {
    prop::sample::select(vec![Access::ReadWrite, Access::ReadOnly])
}

fn sync_kind() -> impl Strategy<Value = SyncKind> {
    prop::sample::select(vec![SyncKind::Delta, SyncKind::Snapshot])
}

fn reject_code() -> impl Strategy<Value = RejectCode> {
    prop::sample::select(vec![
        RejectCode::UnsupportedVersion,
        RejectCode::Unauthorized,
        RejectCode::Unavailable,
        RejectCode::BadHello,
    ])
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(vec![
        ErrorCode::DocumentNotFound,
        ErrorCode::Forbidden,
        ErrorCode::ReadOnly,
        ErrorCode::InvalidUpdate,
        ErrorCode::OutOfSync,
        ErrorCode::UnknownDocument,
        ErrorCode::UnknownSession,
        ErrorCode::UnexpectedMessage,
        ErrorCode::Backpressure,
        ErrorCode::LimitExceeded,
        ErrorCode::Storage,
        ErrorCode::Internal,
    ])
}

fn close_reason() -> impl Strategy<Value = CloseReason> {
    prop::sample::select(vec![
        CloseReason::Normal,
        CloseReason::ProtocolError,
        CloseReason::HandshakeTimeout,
        CloseReason::IdleTimeout,
        CloseReason::DeadConnection,
        CloseReason::SlowConsumer,
        CloseReason::ServerShutdown,
        CloseReason::LimitExceeded,
        CloseReason::Rejected,
    ])
}

fn route() -> impl Strategy<Value = Route> {
    prop_oneof![
        Just(Route::Server),
        session().prop_map(Route::Session),
        doc().prop_map(Route::Document),
    ]
}

fn resume() -> impl Strategy<Value = Resume> {
    (num64(), num64()).prop_map(|(transfer, offset)| Resume { transfer, offset })
}

fn awareness_entry() -> impl Strategy<Value = AwarenessEntry> {
    (session(), text(), num32(), prop::option::of(bytes())).prop_map(
        |(session, identity, clock, state)| AwarenessEntry {
            session,
            identity,
            clock,
            state,
        },
    )
}

/// Every variant of [`Message`], with every field random.
fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (doc(), num64(), bytes()).prop_map(|(doc, seq, data)| Message::Update { doc, seq, data }),
        (doc(), num64(), byte_list()).prop_map(|(doc, first_seq, data)| Message::UpdateBatch {
            doc,
            first_seq,
            data
        }),
        (doc(), bytes()).prop_map(|(doc, data)| Message::Broadcast { doc, data }),
        (doc(), num64(), num64()).prop_map(|(doc, applied, durable)| Message::Ack {
            doc,
            applied,
            durable
        }),
        num64().prop_map(|t| Message::Ping { t }),
        num64().prop_map(|echo| Message::Pong { echo }),
        (
            prop::collection::vec(any::<u16>(), 0..4),
            text(),
            bytes(),
            prop::collection::vec(compression(), 0..3),
            peer_limits(),
        )
            .prop_map(
                |(versions, peer, token, compression, limits)| Message::Hello {
                    versions,
                    peer,
                    token,
                    compression,
                    limits
                }
            ),
        (
            any::<u16>(),
            session(),
            compression(),
            peer_limits(),
            num32(),
            any::<bool>()
        )
            .prop_map(
                |(version, session, compression, limits, heartbeat_ms, durable)| {
                    Message::Welcome {
                        version,
                        session,
                        compression,
                        limits,
                        heartbeat_ms,
                        durable,
                    }
                }
            ),
        (reject_code(), text()).prop_map(|(code, message)| Message::Reject { code, message }),
        bytes().prop_map(|token| Message::RefreshToken { token }),
        (text(), bytes(), prop::option::of(resume())).prop_map(|(name, version, resume)| {
            Message::Open {
                name,
                version,
                resume,
            }
        }),
        (text(), doc(), access()).prop_map(|(name, doc, access)| Message::Opened {
            name,
            doc,
            access
        }),
        (doc(), num64(), sync_kind(), num64(), num64(), bytes()).prop_map(
            |(doc, transfer, kind, offset, total, data)| Message::SyncChunk {
                doc,
                transfer,
                kind,
                offset,
                total,
                data
            }
        ),
        (doc(), bytes()).prop_map(|(doc, version)| Message::SyncDone { doc, version }),
        (doc(), bytes()).prop_map(|(doc, version)| Message::SyncRequest { doc, version }),
        (doc(), bytes()).prop_map(|(doc, version)| Message::VersionReport { doc, version }),
        doc().prop_map(|doc| Message::CloseDoc { doc }),
        (doc(), num32(), prop::option::of(bytes()))
            .prop_map(|(doc, clock, state)| { Message::AwarenessSet { doc, clock, state } }),
        (doc(), prop::collection::vec(awareness_entry(), 0..4))
            .prop_map(|(doc, entries)| Message::Awareness { doc, entries }),
        (num32(), route(), prop::option::of(num64()), bytes()).prop_map(
            |(kind, route, from, data)| Message::App {
                kind,
                route,
                from: from.map(SessionId),
                data
            }
        ),
        (text(), num64()).prop_map(|(room, after_seq)| Message::RelayJoin { room, after_seq }),
        (text(), doc(), num64(), num64(), any::<bool>()).prop_map(
            |(room_name, room, last_seq, log_len, compact)| Message::RelayWelcome {
                room_name,
                room,
                last_seq,
                log_len,
                compact
            }
        ),
        (doc(), byte_list()).prop_map(|(room, blobs)| Message::RelayPush { room, blobs }),
        (doc(), num64(), num32(), num64(), any::<bool>()).prop_map(
            |(room, seq, count, log_len, compact)| Message::RelayAck {
                room,
                seq,
                count,
                log_len,
                compact
            }
        ),
        (doc(), num64(), byte_list()).prop_map(|(room, first_seq, blobs)| {
            Message::RelayChanges {
                room,
                first_seq,
                blobs,
            }
        }),
        (doc(), num64(), bytes()).prop_map(|(room, up_to, data)| Message::RelaySnapshot {
            room,
            up_to,
            data
        }),
        (doc(), num64())
            .prop_map(|(room, after_seq)| Message::RelayStateRequest { room, after_seq }),
        (
            prop::option::of(doc()),
            prop::option::of(num64()),
            error_code(),
            text()
        )
            .prop_map(|(doc, seq, code, message)| Message::Error {
                doc,
                seq,
                code,
                message
            }),
        (close_reason(), text()).prop_map(|(reason, message)| Message::Close { reason, message }),
        (text(), error_code(), text()).prop_map(|(name, code, message)| Message::OpenRefused {
            name,
            code,
            message
        }),
        (num32(), num64(), num64(), bytes()).prop_map(|(id, offset, total, data)| {
            Message::Fragment {
                id,
                offset,
                total,
                data,
            }
        }),
    ]
}

fn batch() -> impl Strategy<Value = Vec<Message>> {
    prop::collection::vec(message(), 1..12)
}

/// How a frame is encoded: uncompressed, or deflate above a threshold
/// (zero, small, or the default).
#[derive(Clone, Copy, Debug)]
enum Mode {
    Plain,
    Deflate(usize),
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        Just(Mode::Plain),
        Just(Mode::Deflate(0)),
        (1..64usize).prop_map(Mode::Deflate),
        Just(Mode::Deflate(
            crdt_socket_sync::wire::DEFAULT_COMPRESS_THRESHOLD
        )),
    ]
}

fn encoder(limits: &Limits, mode: Mode) -> Encoder {
    let mut encoder = Encoder::new(limits);
    if let Mode::Deflate(threshold) = mode {
        encoder.set_compression(Compression::Deflate, threshold);
    }
    encoder
}

fn encode(messages: &[Message], mode: Mode) -> Vec<u8> {
    let mut frame = Vec::new();
    let len = encoder(&Limits::default(), mode)
        .encode(messages, &mut frame)
        .expect("encodes");
    assert_eq!(len, frame.len());
    frame
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Feeds `pieces` to a fresh stream decoder: the messages and the number of
/// frames completed, or the first error.
fn decode_stream<'a>(
    limits: Limits,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(Vec<Message>, usize), FrameError> {
    let mut decoder = StreamDecoder::new(limits);
    let mut out = Vec::new();
    let mut frames = 0;
    for piece in pieces {
        let mut input = piece;
        while decoder.decode(&mut input, &mut out)? {
            frames += 1;
        }
        assert!(input.is_empty(), "decoder returned false with input left");
    }
    Ok((out, frames))
}

fn decode_one(limits: Limits, frame: &[u8]) -> Result<Vec<Message>, FrameError> {
    let mut out = Vec::new();
    match MessageDecoder::new(limits).decode(frame, &mut out) {
        Ok(()) => Ok(out),
        Err(e) => {
            assert!(out.is_empty(), "messages appended despite {e}");
            Err(e)
        }
    }
}

/// A frame with a valid checksum around `body`, built by hand.
fn raw_frame(flags: u8, body: &[u8], raw_len: u32) -> Vec<u8> {
    let body_len = u32::try_from(body.len()).unwrap();
    let mut out = header_bytes(flags, body_len, raw_len);
    out.extend_from_slice(body);
    let crc = checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn header_bytes(flags: u8, body_len: u32, raw_len: u32) -> Vec<u8> {
    let header = Header {
        flags,
        body_len,
        raw_len,
        header_len: Header::encoded_len(flags, body_len, raw_len),
    };
    let mut out = Vec::new();
    header.write(&mut out);
    assert_eq!(out.len(), header.header_len);
    out
}

/// Replaces byte 0 of a frame and fixes up the checksum.
fn with_first_byte(mut frame: Vec<u8>, b0: u8) -> Vec<u8> {
    frame[0] = b0;
    let end = frame.len() - CRC_LEN;
    let crc = checksum(&frame[..end]);
    frame[end..].copy_from_slice(&crc.to_le_bytes());
    frame
}

/// Checks that a corrupted copy of a valid frame is refused by both
/// decoders. The stream decoder may instead wait for more input, but only
/// when the corruption made the header declare a longer frame, and then it
/// has produced nothing.
fn assert_refused(corrupt: &[u8], original: &[u8]) {
    let limits = Limits::default();
    if let Ok(messages) = decode_one(limits, corrupt) {
        panic!("corrupted frame decoded to {messages:?}");
    }
    let mut decoder = StreamDecoder::new(limits);
    let mut out = Vec::new();
    let mut input = corrupt;
    match decoder.decode(&mut input, &mut out) {
        Err(_) => {}
        Ok(true) => panic!("stream decoder accepted a corrupted frame: {out:?}"),
        Ok(false) => {
            assert!(out.is_empty());
            assert!(input.is_empty());
            let header = Header::parse(corrupt, &limits)
                .expect("header parsed")
                .expect("header complete");
            assert!(
                header.frame_len() > original.len(),
                "stream decoder waits although the frame is complete"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The strategy covers every variant
// ---------------------------------------------------------------------------

#[test]
fn variant_count_is_known() {
    let names: BTreeSet<_> = VARIANTS.iter().collect();
    assert_eq!(names.len(), 31);
}

#[test]
fn all_variants_are_generated() {
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let strategy = message();
    let mut seen = BTreeSet::new();
    for _ in 0..3000 {
        let m = strategy.new_tree(&mut runner).unwrap().current();
        assert!(
            VARIANTS.contains(&m.name()),
            "unlisted variant {}",
            m.name()
        );
        seen.insert(m.name());
    }
    let missing: Vec<_> = VARIANTS.iter().filter(|v| !seen.contains(*v)).collect();
    assert!(missing.is_empty(), "never generated: {missing:?}");
}

/// One sample message per variant, from a fixed seed.
fn one_of_each() -> Vec<Message> {
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[42; 32]),
    );
    let strategy = message();
    let mut found: Vec<Option<Message>> = vec![None; VARIANTS.len()];
    while found.iter().any(Option::is_none) {
        let m = strategy.new_tree(&mut runner).unwrap().current();
        let i = VARIANTS.iter().position(|v| *v == m.name()).unwrap();
        found[i].get_or_insert(m);
    }
    found.into_iter().map(Option::unwrap).collect()
}

// ---------------------------------------------------------------------------
// Round trips and stream splitting
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(Config { cases: 256, ..Config::default() })]

    #[test]
    fn round_trip(messages in batch(), mode in mode()) {
        let frame = encode(&messages, mode);
        prop_assert_eq!(&decode_one(Limits::default(), &frame).unwrap(), &messages);
        let (streamed, frames) = decode_stream(Limits::default(), [&frame[..]]).unwrap();
        prop_assert_eq!(frames, 1);
        prop_assert_eq!(&streamed, &messages);
        // Deflate is used only when asked for, above the threshold, and when
        // it actually shrinks the body.
        let (body_len, plain_len) = Encoder::new(&Limits::default()).measure(&messages).unwrap();
        match mode {
            Mode::Plain => {
                prop_assert_eq!(frame[0] & FLAG_DEFLATE, 0);
                prop_assert_eq!(frame.len(), plain_len);
            }
            Mode::Deflate(threshold) => {
                if frame[0] & FLAG_DEFLATE != 0 {
                    prop_assert!(body_len >= threshold);
                    prop_assert!(frame.len() < plain_len + 5);
                } else {
                    prop_assert_eq!(frame.len(), plain_len);
                }
            }
        }
    }

    #[test]
    fn any_split_of_a_stream_decodes_the_same(
        frames in prop::collection::vec((batch(), mode()), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (messages, mode) in &frames {
            stream.extend_from_slice(&encode(messages, *mode));
            expected.extend(messages.iter().cloned());
        }
        // Random split points.
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.sort_unstable();
        points.dedup();
        let mut pieces = Vec::new();
        let mut start = 0;
        for p in points {
            pieces.push(&stream[start..p]);
            start = p;
        }
        pieces.push(&stream[start..]);
        let (out, n) = decode_stream(Limits::default(), pieces).unwrap();
        prop_assert_eq!(n, frames.len());
        prop_assert_eq!(&out, &expected);
        // One byte at a time.
        let (out, n) = decode_stream(Limits::default(), stream.chunks(1)).unwrap();
        prop_assert_eq!(n, frames.len());
        prop_assert_eq!(&out, &expected);
        // Everything at once.
        let (out, n) = decode_stream(Limits::default(), [&stream[..]]).unwrap();
        prop_assert_eq!(n, frames.len());
        prop_assert_eq!(&out, &expected);
    }

    #[test]
    fn flipping_a_bit_is_refused(
        messages in batch(),
        mode in mode(),
        at in any::<prop::sample::Index>(),
        bit in 0..8u8,
    ) {
        let frame = encode(&messages, mode);
        let mut corrupt = frame.clone();
        corrupt[at.index(frame.len())] ^= 1 << bit;
        assert_refused(&corrupt, &frame);
    }

    #[test]
    fn replacing_a_byte_is_refused(
        messages in batch(),
        mode in mode(),
        at in any::<prop::sample::Index>(),
        xor in 1..=255u8,
    ) {
        let frame = encode(&messages, mode);
        let mut corrupt = frame.clone();
        corrupt[at.index(frame.len())] ^= xor;
        assert_refused(&corrupt, &frame);
    }

    #[test]
    fn truncation_is_refused_or_waits(messages in batch(), mode in mode()) {
        let frame = encode(&messages, mode);
        for cut in 0..frame.len() {
            let prefix = &frame[..cut];
            let needed = frame.len() - cut;
            match decode_one(Limits::default(), prefix) {
                Err(FrameError::Truncated { needed: n }) => {
                    // The decoder cannot know the exact count before the
                    // header is complete, but never claims too much.
                    prop_assert!(n >= 1 && n <= needed);
                }
                other => prop_assert!(false, "cut at {}: {:?}", cut, other),
            }
            let mut decoder = StreamDecoder::new(Limits::default());
            let mut out = Vec::new();
            let mut input = prefix;
            prop_assert_eq!(decoder.decode(&mut input, &mut out), Ok(false));
            prop_assert!(out.is_empty());
            prop_assert!(input.is_empty());
            prop_assert_eq!(decoder.buffered(), cut);
            // The rest completes it.
            let mut rest = &frame[cut..];
            prop_assert_eq!(decoder.decode(&mut rest, &mut out), Ok(true));
            prop_assert_eq!(&out, &messages);
        }
    }

    /// Whatever an encoder built for limits `L` produces, a decoder with
    /// `L` accepts; otherwise the encoder says the frame is too large.
    #[test]
    fn encoder_output_fits_the_decoders_limits(
        messages in batch(),
        mode in mode(),
        max_frame_len in 16..4096u32,
        max_decompressed_len in 1..8192u32,
    ) {
        let limits = Limits { max_frame_len, max_decompressed_len, ..Limits::default() };
        let mut frame = Vec::new();
        match encoder(&limits, mode).encode(&messages, &mut frame) {
            Ok(_) => {
                prop_assert_eq!(&decode_one(limits, &frame).unwrap(), &messages);
                prop_assert_eq!(&decode_stream(limits, [&frame[..]]).unwrap().0, &messages);
            }
            Err(EncodeError::TooLarge { .. }) => prop_assert!(frame.is_empty()),
            Err(e) => prop_assert!(false, "{}", e),
        }
        // The same through a peer's announced limits.
        let mut encoder = encoder(&Limits::default(), mode);
        encoder.apply_peer_limits(limits.peer_limits());
        let mut frame = Vec::new();
        if encoder.encode(&messages, &mut frame).is_ok() {
            prop_assert_eq!(&decode_one(limits, &frame).unwrap(), &messages);
        }
    }

    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..256)) {
        crdt_socket_sync::fuzzing::frame_decode(&data);
        crdt_socket_sync::fuzzing::inflate(&data);
        // With a valid version byte and checksum, so the body is parsed.
        let mut framed = vec![FRAME_VERSION << 4];
        framed.extend_from_slice(&data);
        let _ = decode_one(Limits::default(), &raw_frame(0, &data, 0));
        let _ = decode_one(Limits::default(), &framed);
    }
}

/// Every single-bit flip and every byte replacement (by its complement and
/// by zero) of one frame per variant, plain and deflated.
#[test]
fn exhaustive_corruption_of_one_frame_per_variant() {
    let mut frames = Vec::new();
    for m in one_of_each() {
        let one = std::slice::from_ref(&m);
        frames.push(encode(one, Mode::Plain));
        frames.push(encode(one, Mode::Deflate(0)));
    }
    for frame in &frames {
        for at in 0..frame.len() {
            for bit in 0..8 {
                let mut corrupt = frame.clone();
                corrupt[at] ^= 1 << bit;
                assert_refused(&corrupt, frame);
            }
            for replacement in [!frame[at], 0] {
                if replacement != frame[at] {
                    let mut corrupt = frame.clone();
                    corrupt[at] = replacement;
                    assert_refused(&corrupt, frame);
                }
            }
        }
    }
}

#[test]
fn deflate_with_zero_threshold_compresses_compressible_frames() {
    let m = Message::Broadcast {
        doc: DocId(1),
        data: Bytes(vec![b'a'; 400]),
    };
    let frame = encode(std::slice::from_ref(&m), Mode::Deflate(0));
    assert_eq!(frame[0], (FRAME_VERSION << 4) | FLAG_DEFLATE);
    assert!(frame.len() < 50, "{}", frame.len());
    assert_eq!(
        decode_one(Limits::default(), &frame).unwrap(),
        vec![m.clone()]
    );
    // Below the threshold it stays plain.
    let frame = encode(std::slice::from_ref(&m), Mode::Deflate(1000));
    assert_eq!(frame[0], FRAME_VERSION << 4);
}

/// Regression: the encoder deflated bodies larger than the peer's
/// `max_decompressed_len`, producing frames the peer refuses.
#[test]
fn encoder_does_not_deflate_past_the_peers_decompressed_limit() {
    let m = Message::Broadcast {
        doc: DocId(1),
        data: Bytes(vec![0; 5000]),
    };
    let peer = Limits {
        max_decompressed_len: 1000,
        ..Limits::default()
    };
    let mut encoder = encoder(&Limits::default(), Mode::Deflate(0));
    encoder.apply_peer_limits(peer.peer_limits());
    let mut frame = Vec::new();
    encoder
        .encode(std::slice::from_ref(&m), &mut frame)
        .unwrap();
    assert_eq!(frame[0] & FLAG_DEFLATE, 0, "sent plain");
    assert_eq!(decode_one(peer, &frame).unwrap(), vec![m.clone()]);
    // Within the peer's limit it is still deflated.
    let small = Message::Broadcast {
        doc: DocId(1),
        data: Bytes(vec![0; 900]),
    };
    let mut frame = Vec::new();
    encoder
        .encode(std::slice::from_ref(&small), &mut frame)
        .unwrap();
    assert_eq!(frame[0] & FLAG_DEFLATE, FLAG_DEFLATE);
    assert_eq!(decode_one(peer, &frame).unwrap(), vec![small]);
}

// ---------------------------------------------------------------------------
// Declared lengths over the limits
// ---------------------------------------------------------------------------

#[test]
fn oversized_declared_length_is_refused_from_the_header() {
    let limits = Limits {
        max_frame_len: 1024,
        ..Limits::default()
    };
    for body_len in [1021, 2000, 1 << 20, u32::MAX] {
        let header = header_bytes(0, body_len, 0);
        let expected = header.len() as u64 + u64::from(body_len) + CRC_LEN as u64;
        // Header alone, one byte at a time: the decoder never buffers more
        // than a header, and refuses as soon as the length is known.
        let mut decoder = StreamDecoder::new(limits);
        let mut out = Vec::new();
        let mut result = Ok(false);
        for b in &header {
            let mut input = std::slice::from_ref(b);
            result = decoder.decode(&mut input, &mut out);
            assert!(decoder.buffered() <= MAX_HEADER_LEN);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(
            result,
            Err(FrameError::TooLarge {
                len: expected,
                limit: 1024
            })
        );
        assert_eq!(decoder.buffered(), 0);
        // Header followed by a flood: refused without consuming the flood.
        let mut stream = header.clone();
        stream.resize(header.len() + 64 * 1024, 0xaa);
        let mut decoder = StreamDecoder::new(limits);
        let mut input = &stream[..];
        assert!(matches!(
            decoder.decode(&mut input, &mut out),
            Err(FrameError::TooLarge { limit: 1024, .. })
        ));
        assert!(decoder.buffered() <= MAX_HEADER_LEN);
        assert!(out.is_empty());
        // The message decoder too.
        assert!(matches!(
            decode_one(limits, &header),
            Err(FrameError::TooLarge { limit: 1024, .. })
        ));
    }
}

#[test]
fn frame_length_limit_is_inclusive() {
    let m = Message::Broadcast {
        doc: DocId(3),
        data: Bytes(vec![9; 300]),
    };
    let frame = encode(std::slice::from_ref(&m), Mode::Plain);
    let len = u32::try_from(frame.len()).unwrap();
    let exact = Limits {
        max_frame_len: len,
        ..Limits::default()
    };
    assert_eq!(decode_one(exact, &frame).unwrap(), vec![m.clone()]);
    let mut out = Vec::new();
    Encoder::new(&exact)
        .encode(std::slice::from_ref(&m), &mut out)
        .unwrap();
    let under = Limits {
        max_frame_len: len - 1,
        ..Limits::default()
    };
    assert_eq!(
        decode_one(under, &frame),
        Err(FrameError::TooLarge {
            len: u64::from(len),
            limit: len - 1
        })
    );
    assert_eq!(
        decode_stream(under, frame.chunks(7)),
        Err(FrameError::TooLarge {
            len: u64::from(len),
            limit: len - 1
        })
    );
    assert!(matches!(
        Encoder::new(&under).encode(std::slice::from_ref(&m), &mut out),
        Err(EncodeError::TooLarge { .. })
    ));
}

#[test]
fn overlong_length_varint_is_refused() {
    for header in [
        &[0x10, 0xff, 0xff, 0xff, 0xff, 0x1f][..],
        &[0x10, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
        &[0x11, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff],
    ] {
        assert_eq!(
            decode_one(Limits::default(), header),
            Err(FrameError::BadLength)
        );
        assert_eq!(
            decode_stream(Limits::default(), header.chunks(1)),
            Err(FrameError::BadLength)
        );
    }
}

// ---------------------------------------------------------------------------
// Deflate bombs
// ---------------------------------------------------------------------------

/// A raw deflate stream (one fixed-Huffman block) of one literal zero
/// followed by `matches` back-references of 258 bytes at distance 1: it
/// inflates to `1 + 258 * matches` zeros at 13 bits per 258 bytes.
fn zero_bomb(matches: usize) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }
    impl Bits {
        /// Appends `len` bits of `value`, least significant first.
        fn put(&mut self, value: u32, len: u32) {
            self.acc |= u64::from(value) << self.n;
            self.n += len;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        /// Appends a Huffman code, most significant bit first.
        fn code(&mut self, code: u32, len: u32) {
            let reversed = code.reverse_bits() >> (32 - len);
            self.put(reversed, len);
        }
    }
    let mut bits = Bits {
        out: Vec::with_capacity(matches * 13 / 8 + 8),
        acc: 0,
        n: 0,
    };
    bits.put(1, 1); // BFINAL
    bits.put(1, 2); // BTYPE = fixed Huffman
    bits.code(0x30, 8); // literal 0
    for _ in 0..matches {
        bits.code(0b1100_0101, 8); // length symbol 285 = 258 bytes
        bits.code(0, 5); // distance symbol 0 = distance 1
    }
    bits.code(0, 7); // end of block (256)
    if bits.n > 0 {
        bits.out.push(bits.acc as u8);
    }
    bits.out
}

#[test]
fn zero_bomb_is_a_valid_deflate_stream() {
    use crdt_socket_sync::wire::compress::Inflater;
    for matches in [0, 1, 2, 100] {
        let stream = zero_bomb(matches);
        let mut out = vec![1u8; 1 + 258 * matches];
        Inflater::default()
            .inflate_exact(&stream, &mut out)
            .unwrap();
        assert!(out.iter().all(|&b| b == 0));
    }
    // And the codec accepts a frame of it that declares its true size
    // (the body is not a valid message, so decoding the messages fails).
    let frame = raw_frame(FLAG_DEFLATE, &zero_bomb(10), 2581);
    assert!(matches!(
        decode_one(Limits::default(), &frame),
        Err(FrameError::Decode(_))
    ));
}

#[test]
fn deflate_bomb_inflating_past_the_declared_size_is_refused() {
    let limits = Limits::default();
    // About 100 MB of zeros in ~630 KB, declaring exactly the limit.
    let bomb = zero_bomb(100_000_000 / 258);
    let frame = raw_frame(FLAG_DEFLATE, &bomb, limits.max_decompressed_len);
    assert!(frame.len() < limits.max_frame_len as usize);
    assert_eq!(
        decode_one(limits, &frame),
        Err(FrameError::Decompression(
            "stream longer than declared size"
        ))
    );
    assert_eq!(
        decode_stream(limits, frame.chunks(4096)),
        Err(FrameError::Decompression(
            "stream longer than declared size"
        ))
    );
}

#[test]
fn declared_decompressed_size_over_the_limit_is_refused_before_inflating() {
    let limits = Limits::default();
    let bomb = zero_bomb(100_000_000 / 258);
    let declared = limits.max_decompressed_len + 1;
    let frame = raw_frame(FLAG_DEFLATE, &bomb, declared);
    let expected = Err(FrameError::DecompressedTooLarge {
        len: u64::from(declared),
        limit: limits.max_decompressed_len,
    });
    assert_eq!(decode_one(limits, &frame), expected);
    // The stream decoder refuses from the header, before the body arrives.
    let header_len = Header::encoded_len(FLAG_DEFLATE, bomb.len() as u32, declared);
    let mut decoder = StreamDecoder::new(limits);
    let mut out = Vec::new();
    let mut input = &frame[..header_len];
    assert_eq!(
        decoder.decode(&mut input, &mut out).map(|_| ()),
        expected.map(|_| ())
    );
    assert_eq!(decoder.buffered(), 0);
}

#[test]
fn tiny_input_claiming_a_huge_size_is_refused() {
    let limits = Limits::default();
    let tiny = zero_bomb(1);
    for declared in [limits.max_decompressed_len + 1, u32::MAX] {
        let frame = raw_frame(FLAG_DEFLATE, &tiny, declared);
        assert_eq!(
            decode_one(limits, &frame),
            Err(FrameError::DecompressedTooLarge {
                len: u64::from(declared),
                limit: limits.max_decompressed_len
            })
        );
    }
    // Within the limit, the short stream is caught after inflating.
    let frame = raw_frame(FLAG_DEFLATE, &tiny, limits.max_decompressed_len);
    assert_eq!(
        decode_one(limits, &frame),
        Err(FrameError::Decompression(
            "stream shorter than declared size"
        ))
    );
    // And a stream that is not deflate at all.
    let frame = raw_frame(FLAG_DEFLATE, &[0xff; 16], 100);
    assert!(matches!(
        decode_one(limits, &frame),
        Err(FrameError::Decompression(_))
    ));
}

// ---------------------------------------------------------------------------
// Malformed frames
// ---------------------------------------------------------------------------

fn ping_body(n: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for t in 0..n {
        body.extend(postcard::to_allocvec(&Message::Ping { t: t as u64 }).unwrap());
    }
    body
}

#[test]
fn too_many_messages_in_one_frame_is_refused() {
    let limits = Limits {
        max_messages_per_frame: 4,
        ..Limits::default()
    };
    let four = raw_frame(0, &ping_body(4), 0);
    assert_eq!(decode_one(limits, &four).unwrap().len(), 4);
    let five = raw_frame(0, &ping_body(5), 0);
    assert_eq!(
        decode_one(limits, &five),
        Err(FrameError::TooManyMessages { limit: 4 })
    );
    assert_eq!(
        decode_stream(limits, [&five[..]]),
        Err(FrameError::TooManyMessages { limit: 4 })
    );
    // Deflated too.
    let body = ping_body(5);
    let packed = crdt_socket_sync::wire::compress::deflate(&body);
    let five = raw_frame(FLAG_DEFLATE, &packed, body.len() as u32);
    assert_eq!(
        decode_one(limits, &five),
        Err(FrameError::TooManyMessages { limit: 4 })
    );
    // The encoder refuses to produce it.
    let pings: Vec<_> = (0..5).map(|t| Message::Ping { t }).collect();
    assert_eq!(
        Encoder::new(&limits).encode(&pings, &mut Vec::new()),
        Err(EncodeError::TooManyMessages { limit: 4 })
    );
}

#[test]
fn trailing_bytes_are_refused() {
    let mut frame = encode(&[Message::Ping { t: 5 }], Mode::Plain);
    frame.extend_from_slice(&[0, 1, 2]);
    assert_eq!(
        decode_one(Limits::default(), &frame),
        Err(FrameError::TrailingBytes(3))
    );
    // A body with a valid message followed by garbage is a decode error.
    let mut body = ping_body(1);
    body.push(0xff);
    let frame = raw_frame(0, &body, 0);
    assert!(matches!(
        decode_one(Limits::default(), &frame),
        Err(FrameError::Decode(_))
    ));
}

#[test]
fn empty_frames_are_refused() {
    let empty = raw_frame(0, &[], 0);
    assert_eq!(
        decode_one(Limits::default(), &empty),
        Err(FrameError::Empty)
    );
    assert_eq!(
        decode_stream(Limits::default(), [&empty[..]]),
        Err(FrameError::Empty)
    );
    // A deflated frame whose stream inflates to nothing.
    let packed = crdt_socket_sync::wire::compress::deflate(&[]);
    let empty = raw_frame(FLAG_DEFLATE, &packed, 0);
    assert_eq!(
        decode_one(Limits::default(), &empty),
        Err(FrameError::Empty)
    );
    assert_eq!(
        decode_stream(Limits::default(), [&empty[..]]),
        Err(FrameError::Empty)
    );
    assert_eq!(
        Encoder::new(&Limits::default()).encode(&[], &mut Vec::new()),
        Err(EncodeError::Empty)
    );
}

#[test]
fn bad_version_and_flags_are_refused() {
    let frame = raw_frame(0, &ping_body(1), 0);
    for version in [0u8, 2, 15] {
        let bad = with_first_byte(frame.clone(), version << 4);
        let expected = Err(FrameError::BadVersion {
            found: version,
            expected: FRAME_VERSION,
        });
        assert_eq!(decode_one(Limits::default(), &bad), expected);
        assert_eq!(
            decode_stream(Limits::default(), [&bad[..]]),
            expected.map(|_| (vec![], 0))
        );
    }
    for flags in [0b0010u8, 0b0100, 0b1000, 0b1111] {
        let bad = with_first_byte(frame.clone(), (FRAME_VERSION << 4) | flags);
        assert_eq!(
            decode_one(Limits::default(), &bad),
            Err(FrameError::BadFlags(flags))
        );
        assert_eq!(
            decode_stream(Limits::default(), [&bad[..1]]),
            Err(FrameError::BadFlags(flags))
        );
    }
}

#[test]
fn garbage_body_with_valid_checksum_is_a_decode_error() {
    // Variant index 200 does not exist.
    let frame = raw_frame(0, &[200, 1, 2, 3], 0);
    assert!(matches!(
        decode_one(Limits::default(), &frame),
        Err(FrameError::Decode(_))
    ));
}

#[test]
fn stream_decoder_resets_after_an_error() {
    let limits = Limits::default();
    let good = encode(&[Message::Ping { t: 1 }], Mode::Plain);
    let mut bad = good.clone();
    bad[3] ^= 0x40;
    let mut decoder = StreamDecoder::new(limits);
    let mut out = Vec::new();
    // Half a frame buffered, then the corrupted rest.
    let mut input = &bad[..3];
    assert_eq!(decoder.decode(&mut input, &mut out), Ok(false));
    assert_eq!(decoder.buffered(), 3);
    let mut input = &bad[3..];
    assert!(matches!(
        decoder.decode(&mut input, &mut out),
        Err(FrameError::ChecksumMismatch { .. })
    ));
    assert_eq!(decoder.buffered(), 0);
    assert!(out.is_empty());
    // The buffer was reset: a new frame decodes from scratch.
    let mut input = &good[..];
    assert_eq!(decoder.decode(&mut input, &mut out), Ok(true));
    assert_eq!(out, vec![Message::Ping { t: 1 }]);
}

// ---------------------------------------------------------------------------
// Wire overhead targets
// ---------------------------------------------------------------------------

/// A 15-byte update on an open document costs at most 12 extra bytes
/// (header, postcard envelope and CRC) for every sequence number below 2^21
/// (three-byte varints). From 2^21 on the sequence number takes a fourth
/// byte.
#[test]
fn single_update_overhead_is_at_most_12_bytes() {
    let mut worst = 0;
    for doc in [0u32, 1, 127] {
        for seq in [1u64, 127, 128, 16_383, 16_384, (1 << 21) - 1] {
            let update = Message::Update {
                doc: DocId(doc),
                seq,
                data: Bytes(vec![0x5a; 15]),
            };
            let frame = encode(std::slice::from_ref(&update), Mode::Plain);
            let overhead = frame.len() - 15;
            assert!(overhead <= 12, "doc {doc} seq {seq}: {overhead} bytes");
            worst = worst.max(overhead);
        }
    }
    assert_eq!(worst, 12);
    let seq_2_21 = Message::Update {
        doc: DocId(0),
        seq: 1 << 21,
        data: Bytes(vec![0x5a; 15]),
    };
    assert_eq!(encode(&[seq_2_21], Mode::Plain).len() - 15, 13);
    // Small sequence numbers: 10 bytes.
    let small = Message::Update {
        doc: DocId(0),
        seq: 1,
        data: Bytes(vec![0x5a; 15]),
    };
    assert_eq!(encode(&[small], Mode::Plain).len() - 15, 10);
}

/// Sixteen 15-byte updates in one `UpdateBatch` frame cost at most 5 extra
/// bytes each.
#[test]
fn batched_update_overhead_is_at_most_5_bytes_each() {
    for first_seq in [1u64, 1000, (1 << 21) - 16, 1 << 40] {
        let batch = Message::UpdateBatch {
            doc: DocId(2),
            first_seq,
            data: (0..16).map(|i| Bytes(vec![i; 15])).collect(),
        };
        let frame = encode(&[batch], Mode::Plain);
        let overhead = frame.len() - 16 * 15;
        assert!(
            overhead <= 16 * 5,
            "first_seq {first_seq}: {overhead} bytes"
        );
        if first_seq < 1 << 21 {
            assert!(overhead <= 29, "first_seq {first_seq}: {overhead} bytes");
        }
        if first_seq == 1 {
            // 3 header + 4 CRC + 4 envelope + 16 length prefixes.
            assert_eq!(overhead, 27);
        }
    }
}

/// Writes the fuzz seed corpus: one frame per variant (plain and deflated),
/// a few multi-message frames and attack frames for `frame_decode`; deflate
/// streams for `inflate`; and the frames as raw bytes for
/// `message_round_trip`, which reads them through `arbitrary`.
///
/// Run with `cargo test --test wire -- --ignored write_fuzz_corpus`.
#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_fuzz_corpus() {
    use std::path::Path;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };
    let fuzz = Limits {
        max_frame_len: 64 * 1024,
        max_decompressed_len: 256 * 1024,
        max_messages_per_frame: 64,
        ..Limits::default()
    };
    let all = one_of_each();
    for m in &all {
        let one = std::slice::from_ref(m);
        for (suffix, mode) in [("plain", Mode::Plain), ("deflate", Mode::Deflate(0))] {
            let mut frame = Vec::new();
            encoder(&fuzz, mode).encode(one, &mut frame).unwrap();
            let name = format!("{}-{suffix}", m.name());
            write("frame_decode", &name, &frame);
            write("message_round_trip", &name, &frame);
        }
    }
    let mut frame = Vec::new();
    encoder(&fuzz, Mode::Plain)
        .encode(&all, &mut frame)
        .unwrap();
    write("frame_decode", "all-plain", &frame);
    let mut frame = Vec::new();
    encoder(&fuzz, Mode::Deflate(0))
        .encode(&all, &mut frame)
        .unwrap();
    write("frame_decode", "all-deflate", &frame);
    let compressible = Message::Broadcast {
        doc: DocId(1),
        data: Bytes(b"hello world ".repeat(40)),
    };
    let mut frame = Vec::new();
    encoder(&fuzz, Mode::Deflate(0))
        .encode(&[compressible.clone(), Message::Ping { t: 9 }], &mut frame)
        .unwrap();
    write("frame_decode", "broadcast-deflate", &frame);
    // Attack frames.
    write("frame_decode", "empty", &raw_frame(0, &[], 0));
    write("frame_decode", "too-large", &header_bytes(0, u32::MAX, 0));
    write(
        "frame_decode",
        "decompressed-too-large",
        &raw_frame(FLAG_DEFLATE, &zero_bomb(4), u32::MAX),
    );
    write(
        "frame_decode",
        "bomb",
        &raw_frame(FLAG_DEFLATE, &zero_bomb(2000), 4096),
    );
    write("frame_decode", "too-many", &raw_frame(0, &ping_body(65), 0));
    // Inflate: two bytes of declared size (LE), then a raw deflate stream.
    let mut n = 0;
    for data in [
        &b""[..],
        b"a",
        b"hello world hello world hello world",
        &[0u8; 4000],
        &postcard::to_allocvec(&compressible).unwrap(),
    ] {
        let packed = crdt_socket_sync::wire::compress::deflate(data);
        for declared in [data.len(), data.len() + 1, data.len().saturating_sub(1)] {
            let mut input = (declared as u16).to_le_bytes().to_vec();
            input.extend_from_slice(&packed);
            write("inflate", &format!("stream-{n}"), &input);
            n += 1;
        }
    }
    let mut input = 4000u16.to_le_bytes().to_vec();
    input.extend_from_slice(&zero_bomb(100));
    write("inflate", "bomb", &input);
}
