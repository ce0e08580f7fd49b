//! Golden bytes of every protocol message (protocol version 2): one sample
//! per `Message` variant, encoded alone in an uncompressed frame, compared
//! byte for byte with the recorded encoding. A change here is a wire change:
//! bump `PROTOCOL_VERSIONS` and review each new line.
//!
//! Frame: version/flags byte, body length (varint), body (the postcard
//! encoding of the message: variant index, then the fields), CRC32.

use crdt_socket_sync::wire::{
    Access, AwarenessEntry, Bytes, CloseReason, Compression, DocId, Encoder, ErrorCode, Message,
    MessageDecoder, PROTOCOL_VERSIONS, PeerLimits, RejectCode, Resume, Route, SessionId, SyncKind,
};

fn b(s: &[u8]) -> Bytes {
    Bytes(s.to_vec())
}

/// One sample per variant, in declaration order (the variant index is the
/// position in this list).
fn samples() -> Vec<Message> {
    let limits = PeerLimits {
        max_frame_len: 1 << 20,
        max_decompressed_len: 4 << 20,
    };
    vec![
        Message::Update {
            doc: DocId(1),
            seq: 2,
            data: b(b"u"),
        },
        Message::UpdateBatch {
            doc: DocId(1),
            first_seq: 3,
            data: vec![b(b"a"), b(b"b")],
        },
        Message::Broadcast {
            doc: DocId(1),
            data: b(b"x"),
        },
        Message::Ack {
            doc: DocId(1),
            applied: 5,
            durable: 4,
        },
        Message::Ping { t: 300 },
        Message::Pong { echo: 300 },
        Message::Hello {
            versions: PROTOCOL_VERSIONS.to_vec(),
            peer: "p".into(),
            token: b(b"t"),
            compression: vec![Compression::Deflate, Compression::None],
            limits,
        },
        Message::Welcome {
            version: 2,
            session: SessionId(7),
            compression: Compression::None,
            limits,
            heartbeat_ms: 2000,
            durable: true,
        },
        Message::Reject {
            code: RejectCode::UnsupportedVersion,
            message: "v".into(),
        },
        Message::RefreshToken { token: b(b"t2") },
        Message::Open {
            name: "doc".into(),
            version: b(b"v"),
            resume: Some(Resume {
                transfer: 9,
                offset: 16,
            }),
        },
        Message::Opened {
            name: "doc".into(),
            doc: DocId(1),
            access: Access::ReadOnly,
        },
        Message::SyncChunk {
            doc: DocId(1),
            transfer: 9,
            kind: SyncKind::Snapshot,
            offset: 0,
            total: 1,
            data: b(b"s"),
        },
        Message::SyncDone {
            doc: DocId(1),
            version: b(b"v"),
        },
        Message::SyncRequest {
            doc: DocId(1),
            version: b(b"v"),
        },
        Message::VersionReport {
            doc: DocId(1),
            version: b(b"v"),
        },
        Message::CloseDoc { doc: DocId(1) },
        Message::AwarenessSet {
            doc: DocId(1),
            clock: 3,
            state: Some(b(b"c")),
        },
        Message::Awareness {
            doc: DocId(1),
            entries: vec![AwarenessEntry {
                session: SessionId(7),
                identity: "i".into(),
                clock: 3,
                state: None,
            }],
        },
        Message::App {
            kind: 42,
            route: Route::Document(DocId(1)),
            from: Some(SessionId(7)),
            data: b(b"m"),
        },
        Message::RelayJoin {
            room: "r".into(),
            after_seq: 1,
        },
        Message::RelayWelcome {
            room_name: "r".into(),
            room: DocId(2),
            last_seq: 3,
            log_len: 3,
            compact: false,
        },
        Message::RelayPush {
            room: DocId(2),
            blobs: vec![b(b"z")],
        },
        Message::RelayAck {
            room: DocId(2),
            seq: 4,
            count: 1,
            log_len: 4,
            compact: true,
        },
        Message::RelayChanges {
            room: DocId(2),
            first_seq: 4,
            blobs: vec![b(b"z")],
        },
        Message::RelaySnapshot {
            room: DocId(2),
            up_to: 4,
            data: b(b"S"),
        },
        Message::RelayStateRequest {
            room: DocId(2),
            after_seq: 4,
        },
        Message::Error {
            doc: Some(DocId(1)),
            seq: Some(2),
            code: ErrorCode::ReadOnly,
            message: "ro".into(),
        },
        Message::Close {
            reason: CloseReason::Normal,
            message: "bye".into(),
        },
        Message::OpenRefused {
            name: "doc".into(),
            code: ErrorCode::Forbidden,
            message: "no".into(),
        },
        Message::Fragment {
            id: 1,
            offset: 0,
            total: 2,
            data: b(b"fr"),
        },
    ]
}

