//! Unit tests of one session: its sizes, queues, subscriptions and
//! transfers, and its state machine without a hub.

use super::*;
use std::time::Duration;

use crate::wire::SyncKind;

/// A session whose queue drained keeps no room for messages.
#[test]
fn a_drained_session_keeps_no_queue() {
    let config = ServerConfig::default();
    let mut s = ServerSession::new(ConnId(1), &config, Instant::now());
    let mut common = Common::new(&config.limits, config.compress_threshold, 4);
    for t in 0..3 {
        let shared = crate::outbound::encode_shared(&Message::Ping { t });
        s.send_shared(&shared, &common).unwrap();
    }
    assert!(s.outbound.capacity() > 0);
    while s.poll_frame(&mut common).is_some() {}
    assert_eq!(s.outbound.capacity(), 0);
}

/// After a burst of its own messages (a frame of a few KiB) a session
/// holds no message buffer: the drained ones went back to the hub's
/// spares, where one spare per session kept up to 4 KiB per idle
/// connection (workload C of the comparison).
#[test]
fn an_idle_session_holds_no_spare_buffer_after_a_burst() {
    let config = ServerConfig::default();
    let mut s = ServerSession::new(ConnId(1), &config, Instant::now());
    let mut common = Common::new(&config.limits, config.compress_threshold, 4);
    let big = Message::Error {
        doc: None,
        seq: None,
        code: crate::wire::ErrorCode::Internal,
        message: "x".repeat(1500),
    };
    s.send(&big, &mut common).unwrap();
    s.send(&Message::Pong { echo: 1 }, &mut common).unwrap();
    let frame = s.poll_frame(&mut common).unwrap();
    assert!(frame.len() > 1500);
    assert!(s.poll_frame(&mut common).is_none());
    assert_eq!(s.outbound.held(), 0, "no buffer left in the session");
    assert_eq!(common.spares(), 1, "the burst's buffer went back");
}

/// Every session is boxed for the life of its connection: its size is
/// memory per idle connection (workload C of the comparison). It was 688
/// bytes with a copy of the limits in its decoder and its rate limits
/// inline, 400 with a spare buffer and a copy of the queue bounds in its
/// queue, a clock of its own and its transfer queue inline, 312 with
/// the inflate state's box and buffer in its decoder.
#[test]
fn a_session_stays_small() {
    let size = std::mem::size_of::<ServerSession>();
    eprintln!("ServerSession: {size} bytes");
    assert!(size <= 288, "ServerSession of {size} bytes");
}

