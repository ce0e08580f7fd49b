//! A client driven by hand with crafted server frames: what a broken or
//! hostile server can make a client do, and how a client recovers from
//! states an honest server can produce (a restarted server, a corrupted
//! stream, a read-only grant).

mod common;

use std::time::Duration;

use common::client_rig::{Driven, welcome};
use common::*;
use crdt_socket_sync::client::{ClientConfig, ClientEvent, CommandError, Status};
use crdt_socket_sync::registry::Registry;
use crdt_socket_sync::server::{AllowAll, ServerConfig};
use crdt_socket_sync::wire::{
    Access, AwarenessEntry, Bytes, DocId, ErrorCode, Message, SessionId, SyncKind,
};
use crdt_socket_sync::{CloseCause, Framing, Limits};

fn config() -> ClientConfig {
    client_config("c")
}

// ---- item 7: reconnect jitter, resumes that cannot be served ----

#[test]
fn the_first_reconnect_delay_depends_on_the_seed() {
    let mut firsts = Vec::new();
    for seed in 1..=8u64 {
        let mut d = Driven::new(ClientConfig { seed, ..config() });
        d.connect();
        d.c.transport_lost(d.now);
        let at = d.c.poll_timeout().unwrap();
        firsts.push((at - d.now).as_micros());
    }
    let policy = crdt_socket_sync::client::Backoff::default();
    for f in &firsts {
        assert!(
            *f >= policy.min.as_micros() && *f <= 2 * policy.min.as_micros(),
            "{firsts:?}"
        );
    }
    let mut distinct = firsts.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), firsts.len(), "first delays: {firsts:?}");
}

fn chunk(transfer: u64, offset: u64, total: u64, data: Vec<u8>) -> Message {
    Message::SyncChunk {
        doc: DocId(0),
        transfer,
        kind: SyncKind::Delta,
        offset,
        total,
        data: Bytes(data),
    }
}

fn opened(access: Access) -> Message {
    Message::Opened {
        name: "doc".into(),
        doc: DocId(0),
        access,
    }
}

fn resume_of(msgs: &[Message]) -> Option<(u64, u64)> {
    msgs.iter().find_map(|m| match m {
        Message::Open { resume, .. } => Some(resume.map(|r| (r.transfer, r.offset))),
        _ => None,
    })?
}

#[test]
fn a_resume_the_server_cannot_continue_falls_back_to_a_fresh_sync_once() {
    let mut d = Driven::new(config());
    d.c.open(&mut d.reg, "doc", d.now).unwrap();
    d.connect();
    // The server starts a two-chunk transfer; the connection is cut after
    // the first chunk.
    let mut server = OpLog::new(9);
    for i in 0..20 {
        server.edit(format!("line {i}\n").as_bytes());
    }
    use crdt_socket_sync::document::Document;
    let payload = server.delta_since(&[]).unwrap();
    let total = payload.len() as u64;
    d.feed(&[opened(Access::ReadWrite)]);
    d.feed(&[chunk(7, 0, total, payload[..40].to_vec())]);
    d.c.transport_lost(d.now);
    d.redial();
    // The client asks to resume at byte 40...
    let opens = d.connect();
    assert_eq!(resume_of(&opens), Some((7, 40)));
    // ...but the restarted server's transfer 7 is another payload.
    d.feed(&[opened(Access::ReadWrite)]);
    d.feed(&[chunk(7, 40, total + 100, vec![0; 40])]);
    let ev = d.events();
    assert!(
        ev.iter().any(|e| matches!(
            e,
            ClientEvent::Closed {
                cause: CloseCause::Protocol(_)
            }
        )),
        "{ev:?}"
    );
    // Every later connection asks for a fresh sync: no resume loop.
    for _ in 0..3 {
        d.redial();
        let opens = d.connect();
        assert_eq!(resume_of(&opens), None, "{opens:?}");
        d.c.transport_lost(d.now);
    }
    // And the fresh sync completes.
    d.redial();
    d.connect();
    d.feed(&[opened(Access::ReadWrite)]);
    d.feed(&[chunk(8, 0, total, payload.clone())]);
    d.feed(&[Message::SyncDone {
        doc: DocId(0),
        version: Bytes(server.version()),
    }]);
    assert_eq!(d.c.status(), Status::Connected);
    assert_eq!(d.reg.get("doc").unwrap().text(), server.text());
}

