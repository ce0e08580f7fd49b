//! The hub's session table and deadlines: memory follows the live
//! connections, and finding or firing a deadline looks at a bounded number
//! of entries, whatever the number of connections (ever accepted or live).

use std::time::{Duration, Instant};

use crate::Limits;
use crate::document::Document;
use crate::registry::MemoryRegistry;
use crate::server::sessions::visits;
use crate::server::{AllowAll, ConnId, Hub, ServerConfig, ServerEvent};
use crate::testing::OpLog;
use crate::wire::{Bytes, Compression, DocId, Encoder, Message, PROTOCOL_VERSIONS};

type Reg = MemoryRegistry<OpLog>;

fn registry() -> Reg {
    MemoryRegistry::new(|_: &str| OpLog::new(0))
}

fn frame(msgs: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    Encoder::new(&Limits::default())
        .encode(msgs, &mut out)
        .unwrap();
    out
}

fn hello() -> Vec<u8> {
    frame(&[Message::Hello {
        versions: PROTOCOL_VERSIONS.to_vec(),
        peer: "p".into(),
        token: Bytes::default(),
        compression: vec![Compression::None],
        limits: Limits::default().peer_limits(),
    }])
}

/// Every session with a deadline is filed no later than it.
fn check_filed(hub: &Hub<AllowAll>) {
    hub.sessions.check_filed(|s| s.next_timeout(&hub.config));
}

fn drain(hub: &mut Hub<AllowAll>) -> Vec<ServerEvent> {
    while hub.poll_transmit().is_some() {}
    check_filed(hub);
    std::iter::from_fn(|| hub.poll_event()).collect()
}

/// Accepts `conn`, handshakes it and opens (and syncs) document "d".
fn join(hub: &mut Hub<AllowAll>, reg: &mut Reg, now: Instant) -> ConnId {
    let conn = hub.accept(now);
    hub.handle_input(conn, now, &hello(), reg);
    let open = frame(&[Message::Open {
        name: "d".into(),
        version: Bytes::default(),
        resume: None,
    }]);
    hub.handle_input(conn, now, &open, reg);
    let done = frame(&[Message::SyncDone {
        doc: DocId(0),
        version: Bytes::default(),
    }]);
    hub.handle_input(conn, now, &done, reg);
    conn
}

/// One long-lived connection while 200,000 others come and go: the table
/// holds a few slots, not one per connection accepted since the live one,
/// and neither `poll_timeout` nor `handle_timeout` walks the dead ones.
#[test]
fn churn_around_a_long_lived_connection_leaves_nothing_behind() {
    let now = Instant::now();
    let mut hub = Hub::new(ServerConfig::default(), AllowAll);
    let mut reg = registry();
    let live = hub.accept(now);
    hub.handle_input(live, now, &hello(), &mut reg);
    drain(&mut hub);
    for _ in 0..200_000 {
        let conn = hub.accept(now);
        hub.connection_lost(conn, now);
        while hub.poll_event().is_some() {}
    }
    assert_eq!(hub.connections(), 1);
    let slots = hub.sessions.slots();
    assert!(slots <= 4, "{slots} slots held for 1 live connection");
    visits::take();
    let deadline = hub.poll_timeout();
    let polled = visits::take();
    assert!(polled <= 4, "poll_timeout visited {polled} entries");
    // Filed under its handshake deadline, which its idle one followed.
    let idle = now.checked_add(hub.config().idle_timeout);
    assert!(deadline.is_some_and(|d| d > now) && deadline <= idle);
    hub.handle_timeout(now, &mut reg);
    let fired = visits::take();
    assert!(fired <= 4, "handle_timeout visited {fired} entries");
    assert!(!hub.is_closed(live));
}

/// 10,000 handshaking connections accepted a microsecond apart: the next
/// deadline is found without looking at each, and firing the ten that
/// expired looks at about those ten.
#[test]
fn deadlines_cost_what_expires_not_what_is_connected() {
    let t0 = Instant::now();
    let config = ServerConfig::default();
    let handshake = config.handshake_timeout;
    let mut hub = Hub::new(config, AllowAll);
    let mut reg = registry();
    let us = Duration::from_micros(1);
    let conns: Vec<ConnId> = (0..10_000u32).map(|i| hub.accept(t0 + us * i)).collect();
    drain(&mut hub);
    visits::take();
    assert_eq!(hub.poll_timeout(), Some(t0 + handshake));
    let polled = visits::take();
    assert!(polled <= 4, "poll_timeout visited {polled} entries");

    hub.handle_timeout(t0 + handshake + us * 9, &mut reg);
    let fired = visits::take();
    assert!(fired <= 100, "handle_timeout visited {fired} entries");
    let closed: Vec<ConnId> = drain(&mut hub)
        .into_iter()
        .filter_map(|e| match e {
            ServerEvent::ClientDisconnected { conn, .. } => Some(conn),
            _ => None,
        })
        .collect();
    assert_eq!(closed, conns[..10], "the ten oldest, in accept order");
    assert_eq!(hub.poll_timeout(), Some(t0 + handshake + us * 10));
}