/// A session that received compressed frames holds no inflate state
/// and no inflate buffer: the hub lends its own to each decode. Each
/// session used to keep ~10 KiB of state and up to 64 KiB of buffer for
/// the rest of its connection.
#[test]
fn a_session_holds_no_inflate_memory() {
    use crate::Framing;
    use crate::registry::MemoryRegistry;
    use crate::server::{AllowAll, Hub};
    use crate::testing::OpLog;
    use crate::wire::compress::KEEP_BUFFER_CAPACITY;
    use crate::wire::{Compression, Encoder, MessageDecoder, PROTOCOL_VERSIONS};

    // The decoder is a tag and a box, the fragments a box.
    assert!(std::mem::size_of::<Inbound>() <= 16);
    let state = std::mem::size_of::<miniz_oxide::inflate::core::DecompressorOxide>();
    let frame = |msgs: &[Message], threshold| {
        let mut encoder = Encoder::new(&Limits::default());
        encoder.set_compression(Compression::Deflate, threshold);
        let mut out = Vec::new();
        encoder.encode(msgs, &mut out).unwrap();
        out
    };
    let hello = frame(
        &[Message::Hello {
            versions: PROTOCOL_VERSIONS.to_vec(),
            peer: "p".into(),
            token: Bytes::default(),
            compression: vec![Compression::Deflate],
            limits: Limits::default().peer_limits(),
        }],
        usize::MAX,
    );
    // ~11 KiB of pings, a few hundred bytes deflated.
    let pings: Vec<_> = (0..1000)
        .map(|k| Message::Ping { t: u64::MAX - k })
        .collect();
    let pings = frame(&pings, 1024);
    // 1 MiB for a document that is not open (answered with an error).
    let big = frame(
        &[Message::Update {
            doc: DocId(7),
            seq: 1,
            data: Bytes(vec![9; 1 << 20]),
        }],
        1024,
    );
    assert!(pings.len() < 2000 && big.len() < 10_000, "deflated");

    for framing in [Framing::Datagram, Framing::Stream] {
        let config = ServerConfig {
            framing,
            ..ServerConfig::default()
        };
        let mut hub = Hub::new(config, AllowAll);
        let mut reg = MemoryRegistry::new(|_: &str| OpLog::new(0));
        let now = Instant::now();
        let conn = hub.accept(now);
        hub.handle_input(conn, now, &hello, &mut reg);
        hub.commit(&mut reg);
        hub.handle_input(conn, now, &pings, &mut reg);
        hub.commit(&mut reg);
        let mut decoder = MessageDecoder::new(Limits::default());
        let mut got = Vec::new();
        while let Some((_, f)) = hub.poll_transmit() {
            decoder.decode(&f, &mut got).unwrap();
        }
        let pongs = got.iter().filter(|m| matches!(m, Message::Pong { .. }));
        assert_eq!(pongs.count(), 1000, "{framing:?}: the pings were decoded");
        let session_holds = |hub: &Hub<AllowAll>| hub.session(conn).unwrap().inbound.held();
        // A stream session keeps its reader (the partial frame), empty.
        let reader = match framing {
            Framing::Datagram => 0,
            _ => Inbound::STREAM_STATE,
        };
        assert_eq!(session_holds(&hub), reader, "{framing:?}");
        let shared = hub.inflate_held();
        assert!(shared > state && shared <= state + KEEP_BUFFER_CAPACITY);

        hub.handle_input(conn, now, &big, &mut reg);
        hub.commit(&mut reg);
        assert!(hub.session(conn).unwrap().phase() == Phase::Active);
        assert_eq!(session_holds(&hub), reader, "{framing:?}");
        assert_eq!(hub.inflate_held(), state, "the 1 MiB buffer was dropped");
    }
}

/// Transfers are held only while a sync is being sent.
#[test]
fn transfers_are_held_only_while_sent() {
    let config = ServerConfig::default();
    let mut s = ServerSession::new(ConnId(1), &config, Instant::now());
    let mut common = Common::new(&config.limits, config.compress_threshold, 4);
    let transfer = |doc| Transfer {
        doc: DocId(doc),
        id: 1,
        kind: SyncKind::Snapshot,
        payload: Arc::new(vec![1; 10]),
        offset: 0,
        version: Vec::new(),
    };
    s.transfers.push_back(transfer(0));
    s.transfers.push_back(transfer(1));
    s.transfers.cancel(DocId(0));
    assert!(!s.transfers.is_empty());
    s.transfers.cancel(DocId(1));
    assert!(s.transfers.is_empty());
    s.transfers.push_back(transfer(2));
    s.pump_transfers(&mut common);
    assert!(s.transfers.is_empty(), "sent: nothing kept");
    let frame = s.poll_frame(&mut common).unwrap();
    assert!(frame.len() > 10);
}

// ---- the state machine, without a hub ----

/// A session, its queue's shared parts and the hub-side scratch it is fed
/// with, as the hub holds them.
struct Bench {
    config: ServerConfig,
    s: ServerSession,
    common: Common,
    budget: ReassemblyBudget,
    inflate: InflateScratch,
    now: Instant,
}

impl Bench {
    fn new() -> Self {
        let config = ServerConfig::default();
        let now = Instant::now();
        let s = ServerSession::new(ConnId(1), &config, now);
        let common = Common::new(&config.limits, config.compress_threshold, 4);
        let budget = ReassemblyBudget::new(config.limits.max_reassembly_bytes);
        Bench {
            config,
            s,
            common,
            budget,
            inflate: InflateScratch::default(),
            now,
        }
    }

    /// Feeds `msgs` as one frame; returns the messages decoded.
    fn feed(&mut self, msgs: &[Message]) -> Result<Vec<Message>, InboundError> {
        let mut encoder = crate::wire::Encoder::new(&self.config.limits);
        let mut bytes = Vec::new();
        encoder.encode(msgs, &mut bytes).unwrap();
        let mut out = Vec::new();
        self.s.feed(
            &bytes,
            self.now,
            &self.config.limits,
            &self.budget,
            &mut self.inflate,
            &mut out,
        )?;
        Ok(out)
    }