// ---- item 8: liveness counts whole frames ----

#[test]
fn a_stalled_partial_frame_closes_the_connection_within_the_deadline() {
    let dead_after = Duration::from_secs(6);
    let mut d = Driven::new(ClientConfig {
        framing: Framing::Stream,
        dead_after,
        ..config()
    });
    d.connect();
    d.events();
    // A Pong whose length byte was corrupted (0x05 -> 0xfa): the decoder
    // now waits for a frame far longer than anything that follows.
    let mut pong = frame(&[Message::Pong { echo: 10_000_000 }]);
    assert_eq!(pong[1], 0x05);
    pong[1] = 0xfa;
    let start = d.now;
    d.c.handle_input(d.now, &pong, &mut d.reg);
    // Other bytes keep arriving (the server's pings, say), one small frame
    // every 500 ms, swallowed by the partial frame.
    let ping = frame(&[Message::Ping { t: 1 }]);
    let mut closed_at = None;
    for _ in 0..60 {
        d.now += Duration::from_millis(500);
        d.c.handle_input(d.now, &ping, &mut d.reg);
        d.c.handle_timeout(d.now);
        if d.c.status() != Status::Connected {
            closed_at = Some(d.now - start);
            break;
        }
    }
    let closed_at = closed_at.expect("still Connected after 30 s of a stalled frame");
    assert!(
        closed_at <= dead_after + Duration::from_secs(1),
        "{closed_at:?}"
    );
    let ev = d.events();
    assert!(
        ev.iter().any(|e| matches!(e, ClientEvent::Closed { .. })),
        "{ev:?}"
    );
    // It reconnects as after any lost connection.
    assert_eq!(d.c.status(), Status::Reconnecting);
}

#[test]
fn whole_frames_keep_a_connection_alive() {
    let dead_after = Duration::from_secs(6);
    let mut d = Driven::new(ClientConfig {
        framing: Framing::Stream,
        dead_after,
        ..config()
    });
    d.connect();
    // A ping split over two reads, every second, for 20 s.
    let ping = frame(&[Message::Ping { t: 1 }]);
    for _ in 0..20 {
        d.now += Duration::from_millis(500);
        d.c.handle_input(d.now, &ping[..2], &mut d.reg);
        d.c.handle_timeout(d.now);
        d.now += Duration::from_millis(500);
        d.c.handle_input(d.now, &ping[2..], &mut d.reg);
        d.c.handle_timeout(d.now);
        d.sent();
    }
    assert_eq!(d.c.status(), Status::Connected);
}

// ---- item 12: a read-only client's offline edits ----

#[test]
fn offline_edits_refused_by_a_read_only_grant_are_reported() {
    let mut d = Driven::new(config());
    d.c.open(&mut d.reg, "doc", d.now).unwrap();
    d.reg.open("doc").unwrap().edit(b"offline");
    assert_eq!(d.c.flush_local(&mut d.reg, "doc", d.now), Ok(Some(1)));
    d.connect();
    d.events();
    d.feed(&[opened(Access::ReadOnly)]);
    let ev = d.events();
    assert_eq!(d.c.unacknowledged("doc"), 0);
    let rejected: Vec<_> = ev
        .iter()
        .filter(|e| matches!(e, ClientEvent::UpdatesRejected { .. }))
        .collect();
    assert_eq!(
        rejected,
        [&ClientEvent::UpdatesRejected {
            name: "doc".into(),
            first_seq: 1,
            last_seq: 1,
            count: 1,
            bytes: 18,
            code: ErrorCode::ReadOnly,
        }],
        "the dropped offline edit is reported: {ev:?}"
    );
    // Known read-only now: later edits are refused at once.
    d.reg.open("doc").unwrap().edit(b" more");
    assert_eq!(
        d.c.flush_local(&mut d.reg, "doc", d.now),
        Err(CommandError::ReadOnly("doc".into()))
    );
}

