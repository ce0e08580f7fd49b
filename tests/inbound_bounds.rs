//! What received bytes can make a server hold, and for how long: frames and
//! fragments before the handshake, fragmented messages after it, and input
//! that never completes. Each test takes the attacker's side and asserts
//! the cost, not only the rejection.

mod common;

use std::time::{Duration, Instant};

use common::*;
use crdt_socket_sync::server::{AllowAll, ConnId, Hub, Phase, ServerConfig, ServerEvent};
use crdt_socket_sync::wire::{Bytes, Compression, FrameError, Message, PROTOCOL_VERSIONS};
use crdt_socket_sync::{CloseCause, Framing, InboundError, Limits};

fn hub(config: ServerConfig) -> (Hub<AllowAll>, Reg) {
    (Hub::new(config, AllowAll), server_registry())
}

fn causes(hub: &mut Hub<AllowAll>) -> Vec<(ConnId, CloseCause)> {
    let mut out = Vec::new();
    while let Some(e) = hub.poll_event() {
        if let ServerEvent::ClientDisconnected { conn, cause } = e {
            out.push((conn, cause));
        }
    }
    out
}

fn drain(hub: &mut Hub<AllowAll>) {
    while hub.poll_transmit().is_some() {}
}

/// Accepted and handshaken.
fn joined(hub: &mut Hub<AllowAll>, reg: &mut Reg, now: Instant) -> ConnId {
    let conn = hub.accept(now);
    hub.handle_input(conn, now, &frame(&[hello("p", b"t")]), reg);
    assert_eq!(hub.session(conn).unwrap().phase(), Phase::Active);
    drain(hub);
    conn
}

/// The figure of the review: about 300 KiB of deflated fragments, no
/// `Hello`, pinned 63 MiB per connection until the handshake timeout. Now
/// the first fragment closes the connection and nothing is held: a large
/// one for its frame's size, a small one for coming before `Hello`.
#[test]
fn fragments_before_hello_pin_nothing() {
    for framing in [Framing::Datagram, Framing::Stream] {
        let (mut hub, mut reg) = hub(ServerConfig {
            framing,
            ..ServerConfig::default()
        });
        let now = Instant::now();
        let total = 63 << 20;
        for piece in [1 << 20, 8 << 10] {
            let conns: Vec<ConnId> = (0..8).map(|_| hub.accept(now)).collect();
            let mut sent = 0;
            for &conn in &conns {
                for k in 0..4 {
                    let f = deflated(&[fragment(1, k, piece, total)]);
                    sent += f.len();
                    hub.handle_input(conn, now, &f, &mut reg);
                }
            }
            assert!(sent < 256 << 10, "{sent} bytes sent");
            let held: usize = conns
                .iter()
                .map(|c| hub.session(*c).unwrap().buffered_input())
                .sum();
            assert_eq!(held, 0, "{framing:?}: {held} bytes held by 8 connections");
            assert_eq!(hub.reassembly_bytes(), 0);
            let closed = causes(&mut hub);
            assert_eq!(closed.len(), 8, "{framing:?}: {closed:?}");
            for (_, cause) in closed {
                let expected = if piece > 16 << 10 {
                    CloseCause::Inbound(InboundError::Frame(FrameError::DecompressedTooLarge {
                        len: piece as u64 + 10,
                        limit: 16 << 10,
                    }))
                } else {
                    CloseCause::Inbound(InboundError::FragmentBeforeHandshake)
                };
                assert_eq!(cause, expected);
            }
        }
    }
}

/// Before the handshake a frame is at most `max_handshake_frame_len` (16
/// KiB), on the wire and inflated; a stream header declaring more is
/// refused before anything is held.
#[test]
fn frames_before_hello_are_small() {
    let now = Instant::now();
    // 64 KiB of token: too large on the wire.
    let (mut h, mut reg) = hub(ServerConfig::default());
    let conn = h.accept(now);
    h.handle_input(conn, now, &frame(&[hello("p", &[7; 64 << 10])]), &mut reg);
    assert!(matches!(
        &causes(&mut h)[..],
        [(
            _,
            CloseCause::Inbound(InboundError::Frame(FrameError::TooLarge {
                limit: 16384,
                ..
            }))
        )]
    ));
    // 1 MiB of token deflated to a few KiB: too large once inflated.
    let f = deflated(&[hello("p", &[7; 1 << 20])]);
    assert!(f.len() < 16 << 10);
    let conn = h.accept(now);
    h.handle_input(conn, now, &f, &mut reg);
    assert!(matches!(
        &causes(&mut h)[..],
        [(
            _,
            CloseCause::Inbound(InboundError::Frame(FrameError::DecompressedTooLarge {
                limit: 16384,
                ..
            }))
        )]
    ));
    // A stream: a header declaring 1 MiB, then silence.
    let (mut h, mut reg) = hub(ServerConfig {
        framing: Framing::Stream,
        ..ServerConfig::default()
    });
    let conn = h.accept(now);
    let big = frame(&[hello("p", &[7; 1 << 19])]);
    h.handle_input(conn, now, &big[..4], &mut reg);
    assert_eq!(h.session(conn).unwrap().buffered_input(), 0);
    assert!(h.is_closed(conn));
}