/// `(variant, frame as hex)`, recorded from the encoder.
const GOLDEN: &[(&str, &str)] = &[
    ("Update", "10050001020175fad53328"),
    ("UpdateBatch", "1008010103020161016225967ba2"),
    ("Broadcast", "1004020101780b6f9aab"),
    ("Ack", "1004030105047df0f92e"),
    ("Ping", "100304ac0264f5c25f"),
    ("Pong", "100305ac02539f005e"),
    ("Hello", "10110601020170017402010080804080808002b949fe5f"),
    ("Welcome", "100e0702070080804080808002d00f0143cf74cf"),
    ("Reject", "1004080001765fc85d22"),
    ("RefreshToken", "1004090274326e739cba"),
    ("Open", "100a0a03646f630176010910482771a2"),
    ("Opened", "10070b03646f630101e43be5ef"),
    ("SyncChunk", "10080c01090100010173f5569e45"),
    ("SyncDone", "10040d0101765a524114"),
    ("SyncRequest", "10040e010176b4fdf406"),
    ("VersionReport", "10040f010176d19a48be"),
    ("CloseDoc", "100210012a7e1c4f"),
    ("AwarenessSet", "10061101030101638ce77451"),
    ("Awareness", "10081201010701690300d8bdfe4a"),
    ("App", "1008132a02010107016d63ce4601"),
    ("RelayJoin", "100414017201e58423f3"),
    ("RelayWelcome", "100715017202030300b4a9c6be"),
    ("RelayPush", "1005160201017afebbdf47"),
    ("RelayAck", "1006170204010401c9b29183"),
    ("RelayChanges", "100618020401017aed5c67c8"),
    ("RelaySnapshot", "10051902040153a876f681"),
    ("RelayStateRequest", "10031a02044c4f9d90"),
    ("Error", "10091b010101020202726ff67239a5"),
    ("Close", "10061c000362796550fe9e94"),
    ("OpenRefused", "10091d03646f6301026e6f27ade62f"),
    ("Fragment", "10071e01000202667224ab9098"),
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|x| format!("{x:02x}")).collect()
}

fn frame(m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    Encoder::new(&Default::default())
        .encode(std::slice::from_ref(m), &mut out)
        .unwrap();
    out
}

#[test]
fn every_message_encodes_to_its_golden_bytes() {
    let samples = samples();
    let got: Vec<(&str, String)> = samples.iter().map(|m| (m.name(), hex(&frame(m)))).collect();
    for (name, h) in &got {
        println!("    (\"{name}\", \"{h}\"),");
    }
    assert_eq!(got.len(), GOLDEN.len(), "one golden line per variant");
    for ((name, h), (gname, gh)) in got.iter().zip(GOLDEN) {
        assert_eq!(
            (name, h.as_str()),
            (gname, *gh),
            "{name} changed on the wire"
        );
    }
}

/// The variant index (first body byte) is the position in the list: the
/// sample list covers every variant once, in order.
#[test]
fn the_samples_cover_every_variant_in_order() {
    for (i, m) in samples().iter().enumerate() {
        let f = frame(m);
        // Header: one version/flags byte and a one-byte length for these
        // small bodies.
        assert!(f[1] < 0x80, "{}: body length fits one byte", m.name());
        assert_eq!(usize::from(f[2]), i, "{} has variant index {i}", m.name());
        let mut decoded = Vec::new();
        MessageDecoder::new(Default::default())
            .decode(&f, &mut decoded)
            .unwrap();
        assert_eq!(decoded, std::slice::from_ref(m));
    }
}

/// A version-1 client (its `Hello` offers only version 1) gets a typed
/// `UnsupportedVersion` reject, then a `Close`: never a hang, never a
/// session speaking a protocol it does not know.
#[test]
fn a_version_1_client_is_rejected_with_unsupported_version() {
    use std::time::Instant;

    use crdt_socket_sync::registry::MemoryRegistry;
    use crdt_socket_sync::server::{AllowAll, Hub, ServerConfig, ServerEvent};
    use crdt_socket_sync::testing::OpLog;

    // The `Hello` of a version-1 client: versions [1], peer "p", token "t",
    // deflate or none, limits 2^20 / 2^22 (the same layout in both
    // versions, so a version-2 server can read it and answer).
    const V1_HELLO: &str = "10110601010170017402010080804080808002";
    let body = &hex_decode(V1_HELLO);
    let mut hello = body.clone();
    hello.extend_from_slice(&crc(body).to_le_bytes());
    let now = Instant::now();
    let mut reg = MemoryRegistry::new(|_: &str| OpLog::new(0));
    let mut hub = Hub::new(ServerConfig::default(), AllowAll);
    let conn = hub.accept(now);
    hub.handle_input(conn, now, &hello, &mut reg);
    let mut out = Vec::new();
    while let Some((_, f)) = hub.poll_transmit() {
        MessageDecoder::new(Default::default())
            .decode(&f, &mut out)
            .unwrap();
    }
    assert!(
        matches!(
            out.as_slice(),
            [
                Message::Reject {
                    code: RejectCode::UnsupportedVersion,
                    ..
                },
                Message::Close {
                    reason: CloseReason::Rejected,
                    ..
                },
            ]
        ),
        "{out:?}"
    );
    let rejected = std::iter::from_fn(|| hub.poll_event()).any(|e| {
        matches!(
            e,
            ServerEvent::HandshakeRejected {
                code: RejectCode::UnsupportedVersion,
                ..
            }
        )
    });
    assert!(rejected);
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// CRC32 (IEEE) over header and body, as the frame trailer.
fn crc(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}