// ---- item 13: what the client takes from the server ----

#[test]
fn an_absurd_welcome_frame_limit_closes_the_connection() {
    for max_frame_len in [0, 1, 100, 1023] {
        let mut d = Driven::new(config());
        d.c.open(&mut d.reg, "doc", d.now).unwrap();
        d.c.connect(d.now);
        d.sent();
        d.feed(&[welcome(max_frame_len)]);
        let sent = d.sent();
        assert!(
            sent.len() <= 1,
            "max_frame_len {max_frame_len}: nothing but a Close goes out, got {} messages",
            sent.len()
        );
        let ev = d.events();
        assert!(
            ev.iter().any(|e| matches!(
                e,
                ClientEvent::Closed {
                    cause: CloseCause::Protocol(_)
                }
            )),
            "{max_frame_len}: {ev:?}"
        );
    }
    // The server's own minimum is fine.
    let mut d = Driven::new(config());
    d.c.connect(d.now);
    d.sent();
    d.feed(&[welcome(1024)]);
    assert_eq!(d.c.status(), Status::Connected);
}

fn entry(session: u64, state: Option<Vec<u8>>) -> AwarenessEntry {
    AwarenessEntry {
        session: SessionId(session),
        identity: format!("peer{session}"),
        clock: 1,
        state: state.map(Bytes),
    }
}

#[test]
fn presence_peers_kept_per_document_are_bounded() {
    let limits = Limits::default();
    let mut d = Driven::new(config());
    d.c.open(&mut d.reg, "doc", d.now).unwrap();
    d.connect();
    d.feed(&[opened(Access::ReadWrite)]);
    d.events();
    // 40 messages of 100 distinct peers each: 4,000 peers offered.
    for m in 0..40u64 {
        let entries = (0..100).map(|i| entry(10 + m * 100 + i, Some(vec![1; 8])));
        d.feed(&[Message::Awareness {
            doc: DocId(0),
            entries: entries.collect(),
        }]);
    }
    let peers = d.c.presence("doc").len();
    assert!(
        peers <= limits.max_presence_states,
        "{peers} peers kept, limit {}",
        limits.max_presence_states
    );
    let changes = d
        .events()
        .iter()
        .filter(|e| matches!(e, ClientEvent::PresenceChanged { .. }))
        .count();
    assert!(changes <= limits.max_presence_states, "{changes} events");
    // A state larger than the limit is not kept either.
    let mut d = Driven::new(config());
    d.c.open(&mut d.reg, "doc", d.now).unwrap();
    d.connect();
    d.feed(&[opened(Access::ReadWrite)]);
    d.feed(&[Message::Awareness {
        doc: DocId(0),
        entries: vec![entry(5, Some(vec![0; limits.max_presence_len + 1]))],
    }]);
    assert_eq!(d.c.presence("doc").len(), 0);
    // Departures still free room.
    d.feed(&[Message::Awareness {
        doc: DocId(0),
        entries: vec![entry(6, Some(vec![1]))],
    }]);
    d.feed(&[Message::Awareness {
        doc: DocId(0),
        entries: vec![entry(6, None)],
    }]);
    assert_eq!(d.c.presence("doc").len(), 0);
}