/// Deadlines follow the sessions whichever way they move: later with
/// input (idle), earlier with the handshake's end when the idle timeout is
/// shorter than the handshake's.
#[test]
fn deadlines_move_both_ways() {
    let t0 = Instant::now();
    let s = Duration::from_secs(1);
    let config = ServerConfig {
        handshake_timeout: s * 5,
        idle_timeout: s,
        ..ServerConfig::default()
    };
    let mut hub = Hub::new(config, AllowAll);
    let mut reg = registry();
    let a = hub.accept(t0);
    let b = hub.accept(t0);
    assert_eq!(hub.poll_timeout(), Some(t0 + s * 5));
    // Handshake done: the idle deadline (1 s) is earlier than the
    // handshake's (5 s).
    hub.handle_input(a, t0, &hello(), &mut reg);
    check_filed(&hub);
    assert_eq!(hub.poll_timeout(), Some(t0 + s));
    // Input at 0.5 s moves it later; firing the old one changes nothing.
    let ping = frame(&[Message::Ping { t: 1 }]);
    hub.handle_input(a, t0 + s / 2, &ping, &mut reg);
    drain(&mut hub);
    hub.handle_timeout(t0 + s, &mut reg);
    assert!(!hub.is_closed(a));
    assert_eq!(hub.poll_timeout(), Some(t0 + s + s / 2));
    hub.handle_timeout(t0 + s + s / 2, &mut reg);
    assert!(hub.is_closed(a), "idle");
    assert!(!hub.is_closed(b));
    assert_eq!(hub.poll_timeout(), Some(t0 + s * 5));
    hub.handle_timeout(t0 + s * 5, &mut reg);
    assert!(hub.is_closed(b), "no hello in time");
    assert_eq!(hub.poll_timeout(), None);
}

/// A lagging subscriber among 2,000 idle ones: while its queue is full and
/// once it drained, `poll_timeout` finds (or rules out) the catch-up without
/// a look at every session, and the catch-up is queued.
#[test]
fn a_due_catch_up_is_found_without_a_scan() {
    let now = Instant::now();
    let limit = 16 * 1024;
    let config = ServerConfig {
        limits: Limits {
            max_outbound_bytes: limit,
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    let idle_deadline = now.checked_add(config.idle_timeout);
    let mut hub = Hub::new(config, AllowAll);
    let mut reg = registry();
    let sender = join(&mut hub, &mut reg, now);
    let reader = join(&mut hub, &mut reg, now);
    drain(&mut hub);
    for _ in 0..2_000 {
        hub.accept(now);
        drain(&mut hub);
    }
    // The reader does not read: its queue passes the high-water mark and it
    // lags.
    let mut doc = OpLog::new(7);
    let mut lagging = false;
    for seq in 1..=64u64 {
        doc.edit(&[b'x'; 1000]);
        let data = doc.take_local_update().unwrap();
        let update = frame(&[Message::Update {
            doc: DocId(0),
            seq,
            data: Bytes(data),
        }]);
        hub.handle_input(sender, now, &update, &mut reg);
        while hub.poll_transmit_for(sender).is_some() {}
        while let Some(e) = hub.poll_event() {
            lagging |= matches!(e, ServerEvent::SubscriberLagging { conn, .. } if conn == reader);
        }
        if lagging {
            break;
        }
    }
    assert!(lagging, "the reader lags");
    visits::take();
    // Its queue is full: no catch-up yet. The next deadline is an idle one.
    let next = hub.poll_timeout();
    let polled = visits::take();
    assert!(polled <= 8, "poll_timeout visited {polled} entries");
    assert!(next.is_some() && next >= idle_deadline.map(|t| t.min(now)));
    assert_ne!(next, Some(now));
    // It reads: the catch-up is due now.
    while hub.poll_transmit_for(reader).is_some() {}
    visits::take();
    assert_eq!(hub.poll_timeout(), Some(now));
    let polled = visits::take();
    assert!(polled <= 8, "poll_timeout visited {polled} entries");
    hub.handle_timeout(now, &mut reg);
    let fired = visits::take();
    assert!(fired <= 8, "handle_timeout visited {fired} entries");
    let events = drain(&mut hub);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ServerEvent::CatchUpQueued { conn, .. } if *conn == reader)),
        "{events:?}"
    );
    assert_ne!(hub.poll_timeout(), Some(now), "nothing due any more");
}

/// A catch-up its sync rate holds back waits for the retry deadline (no
/// busy loop: `poll_timeout` is later than `now`) and is served then.
#[test]
fn a_catch_up_held_back_by_the_sync_rate_is_served_at_the_retry() {
    let t0 = Instant::now();
    let config = ServerConfig {
        limits: Limits {
            sync_rate: 1,
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    let mut hub = Hub::new(config, AllowAll);
    let mut reg = registry();
    let conn = join(&mut hub, &mut reg, t0);
    drain(&mut hub);
    let request = frame(&[Message::SyncRequest {
        doc: DocId(0),
        version: Bytes::default(),
    }]);
    let mut now = t0;
    let mut done = 0;
    let mut decoder = crate::wire::MessageDecoder::new(Limits::default());
    for step in 0..40 {
        if step < 3 {
            hub.handle_input(conn, now, &request, &mut reg);
        }
        if hub.poll_timeout().is_some_and(|t| t <= now) {
            hub.handle_timeout(now, &mut reg);
            assert!(
                hub.poll_timeout().is_none_or(|t| t > now),
                "busy loop at step {step}"
            );
        }
        while let Some((_, f)) = hub.poll_transmit() {
            let mut msgs = Vec::new();
            decoder.decode(&f, &mut msgs).unwrap();
            done += msgs
                .iter()
                .filter(|m| matches!(m, Message::SyncDone { .. }))
                .count();
        }
        check_filed(&hub);
        now += Duration::from_millis(100);
    }
    assert!(done >= 1, "the held-back request was answered");
    assert!(!hub.is_closed(conn));
}