/// What an honest `Hello` needs still fits, and on a stream it may share
/// a read with small frames. Anything larger waits for `Welcome` (a frame
/// in the same input as the `Hello` is still unauthenticated); after it,
/// frames and fragments up to the session's limits pass.
#[test]
fn an_honest_hello_fits() {
    let now = Instant::now();
    let peer = "p".repeat(512);
    let hello = Message::Hello {
        versions: PROTOCOL_VERSIONS.to_vec(),
        peer: peer.clone(),
        token: Bytes(vec![1; 4096]),
        compression: vec![Compression::Deflate],
        limits: Limits::default().peer_limits(),
    };
    for framing in [Framing::Datagram, Framing::Stream] {
        let (mut h, mut reg) = hub(ServerConfig {
            framing,
            ..ServerConfig::default()
        });
        let conn = h.accept(now);
        let mut input = frame(std::slice::from_ref(&hello));
        if framing == Framing::Stream {
            let pings: Vec<_> = (0..500).map(|t| Message::Ping { t }).collect();
            input.extend(frame(&pings));
        }
        h.handle_input(conn, now, &input, &mut reg);
        assert_eq!(
            h.session(conn).unwrap().phase(),
            Phase::Active,
            "{framing:?}"
        );
        assert!(causes(&mut h).is_empty());
        h.handle_input(
            conn,
            now,
            &frame(&[fragment(1, 0, 40_000, 80_000)]),
            &mut reg,
        );
        let held = h.session(conn).unwrap().buffered_input();
        assert!((40_000..=80_000).contains(&held), "{held}");
        assert!(causes(&mut h).is_empty());
    }
    // Pipelined behind the `Hello`, the same fragment is refused.
    let (mut h, mut reg) = hub(ServerConfig {
        framing: Framing::Stream,
        ..ServerConfig::default()
    });
    let conn = h.accept(now);
    let mut input = frame(std::slice::from_ref(&hello));
    input.extend(frame(&[fragment(1, 0, 8_000, 80_000)]));
    h.handle_input(conn, now, &input, &mut reg);
    assert_eq!(h.session(conn).unwrap().buffered_input(), 0);
    assert_eq!(
        causes(&mut h)[..],
        [(
            conn,
            CloseCause::Inbound(InboundError::FragmentBeforeHandshake)
        )]
    );
}

/// After the handshake, what one connection holds of a fragmented message
/// is bounded by `max_message_len` (twice what came, at most), and what
/// all of them hold by `max_reassembly_bytes`: the connection that would
/// pass it is closed and its buffer released.
#[test]
fn reassembly_is_bounded_per_connection_and_in_total() {
    let limits = Limits {
        max_message_len: 4 << 20,
        max_reassembly_bytes: 6 << 20,
        ..Limits::default()
    };
    let (mut h, mut reg) = hub(ServerConfig {
        limits,
        ..ServerConfig::default()
    });
    let now = Instant::now();
    let total = 4 << 20;
    let piece = 256 << 10;
    let a = joined(&mut h, &mut reg, now);
    let b = joined(&mut h, &mut reg, now);
    let held = |h: &Hub<AllowAll>, c| h.session(c).map_or(0, |s| s.buffered_input());
    // 3 MiB of a 4 MiB message each: the second passes 6 MiB in total.
    for k in 0..12 {
        h.handle_input(a, now, &deflated(&[fragment(1, k, piece, total)]), &mut reg);
        let got = (k as usize + 1) * piece;
        assert!(
            held(&h, a) >= got && held(&h, a) <= 2 * got,
            "{}",
            held(&h, a)
        );
    }
    assert!(held(&h, a) <= 4 << 20);
    for k in 0..12 {
        h.handle_input(b, now, &deflated(&[fragment(1, k, piece, total)]), &mut reg);
        assert!(held(&h, a) + held(&h, b) <= 6 << 20);
    }
    assert!(h.is_closed(b));
    assert_eq!(held(&h, b), 0, "released on close");
    assert_eq!(h.reassembly_bytes(), held(&h, a));
    assert_eq!(
        causes(&mut h),
        [(
            b,
            CloseCause::Inbound(InboundError::ReassemblyFull { limit: 6 << 20 })
        )]
    );
    // Once `a` is gone, another connection gets the room back.
    h.connection_lost(a, now);
    causes(&mut h);
    let c = joined(&mut h, &mut reg, now);
    for k in 0..12 {
        h.handle_input(c, now, &deflated(&[fragment(1, k, piece, total)]), &mut reg);
    }
    assert!(!h.is_closed(c));
    assert!(held(&h, c) >= 3 << 20);
    assert_eq!(h.reassembly_bytes(), held(&h, c));
    // A completed message gives its room back.
    h.handle_input(
        c,
        now,
        &deflated(&[fragment(1, 12, 1 << 20, total)]),
        &mut reg,
    );
    assert_eq!(held(&h, c), 0);
    assert_eq!(h.reassembly_bytes(), 0);
}