    /// Everything the session queued, decoded.
    fn sent(&mut self) -> Vec<Message> {
        let mut decoder = crate::wire::MessageDecoder::new(self.config.limits);
        let mut got = Vec::new();
        while let Some(frame) = self.s.poll_frame(&mut self.common) {
            decoder.decode(&frame, &mut got).unwrap();
        }
        got
    }

    fn hello(versions: Vec<u16>, peer: &str) -> Message {
        Message::Hello {
            versions,
            peer: peer.into(),
            token: Bytes::default(),
            compression: vec![],
            limits: Limits::default().peer_limits(),
        }
    }

    /// Checks and accepts `hello` as the hub does after authenticating.
    fn handshake(&mut self, hello: Message) -> Result<(), (RejectCode, String)> {
        let Message::Hello {
            versions,
            peer,
            compression,
            limits,
            ..
        } = hello
        else {
            panic!("not a hello");
        };
        let terms = self
            .s
            .check_hello(&versions, &peer, &compression, limits, &self.config)?;
        self.s
            .accept(
                terms,
                peer,
                SessionId(7),
                Identity::new("alice"),
                true,
                &self.config,
                &mut self.common,
            )
            .unwrap();
        Ok(())
    }
}

#[test]
fn a_hello_is_answered_with_a_welcome_once_accepted() {
    let mut b = Bench::new();
    assert!(matches!(
        b.s.phase(),
        Phase::Handshake { deadline: Some(_) }
    ));
    let msgs = b
        .feed(&[Bench::hello(PROTOCOL_VERSIONS.to_vec(), "p")])
        .unwrap();
    assert_eq!(msgs.len(), 1);
    b.handshake(msgs.into_iter().next().unwrap()).unwrap();
    assert_eq!(b.s.phase(), Phase::Active);
    assert_eq!(b.s.session_id(), SessionId(7));
    assert_eq!(b.s.peer(), "p");
    assert_eq!(b.s.identity().map(|i| i.name()), Some("alice"));
    let sent = b.sent();
    let [
        Message::Welcome {
            version,
            session,
            durable,
            heartbeat_ms,
            ..
        },
    ] = sent.as_slice()
    else {
        panic!("{sent:?}");
    };
    assert_eq!(*version, *PROTOCOL_VERSIONS.last().unwrap());
    assert_eq!(*session, SessionId(7));
    assert!(*durable);
    assert_eq!(u128::from(*heartbeat_ms), b.config.heartbeat.as_millis());
    // A second Hello changes nothing.
    let again = Bench::hello(PROTOCOL_VERSIONS.to_vec(), "q");
    b.handshake(again).unwrap();
    assert_eq!(b.s.peer(), "p");
    assert!(b.sent().is_empty());
}

#[test]
fn a_hello_without_a_common_version_or_with_a_long_peer_id_is_refused() {
    let b = Bench::new();
    let c = &b.config;
    let limits = Limits::default().peer_limits();
    let refused =
        b.s.check_hello(&[0, 9999], "p", &[], limits, c)
            .unwrap_err();
    assert_eq!(refused.0, RejectCode::UnsupportedVersion);
    // The peer's list is shown only in part.
    let many: Vec<u16> = (1000..2000).collect();
    let refused = b.s.check_hello(&many, "p", &[], limits, c).unwrap_err();
    assert!(refused.1.len() < 200, "{}", refused.1);
    let long = "x".repeat(c.limits.max_name_len + 1);
    let refused = b.s.check_hello(PROTOCOL_VERSIONS, &long, &[], limits, c);
    assert_eq!(refused.unwrap_err().0, RejectCode::BadHello);
    let tiny = PeerLimits {
        max_frame_len: PeerLimits::MIN_FRAME_LEN - 1,
        ..limits
    };
    let refused = b.s.check_hello(PROTOCOL_VERSIONS, "p", &[], tiny, c);
    assert_eq!(refused.unwrap_err().0, RejectCode::BadHello);
    assert!(matches!(b.s.phase(), Phase::Handshake { .. }), "unchanged");
}

#[test]
fn compression_is_agreed_only_when_both_sides_want_it() {
    let mut b = Bench::new();
    let limits = Limits::default().peer_limits();
    let offered = [Compression::Deflate];
    b.config.compression = Compression::Deflate;
    let terms =
        b.s.check_hello(PROTOCOL_VERSIONS, "p", &offered, limits, &b.config);
    assert_eq!(terms.unwrap().compression, Compression::Deflate);
    let terms =
        b.s.check_hello(PROTOCOL_VERSIONS, "p", &[], limits, &b.config);
    assert_eq!(terms.unwrap().compression, Compression::None);
    b.config.compression = Compression::None;
    let terms =
        b.s.check_hello(PROTOCOL_VERSIONS, "p", &offered, limits, &b.config);
    assert_eq!(terms.unwrap().compression, Compression::None);
}