#[test]
fn broadcasts_held_while_syncing_are_bounded_and_resynced() {
    let bound = 64 * 1024;
    let mut d = Driven::new(ClientConfig {
        limits: Limits {
            max_pending_bytes: bound,
            ..Limits::default()
        },
        ..config()
    });
    d.c.open(&mut d.reg, "doc", d.now).unwrap();
    d.connect();
    d.feed(&[opened(Access::ReadWrite)]);
    // The document is syncing: 10,000 empty broadcasts and 200 KiB of
    // others arrive meanwhile.
    let empties: Vec<Message> = (0..1000)
        .map(|_| Message::Broadcast {
            doc: DocId(0),
            data: Bytes(Vec::new()),
        })
        .collect();
    for _ in 0..10 {
        d.feed(&empties);
    }
    d.feed(&[Message::Broadcast {
        doc: DocId(0),
        data: Bytes(vec![0xA5; 200 * 1024]),
    }]);
    d.feed(&[Message::SyncDone {
        doc: DocId(0),
        version: Bytes(Vec::new()),
    }]);
    // Past the bound the broadcasts were dropped: the client asks for
    // what it lacks instead.
    let sent = d.sent();
    assert!(
        sent.iter()
            .any(|m| matches!(m, Message::SyncRequest { .. })),
        "{sent:?}"
    );
}

#[test]
fn a_pong_echo_from_the_far_future_is_harmless() {
    let mut d = Driven::new(config());
    d.connect();
    for echo in [u64::MAX, u64::MAX / 2, 1 << 60] {
        d.feed(&[Message::Pong { echo }]);
    }
    assert_eq!(d.c.status(), Status::Connected);
    assert_eq!(d.c.stats().rtt, None);
}

#[test]
fn a_sync_sends_an_update_only_when_the_server_lacks_something() {
    let mut n = Net::new(ServerConfig::default(), AllowAll);
    n.add_client(client_config("a"));
    n.server_reg.open("doc").unwrap().edit(b"server");
    n.open(0, "doc");
    n.connect(0);
    let t = n.take_transcript();
    assert!(!t.iter().any(|l| l.starts_with("c0> Update")), "{t:#?}");
    // The first edit is update 1.
    assert_eq!(n.edit(0, "doc", "x"), Some(1));
    // A reconnect with nothing new sends no update either.
    n.take_transcript();
    n.cut(0);
    n.connect(0);
    let t = n.take_transcript();
    assert!(!t.iter().any(|l| l.starts_with("c0> Update")), "{t:#?}");
    // Offline edits still go out after the sync.
    n.cut(0);
    n.clients[0].reg.open("doc").unwrap().edit(b"offline");
    n.connect(0);
    let t = n.take_transcript();
    assert!(t.iter().any(|l| l.starts_with("c0> Update")), "{t:#?}");
    assert_eq!(n.server_text("doc"), n.text(0, "doc"));
}

#[test]
fn a_resumed_payload_that_does_not_apply_is_fetched_afresh_once() {
    use crdt_socket_sync::document::Document;
    let mut d = Driven::new(config());
    d.c.open(&mut d.reg, "doc", d.now).unwrap();
    d.connect();
    let mut server = OpLog::new(9);
    for i in 0..20 {
        server.edit(format!("line {i}\n").as_bytes());
    }
    let payload = server.delta_since(&[]).unwrap();
    let total = payload.len() as u64;
    d.feed(&[opened(Access::ReadWrite)]);
    d.feed(&[chunk(7, 0, total, payload[..40].to_vec())]);
    d.c.transport_lost(d.now);
    d.redial();
    assert_eq!(resume_of(&d.connect()), Some((7, 40)));
    // The restarted server's transfer 7 has the same length but other
    // bytes: the pieces do not make an update.
    d.feed(&[opened(Access::ReadWrite)]);
    d.feed(&[chunk(7, 40, total, vec![0xff; total as usize - 40])]);
    d.feed(&[Message::SyncDone {
        doc: DocId(0),
        version: Bytes(server.version()),
    }]);
    let sent = d.sent();
    let requests = sent
        .iter()
        .filter(|m| matches!(m, Message::SyncRequest { .. }))
        .count();
    assert_eq!(requests, 1, "a fresh sync is asked for once: {sent:?}");
    // The fresh sync (a new transfer from offset 0) completes it.
    d.feed(&[chunk(8, 0, total, payload.clone())]);
    d.feed(&[Message::SyncDone {
        doc: DocId(0),
        version: Bytes(server.version()),
    }]);
    assert_eq!(d.reg.get("doc").unwrap().text(), server.text());
    let sent = d.sent();
    assert!(
        !sent
            .iter()
            .any(|m| matches!(m, Message::SyncRequest { .. })),
        "{sent:?}"
    );
}