/// The review's figure: one byte every 9 s kept a half-sent frame's
/// connection open forever. Only whole frames are traffic now: the session
/// is closed once the idle timeout passed since the last whole frame, with
/// a cause that says why.
#[test]
fn a_trickled_frame_does_not_keep_a_session_alive() {
    let config = ServerConfig {
        framing: Framing::Stream,
        ..ServerConfig::default()
    };
    let idle = config.idle_timeout;
    let (mut h, mut reg) = hub(config);
    let start = Instant::now();
    let conn = joined(&mut h, &mut reg, start);
    let update = frame(&[Message::Update {
        doc: crdt_socket_sync::wire::DocId(1),
        seq: 1,
        data: Bytes(vec![1; 1000]),
    }]);
    let mut now = start;
    let mut closed_at = None;
    for (i, byte) in update.iter().take(20).enumerate() {
        h.handle_input(conn, now, std::slice::from_ref(byte), &mut reg);
        now += Duration::from_secs(9);
        h.handle_timeout(now, &mut reg);
        if h.is_closed(conn) {
            closed_at = Some(i);
            break;
        }
    }
    let closed_at = closed_at.expect("still open after 20 bytes in 180 s");
    assert!(
        now.duration_since(start) <= idle + Duration::from_secs(9),
        "closed after {closed_at} bytes"
    );
    assert!(matches!(
        &causes(&mut h)[..],
        [(c, CloseCause::IncompleteInput { held })] if *c == conn && *held > 0
    ));
}

/// A fragmented message must complete within `incomplete_input_timeout`
/// of its first fragment, even if each fragment (a whole frame) keeps the
/// session from idling.
#[test]
fn a_fragmented_message_must_complete_in_time() {
    let config = ServerConfig::default();
    let deadline = config.incomplete_input_timeout;
    let (mut h, mut reg) = hub(config);
    let start = Instant::now();
    let conn = joined(&mut h, &mut reg, start);
    let mut now = start;
    for k in 0..20 {
        h.handle_input(conn, now, &frame(&[fragment(3, k, 100, 1 << 20)]), &mut reg);
        now += Duration::from_secs(9);
        h.handle_timeout(now, &mut reg);
        if h.is_closed(conn) {
            break;
        }
    }
    assert!(h.is_closed(conn), "still open after 180 s");
    assert!(now.duration_since(start) <= deadline + Duration::from_secs(9));
    assert!(matches!(
        &causes(&mut h)[..],
        [(c, CloseCause::IncompleteInput { held })] if *c == conn && *held >= 100
    ));
    assert_eq!(h.session(conn).unwrap().buffered_input(), 0);
}

/// Whole frames keep a session alive however they are split, and a large
/// fragmented message that completes in time is delivered.
#[test]
fn whole_frames_keep_a_session_alive() {
    let config = ServerConfig {
        framing: Framing::Stream,
        ..ServerConfig::default()
    };
    let (mut h, mut reg) = hub(config);
    let start = Instant::now();
    let conn = joined(&mut h, &mut reg, start);
    let mut now = start;
    for t in 0..20 {
        let ping = frame(&[Message::Ping { t }]);
        let (a, b) = ping.split_at(2);
        h.handle_input(conn, now, a, &mut reg);
        now += Duration::from_secs(1);
        h.handle_input(conn, now, b, &mut reg);
        now += Duration::from_secs(8);
        h.handle_timeout(now, &mut reg);
    }
    assert!(!h.is_closed(conn), "{:?}", causes(&mut h));
}