#[test]
fn a_ping_is_answered_and_restarts_the_idle_deadline() {
    let mut b = Bench::new();
    b.handshake(Bench::hello(PROTOCOL_VERSIONS.to_vec(), "p"))
        .unwrap();
    b.sent();
    let first = b.s.next_timeout(&b.config).unwrap();
    assert_eq!(first, b.now + b.config.idle_timeout);
    b.now += Duration::from_secs(1);
    let msgs = b.feed(&[Message::Ping { t: 42 }]).unwrap();
    assert_eq!(msgs, [Message::Ping { t: 42 }]);
    b.s.on_ping(42, &mut b.common).unwrap();
    assert_eq!(b.sent(), [Message::Pong { echo: 42 }]);
    assert_eq!(
        b.s.next_timeout(&b.config),
        Some(first + Duration::from_secs(1))
    );
    // Early or repeated timeouts do nothing.
    assert!(b.s.on_timeout(&b.config, b.now, &mut b.common).is_none());
    assert_eq!(b.s.phase(), Phase::Active);
}

#[test]
fn no_hello_in_time_closes_once_with_a_close_frame() {
    let mut b = Bench::new();
    let Phase::Handshake {
        deadline: Some(deadline),
    } = b.s.phase()
    else {
        panic!("no handshake deadline");
    };
    assert_eq!(b.s.next_timeout(&b.config), Some(deadline));
    let early = deadline - Duration::from_millis(1);
    assert!(b.s.on_timeout(&b.config, early, &mut b.common).is_none());
    let cause = b.s.on_timeout(&b.config, deadline, &mut b.common);
    assert_eq!(
        cause,
        Some(CloseCause::Local(CloseReason::HandshakeTimeout))
    );
    assert!(b.s.is_closed());
    assert_eq!(b.s.next_timeout(&b.config), None, "no deadline once closed");
    let sent = b.sent();
    assert!(
        matches!(
            sent.as_slice(),
            [Message::Close {
                reason: CloseReason::HandshakeTimeout,
                ..
            }]
        ),
        "{sent:?}"
    );
    // Closed once: later closes and timeouts send and report nothing.
    assert!(!b.s.close(CloseReason::ServerShutdown, "bye", &mut b.common));
    assert!(b.s.on_timeout(&b.config, deadline, &mut b.common).is_none());
    assert!(!b.s.on_peer_close());
    assert!(!b.s.transport_lost());
    assert!(b.sent().is_empty());
    b.s.send(&Message::Pong { echo: 1 }, &mut b.common).unwrap();
    assert!(b.sent().is_empty(), "nothing is queued after the Close");
}

#[test]
fn an_idle_session_times_out() {
    let mut b = Bench::new();
    b.handshake(Bench::hello(PROTOCOL_VERSIONS.to_vec(), "p"))
        .unwrap();
    b.sent();
    let at = b.s.next_timeout(&b.config).unwrap();
    let cause = b.s.on_timeout(&b.config, at, &mut b.common);
    assert_eq!(cause, Some(CloseCause::Local(CloseReason::IdleTimeout)));
    let sent = b.sent();
    assert!(matches!(
        sent.as_slice(),
        [Message::Close {
            reason: CloseReason::IdleTimeout,
            ..
        }]
    ));
}

#[test]
fn a_peer_close_closes_without_answering() {
    let mut b = Bench::new();
    assert!(b.s.on_peer_close());
    assert!(b.s.is_closed());
    assert!(b.sent().is_empty());
}

#[test]
fn a_handshake_frame_over_its_limit_is_an_error() {
    let mut b = Bench::new();
    let big = Message::Hello {
        versions: PROTOCOL_VERSIONS.to_vec(),
        peer: "p".into(),
        token: Bytes(vec![
            0;
            b.config.limits.max_handshake_frame_len as usize + 1
        ]),
        compression: vec![],
        limits: Limits::default().peer_limits(),
    };
    assert!(b.feed(&[big]).is_err());
}