#[test]
fn a_write_refused_as_read_only_reports_the_dropped_outbox() {
    let mut d = Driven::new(config());
    d.c.open(&mut d.reg, "doc", d.now).unwrap();
    d.connect();
    d.feed(&[opened(Access::ReadWrite)]);
    d.feed(&[Message::SyncDone {
        doc: DocId(0),
        version: Bytes(Vec::new()),
    }]);
    for text in ["a", "b"] {
        d.reg.open("doc").unwrap().edit(text.as_bytes());
        d.c.flush_local(&mut d.reg, "doc", d.now).unwrap();
    }
    d.events();
    // The grant was downgraded (a token refresh): the server refuses.
    d.feed(&[Message::Error {
        doc: Some(DocId(0)),
        seq: Some(1),
        code: ErrorCode::ReadOnly,
        message: "read-only".into(),
    }]);
    let ev = d.events();
    assert!(
        ev.iter().any(|e| matches!(
            e,
            ClientEvent::UpdatesRejected {
                first_seq: 1,
                last_seq: 2,
                count: 2,
                ..
            }
        )),
        "{ev:?}"
    );
    assert_eq!(d.c.unacknowledged("doc"), 0);
}

#[test]
fn broadcasts_held_by_default_are_bounded_by_max_pending_bytes() {
    let limits = Limits::default();
    let mut d = Driven::new(config());
    d.c.open(&mut d.reg, "doc", d.now).unwrap();
    d.connect();
    d.feed(&[opened(Access::ReadWrite)]);
    // 20 MiB of broadcasts while syncing (the bound is 16 MiB; it was the
    // 1 GiB transfer limit).
    let big = Message::Broadcast {
        doc: DocId(0),
        data: Bytes(vec![0xA5; 512 * 1024]),
    };
    for _ in 0..40 {
        d.feed(std::slice::from_ref(&big));
    }
    assert!(limits.max_pending_bytes < 20 << 20);
    d.feed(&[Message::SyncDone {
        doc: DocId(0),
        version: Bytes(Vec::new()),
    }]);
    assert!(
        d.sent()
            .iter()
            .any(|m| matches!(m, Message::SyncRequest { .. }))
    );
}

#[test]
fn broadcasts_held_are_bounded_across_documents() {
    let bound = 256 * 1024;
    let mut d = Driven::new(ClientConfig {
        limits: Limits {
            max_pending_bytes: bound,
            ..Limits::default()
        },
        ..config()
    });
    let names: Vec<String> = (0..8).map(|i| format!("doc{i}")).collect();
    for name in &names {
        d.c.open(&mut d.reg, name, d.now).unwrap();
    }
    d.connect();
    for (i, name) in names.iter().enumerate() {
        d.feed(&[Message::Opened {
            name: name.clone(),
            doc: DocId(i as u32),
            access: Access::ReadWrite,
        }]);
    }
    // 64 KiB for each of the 8 syncing documents: 512 KiB offered, twice
    // the bound.
    for i in 0..8 {
        d.feed(&[Message::Broadcast {
            doc: DocId(i),
            data: Bytes(vec![0xA5; 64 * 1024]),
        }]);
    }
    let mut resyncs = 0;
    for i in 0..8 {
        d.feed(&[Message::SyncDone {
            doc: DocId(i),
            version: Bytes(Vec::new()),
        }]);
        resyncs += d
            .sent()
            .iter()
            .filter(|m| matches!(m, Message::SyncRequest { .. }))
            .count();
    }
    // The first three fit (3 x 64 KiB + overhead < 256 KiB); every later
    // one overflows.
    assert_eq!(resyncs, 5);
}
