//! Golden transcripts of the main flows between ClientSession and Hub, and
//! behaviour tests of the sessions.

mod common;

use std::time::Duration;

use common::*;
use crdt_socket_sync::CloseCause;
use crdt_socket_sync::client::{ClientConfig, ClientEvent, CommandError, DocStatus, Status};
use crdt_socket_sync::document::Document;
use crdt_socket_sync::registry::Registry;
use crdt_socket_sync::server::{AllowAll, ServerConfig, ServerEvent, StaticTokens};
use crdt_socket_sync::wire::{Access, CloseReason, ErrorCode, RejectCode};

fn net() -> Net<AllowAll> {
    Net::new(ServerConfig::default(), AllowAll)
}

#[test]
fn golden_handshake() {
    let mut n = net();
    n.add_client(client_config("alice"));
    n.connect(0);
    assert_eq!(
        n.take_transcript(),
        ["c0> Hello[2] alice", "s>0 Welcome v2 None"]
    );
    assert_eq!(n.clients[0].session.status(), Status::Connected);
    let ev = n.take_events(0);
    assert_eq!(ev[0], ClientEvent::Status(Status::Connecting));
    assert_eq!(ev[1], ClientEvent::Status(Status::Connected));
    assert!(matches!(ev[2], ClientEvent::Connected { version: 2, .. }));
    let sev = n.take_server_events();
    assert!(matches!(sev[0], ServerEvent::ClientConnected { .. }));
    assert!(
        matches!(&sev[1], ServerEvent::HandshakeCompleted { identity, .. } if identity.name() == "alice")
    );
}

#[test]
fn golden_deflate_negotiated_when_both_offer_it() {
    let mut n = net();
    n.add_client(ClientConfig {
        offer_deflate: true,
        ..client_config("alice")
    });
    n.connect(0);
    assert_eq!(
        n.take_transcript(),
        ["c0> Hello[2] alice", "s>0 Welcome v2 Deflate"]
    );
    // A large update is compressed on the wire and still arrives intact.
    n.open(0, "doc");
    let big = "x".repeat(20_000);
    n.edit(0, "doc", &big);
    assert_eq!(n.server_text("doc"), big);
    let sent = n.clients[0].session.stats().bytes_out;
    assert!(sent < 5_000, "compressed traffic: {sent} bytes");
}

#[test]
fn golden_reject_unsupported_version() {
    use crdt_socket_sync::wire::{Bytes, Encoder, Message, PeerLimits};
    let mut n = net();
    let conn = n.hub.accept(n.now);
    let mut frame = Vec::new();
    Encoder::new(&Default::default())
        .encode(
            &[Message::Hello {
                versions: vec![99],
                peer: "old".into(),
                token: Bytes::default(),
                compression: vec![],
                limits: PeerLimits {
                    max_frame_len: 1 << 20,
                    max_decompressed_len: 1 << 20,
                },
            }],
            &mut frame,
        )
        .unwrap();
    n.hub.handle_input(conn, n.now, &frame, &mut n.server_reg);
    let mut out = Vec::new();
    while let Some((_, f)) = n.hub.poll_transmit() {
        out.extend(frame_text(&f));
    }
    assert_eq!(out, ["Reject UnsupportedVersion", "Close Rejected"]);
    let ev: Vec<_> = std::iter::from_fn(|| n.hub.poll_event()).collect();
    assert!(matches!(
        ev[1],
        ServerEvent::HandshakeRejected {
            code: RejectCode::UnsupportedVersion,
            ..
        }
    ));
    assert!(matches!(ev[2], ServerEvent::ClientDisconnected { .. }));
    assert_eq!(ev.len(), 3);
}

#[test]
fn golden_reject_bad_token() {
    let auth = StaticTokens::default().with("good", "alice", Access::ReadWrite);
    let mut n = Net::new(ServerConfig::default(), auth);
    n.add_client(ClientConfig {
        token: b"bad".to_vec(),
        ..client_config("mallory")
    });
    n.connect(0);
    assert_eq!(
        n.take_transcript(),
        [
            "c0> Hello[2] mallory",
            "s>0 Reject Unauthorized",
            "s>0 Close Rejected"
        ]
    );
    let ev = n.take_events(0);
    assert!(ev.iter().any(|e| matches!(
        e,
        ClientEvent::Closed {
            cause: CloseCause::Rejected {
                code: RejectCode::Unauthorized,
                ..
            }
        }
    )));
    assert_eq!(n.clients[0].session.status(), Status::Disconnected);
}

#[test]
fn golden_open_and_initial_sync_both_ways() {
    let mut n = net();
    n.add_client(client_config("alice"));
    // The server has content the client lacks...
    n.server_reg.open("notes").unwrap().edit(b"server ");
    // ...and the client has offline edits the server lacks.
    n.clients[0].reg.open("notes").unwrap().edit(b"client");
    n.open(0, "notes");
    n.connect(0);
    assert_eq!(
        n.take_transcript(),
        [
            "c0> Hello[2] alice",
            "s>0 Welcome v2 None",
            "c0> Open notes",
            "s>0 Opened notes#0 ReadWrite",
            "s>0 SyncChunk #0 Delta 18B",
            "s>0 SyncDone #0",
            "c0> Update #0 s1 17B",
            "c0> SyncDone #0",
            "s>0 Ack #0 1/0",
        ]
    );
    assert_eq!(n.text(0, "notes"), "server client");
    assert_eq!(n.server_text("notes"), "server client");
    assert!(
        n.take_events(0)
            .iter()
            .any(|e| matches!(e, ClientEvent::Synced { name } if &**name == "notes"))
    );
    assert!(
        n.take_server_events()
            .iter()
            .any(|e| matches!(e, ServerEvent::DocumentSynced { .. }))
    );
}

#[test]
fn golden_live_update_ack_and_fan_out_to_two_others() {
    let mut n = net();
    for p in ["a", "b", "c"] {
        let i = n.add_client(client_config(p));
        n.open(i, "doc");
        n.connect(i);
    }
    n.take_transcript();
    let seq = n.edit(0, "doc", "hello");
    // The sync sent no update (the server lacked nothing): this is the
    // first.
    assert_eq!(seq, Some(1));
    assert_eq!(
        n.take_transcript(),
        [
            "c0> Update #0 s1 16B",
            "s>0 Ack #0 1/0",
            "s>1 Broadcast #0 16B",
            "s>2 Broadcast #0 16B",
        ]
    );
    for i in 0..3 {
        assert_eq!(n.text(i, "doc"), "hello");
    }
    assert_eq!(n.clients[0].session.unacknowledged("doc"), 0);
    assert!(
        n.take_events(1)
            .iter()
            .any(|e| matches!(e, ClientEvent::RemoteUpdate { .. }))
    );
}

#[test]
fn golden_read_only_refusal() {
    let auth = StaticTokens::default()
        .with("w", "writer", Access::ReadWrite)
        .with("r", "reader", Access::ReadOnly);
    let mut n = Net::new(ServerConfig::default(), auth);
    n.add_client(ClientConfig {
        token: b"w".to_vec(),
        ..client_config("w")
    });
    n.add_client(ClientConfig {
        token: b"r".to_vec(),
        ..client_config("r")
    });
    for i in 0..2 {
        n.open(i, "doc");
        n.connect(i);
    }
    n.take_transcript();
    // The client refuses locally...
    n.clients[1].reg.open("doc").unwrap().edit(b"nope");
    let c = &mut n.clients[1];
    assert_eq!(
        c.session.flush_local(&mut c.reg, "doc", n.now),
        Err(CommandError::ReadOnly("doc".into()))
    );
    // ...and the server refuses a client that sends anyway.
    use crdt_socket_sync::wire::{Bytes, DocId, Encoder, Message};
    let mut frame = Vec::new();
    Encoder::new(&Default::default())
        .encode(
            &[Message::Update {
                doc: DocId(0),
                seq: 7,
                data: Bytes(vec![0xA5]),
            }],
            &mut frame,
        )
        .unwrap();
    let conn = n.clients[1].conn.unwrap();
    n.hub.handle_input(conn, n.now, &frame, &mut n.server_reg);
    n.run();
    assert_eq!(n.take_transcript(), ["s>1 Error Some(0) Some(7) ReadOnly"]);
    // The reader still receives the writer's updates; its refused edit
    // stays local.
    n.edit(0, "doc", "hi");
    assert_eq!(n.server_text("doc"), "hi");
    assert_eq!(n.text(0, "doc"), "hi");
    assert_eq!(n.text(1, "doc"), "hinope");
}

#[test]
fn golden_graceful_close() {
    let mut n = net();
    n.add_client(client_config("a"));
    n.open(0, "doc");
    n.connect(0);
    n.take_transcript();
    n.take_server_events();
    n.clients[0].session.close(n.now);
    n.run();
    assert_eq!(n.take_transcript(), ["c0> Close Normal"]);
    let ev = n.take_events(0);
    assert!(matches!(
        ev.iter()
            .filter(|e| matches!(e, ClientEvent::Closed { .. }))
            .count(),
        1
    ));
    assert_eq!(n.clients[0].session.status(), Status::Closed);
    let sev = n.take_server_events();
    assert!(matches!(
        &sev[..],
        [ServerEvent::ClientDisconnected {
            cause: CloseCause::Peer {
                reason: CloseReason::Normal,
                ..
            },
            ..
        }]
    ));
    assert_eq!(n.hub.subscribers("doc"), 0);
}

#[test]
fn snapshot_is_sent_when_no_delta_is_computable() {
    let mut n = net();
    n.add_client(client_config("a"));
    // The server's document cannot compute deltas (pruned history).
    n.clients[0].reg.open("doc").unwrap().edit(b"mine");
    let server_doc = n.server_reg.open("doc").unwrap();
    server_doc.edit(b"theirs");
    server_doc.no_deltas = true;
    n.open(0, "doc");
    n.connect(0);
    let t = n.take_transcript();
    assert!(
        t.contains(&"s>0 SyncChunk #0 Snapshot 17B".to_string()),
        "{t:?}"
    );
    assert!(
        n.take_server_events()
            .iter()
            .any(|e| matches!(e, ServerEvent::SnapshotSent { .. }))
    );
    assert_eq!(n.text(0, "doc"), n.server_text("doc"));
}

/// A hub with 4 KiB frames whose document "big" holds 2,000 lines, so a
/// sync of it spans many frames.
fn big_document_net() -> Net<AllowAll> {
    let config = ServerConfig {
        limits: crdt_socket_sync::Limits {
            max_frame_len: 4096,
            ..Default::default()
        },
        ..ServerConfig::default()
    };
    let mut n = Net::new(config, AllowAll);
    n.record = false;
    for i in 0..2000 {
        n.server_reg
            .open("big")
            .unwrap()
            .edit(format!("line {i}\n").as_bytes());
    }
    n
}

#[test]
fn large_initial_sync_is_chunked_within_frame_limits() {
    let mut n = big_document_net();
    n.add_client(client_config("a"));
    n.open(0, "big");
    n.connect(0);
    assert_eq!(n.text(0, "big"), n.server_text("big"));
    assert!(
        n.hub
            .session(n.clients[0].conn.unwrap())
            .unwrap()
            .stats()
            .frames_out
            > 5
    );
}

#[test]
fn clients_joining_together_share_one_sync_payload() {
    let mut n = big_document_net();
    // Four fresh clients open the document in the same instant: one
    // payload is computed and cached, the others reuse it.
    for p in ["a", "b", "c", "d"] {
        let i = n.add_client(client_config(p));
        n.open(i, "big");
    }
    for i in 0..4 {
        let c = &mut n.clients[i];
        c.conn = Some(n.hub.accept(n.now));
        c.session.connect(n.now);
    }
    n.run();
    let server = n.server_text("big");
    for i in 0..4 {
        assert_eq!(n.text(i, "big"), server);
    }
    // What one joiner needs: everything, from the empty version.
    let one = {
        use crdt_socket_sync::document::Document;
        n.server_reg
            .get("big")
            .unwrap()
            .delta_since(&[])
            .unwrap()
            .len()
    };
    assert!(one > 4096, "the sync spans many frames");
    assert_eq!(
        n.hub.transfer_cache_bytes(),
        one,
        "one payload cached for all four"
    );
}

#[test]
fn offline_edits_reach_the_server_after_reconnect() {
    let mut n = net();
    n.add_client(client_config("a"));
    n.add_client(client_config("b"));
    for i in 0..2 {
        n.open(i, "doc");
        n.connect(i);
    }
    n.cut(0);
    assert_eq!(n.clients[0].session.status(), Status::Reconnecting);
    n.edit(0, "doc", "offline1 ");
    n.edit(0, "doc", "offline2");
    assert_eq!(n.clients[0].session.unacknowledged("doc"), 2);
    n.edit(1, "doc", "meanwhile ");
    n.connect(0);
    assert_eq!(n.clients[0].session.unacknowledged("doc"), 0);
    assert_eq!(n.text(0, "doc"), n.text(1, "doc"));
    assert_eq!(n.text(0, "doc"), n.server_text("doc"));
    assert_eq!(n.server_reg.get("doc").unwrap().op_count(), 3);
}

#[test]
fn several_documents_over_one_connection_converge() {
    let mut n = net();
    for p in ["a", "b", "c"] {
        let i = n.add_client(client_config(p));
        for d in ["d1", "d2", "d3"] {
            n.open(i, d);
        }
        n.connect(i);
    }
    for round in 0..5 {
        for i in 0..3 {
            for d in ["d1", "d2", "d3"] {
                let c = &mut n.clients[i];
                c.reg
                    .open(d)
                    .unwrap()
                    .edit(format!("{i}{d}{round};").as_bytes());
                c.session.flush_local(&mut c.reg, d, n.now).unwrap();
            }
        }
        n.run();
    }
    for d in ["d1", "d2", "d3"] {
        let server = n.server_text(d);
        assert_eq!(n.server_reg.get(d).unwrap().op_count(), 15);
        for i in 0..3 {
            assert_eq!(n.text(i, d), server);
        }
    }
}

#[test]
fn ping_measures_rtt_and_silence_is_a_dead_connection() {
    let mut n = net();
    n.add_client(ClientConfig {
        ping_interval: Some(Duration::from_secs(1)),
        dead_after: Duration::from_secs(3),
        ..client_config("a")
    });
    n.connect(0);
    n.take_transcript();
    n.advance(Duration::from_secs(1));
    assert_eq!(n.take_transcript(), ["c0> Ping", "s>0 Pong"]);
    assert!(n.clients[0].session.stats().rtt.is_some());
    // The server stops answering: stall the client's reader.
    n.clients[0].stalled = true;
    for _ in 0..3 {
        n.advance(Duration::from_secs(1));
    }
    assert_eq!(
        n.take_transcript(),
        // The pongs stay queued in the hub: the client reads nothing.
        ["c0> Ping", "c0> Ping", "c0> Close DeadConnection"]
    );
    assert_eq!(n.clients[0].session.status(), Status::Reconnecting);
    let ev = n.take_events(0);
    assert!(ev.iter().any(|e| matches!(
        e,
        ClientEvent::Closed {
            cause: CloseCause::Local(CloseReason::DeadConnection)
        }
    )));
}

#[test]
fn handshake_and_idle_deadlines_close_sessions() {
    let mut n = Net::new(
        ServerConfig {
            idle_timeout: Duration::from_secs(5),
            ..ServerConfig::default()
        },
        AllowAll,
    );
    // A transport that never says Hello.
    let silent = n.hub.accept(n.now);
    n.add_client(ClientConfig {
        ping_interval: Some(Duration::from_secs(60)),
        dead_after: Duration::from_secs(600),
        ..client_config("a")
    });
    n.connect(0);
    n.take_server_events();
    n.advance(Duration::from_secs(5));
    let ev = n.take_server_events();
    assert!(ev.iter().any(|e| matches!(e, ServerEvent::ClientDisconnected { conn, cause: CloseCause::Local(CloseReason::HandshakeTimeout) } if *conn == silent)));
    assert!(ev.iter().any(|e| matches!(
        e,
        ServerEvent::ClientDisconnected {
            cause: CloseCause::Local(CloseReason::IdleTimeout),
            ..
        }
    )));
}

#[test]
fn handle_timeout_early_does_nothing_and_poll_timeout_advances() {
    let mut n = net();
    n.add_client(client_config("a"));
    n.connect(0);
    n.take_transcript();
    let c = &mut n.clients[0].session;
    let (tx, _, next) = drain_client(c);
    assert!(tx.is_empty());
    let next = next.unwrap();
    assert!(next > n.now);
    c.handle_timeout(n.now);
    assert!(c.poll_transmit().is_none());
    assert_eq!(c.poll_timeout(), Some(next));
}

#[test]
fn refused_open_is_reported_and_other_documents_work() {
    let mut n = net();
    n.server_reg
        .set_policy(crdt_socket_sync::registry::OpenPolicy::MustExist);
    n.server_reg.open("exists").ok();
    n.server_reg.insert("exists", OpLog::new(0));
    n.add_client(client_config("a"));
    n.open(0, "missing");
    n.open(0, "exists");
    n.connect(0);
    let t = n.take_transcript();
    assert!(
        t.contains(&"s>0 OpenRefused missing DocumentNotFound".to_string()),
        "{t:?}"
    );
    assert_eq!(
        n.clients[0].session.doc_status("missing"),
        Some(DocStatus::Refused)
    );
    assert_eq!(
        n.clients[0].session.doc_status("exists"),
        Some(DocStatus::Synced)
    );
    assert!(n.take_events(0).iter().any(|e| matches!(
        e,
        ClientEvent::DocumentError {
            code: ErrorCode::DocumentNotFound,
            ..
        }
    )));
}

#[test]
fn client_outbox_is_bounded() {
    let mut n = net();
    n.add_client(ClientConfig {
        limits: crdt_socket_sync::Limits {
            max_outbox_updates: 3,
            ..Default::default()
        },
        ..client_config("a")
    });
    n.open(0, "doc");
    // Offline: updates accumulate in the outbox until the limit.
    for _ in 0..3 {
        n.edit(0, "doc", "x");
    }
    let c = &mut n.clients[0];
    c.reg.open("doc").unwrap().edit(b"y");
    assert!(matches!(
        c.session.flush_local(&mut c.reg, "doc", n.now),
        Err(CommandError::Backpressure { .. })
    ));
    // The edit was not taken from the document: it goes out with the sync.
    n.connect(0);
    assert_eq!(n.server_text("doc"), "xxxy");
}

#[test]
fn refresh_token_changes_access_without_reconnecting() {
    let auth = StaticTokens::default().with("r", "reader", Access::ReadOnly);
    let mut n = Net::new(ServerConfig::default(), auth);
    n.add_client(ClientConfig {
        token: b"r".to_vec(),
        ..client_config("a")
    });
    n.open(0, "doc");
    n.connect(0);
    assert_eq!(
        n.take_events(0)
            .iter()
            .filter_map(|e| match e {
                ClientEvent::DocumentOpened { access, .. } => Some(*access),
                _ => None,
            })
            .collect::<Vec<_>>(),
        [Access::ReadOnly]
    );
    // StaticTokens gives one access per identity; switch the rule and
    // present the new token.
    *n.hub.authorizer_mut() = StaticTokens::default().with("w", "reader", Access::ReadWrite);
    n.clients[0].session.refresh_token(b"w".to_vec());
    n.run();
    assert!(n.take_events(0).iter().any(|e| matches!(
        e,
        ClientEvent::DocumentOpened {
            access: Access::ReadWrite,
            ..
        }
    )));
    n.edit(0, "doc", "now writable");
    assert_eq!(n.server_text("doc"), "now writable");
}

#[test]
fn golden_reconnect_with_backoff_from_a_fixed_seed() {
    use crdt_socket_sync::client::Backoff;
    let mut n = net();
    n.add_client(ClientConfig {
        seed: 42,
        reconnect: Some(Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(2),
            max_attempts: Some(5),
            reset_after: Duration::from_secs(10),
        }),
        ..client_config("a")
    });
    n.open(0, "doc");
    n.connect(0);
    n.take_events(0);
    n.cut(0);
    // The application's dials keep failing: record each delay.
    let mut delays = Vec::new();
    let mut gave_up = false;
    for _ in 0..10 {
        let c = &mut n.clients[0].session;
        let Some(at) = c.poll_timeout() else { break };
        delays.push((at - n.now).as_millis());
        n.now = at;
        c.handle_timeout(at);
        let ev: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
        assert!(
            ev.iter().any(|e| matches!(e, ClientEvent::Dial { .. })),
            "{ev:?}"
        );
        c.dial_failed(n.now);
        if std::iter::from_fn(|| c.poll_event())
            .any(|e| matches!(e, ClientEvent::GaveUp { attempts: 5 }))
        {
            gave_up = true;
            break;
        }
    }
    // Exponential caps 200, 400, 800, 1600, 2000 ms with full jitter above
    // min, the first attempt included.
    assert_eq!(delays, [174, 147, 295, 616, 172]);
    assert!(gave_up);
    assert_eq!(n.clients[0].session.status(), Status::Disconnected);
    // An explicit connect still works after giving up.
    n.connect(0);
    assert_eq!(n.clients[0].session.status(), Status::Connected);
}

#[test]
fn disconnect_cancels_pending_reconnects() {
    let mut n = net();
    n.add_client(client_config("a"));
    n.connect(0);
    n.cut(0);
    assert!(n.clients[0].session.poll_timeout().is_some());
    n.clients[0].session.disconnect(n.now);
    assert_eq!(n.clients[0].session.status(), Status::Disconnected);
    assert_eq!(n.clients[0].session.poll_timeout(), None);
}

#[test]
fn chunked_sync_resumes_after_a_cut() {
    let mut n = net();
    n.record = false;
    n.add_client(ClientConfig {
        limits: crdt_socket_sync::Limits {
            max_frame_len: 4096,
            ..Default::default()
        },
        ..client_config("a")
    });
    for i in 0..4000 {
        n.server_reg
            .open("big")
            .unwrap()
            .edit(format!("line {i}\n").as_bytes());
    }
    let full = n.server_reg.get("big").unwrap().snapshot().len();
    n.connect(0);
    n.clients[0].stalled = true;
    n.open(0, "big");
    // Half the transfer arrives, then the connection is cut.
    let first = n.deliver(0, 10);
    assert!(first > 10 * 3000, "ten nearly full frames: {first}");
    assert_eq!(
        n.clients[0].session.doc_status("big"),
        Some(DocStatus::Syncing)
    );
    n.cut(0);
    n.clients[0].stalled = false;
    n.server_reg
        .open("big")
        .unwrap()
        .edit(b"changed meanwhile\n");
    n.take_server_events();
    n.connect(0);
    let resumed = n.take_server_events().into_iter().find_map(|e| match e {
        ServerEvent::TransferResumed { offset, .. } => Some(offset),
        _ => None,
    });
    assert!(resumed.is_some_and(|o| o > 30_000), "{resumed:?}");
    let conn = n.clients[0].conn.unwrap();
    let second = n.hub.session(conn).unwrap().stats().bytes_out;
    assert!(
        (first as u64 + second) < full as u64 + full as u64 / 4,
        "resumed, not restarted: {first} + {second} vs {full}"
    );
    assert_eq!(n.text(0, "big"), n.server_text("big"));
    assert!(n.text(0, "big").ends_with("changed meanwhile\n"));
}

#[test]
fn slow_reader_is_bounded_then_caught_up_with_one_coalesced_transfer() {
    let limit = 64 * 1024;
    let config = ServerConfig {
        limits: crdt_socket_sync::Limits {
            max_outbound_bytes: limit,
            ..Default::default()
        },
        ..ServerConfig::default()
    };
    let mut n = Net::new(config, AllowAll);
    n.record = false;
    for p in ["writer", "reader"] {
        let i = n.add_client(client_config(p));
        n.open(i, "doc");
        n.connect(i);
    }
    n.clients[1].stalled = true;
    let reader = n.clients[1].conn.unwrap();
    let mut peak = 0;
    for k in 0..10_000 {
        n.edit(0, "doc", &format!("update {k:05} "));
        let queued = n.hub.session(reader).unwrap().queued_bytes();
        peak = peak.max(queued);
        assert!(
            queued <= limit,
            "queue {queued} over the limit at update {k}"
        );
    }
    assert!(peak > limit / 4, "the reader did fall behind: {peak}");
    let ev = n.take_server_events();
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, ServerEvent::SubscriberLagging { .. }))
            .count(),
        1
    );
    // The reader reads again: it drains, gets one catch-up, and converges.
    n.clients[1].stalled = false;
    n.run();
    let ev = n.take_server_events();
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, ServerEvent::CatchUpQueued { .. }))
            .count(),
        1
    );
    let (reader, server) = (n.text(1, "doc"), n.server_text("doc"));
    assert!(
        reader == server,
        "reader {} bytes, server {}",
        reader.len(),
        server.len()
    );
    assert_eq!(n.server_reg.get("doc").unwrap().op_count(), 10_000);
    // Live updates flow individually again.
    n.edit(0, "doc", "after");
    assert!(n.text(1, "doc") == n.server_text("doc"));
}

#[test]
fn golden_out_of_sync_recovery() {
    let mut n = net();
    n.add_client(client_config("a"));
    n.add_client(client_config("b"));
    for i in 0..2 {
        n.open(i, "doc");
        n.connect(i);
    }
    n.take_transcript();
    // Client a has two local ops but only the second reaches the server.
    n.clients[0].reg.open("doc").unwrap().edit(b"1");
    n.clients[0].reg.open("doc").unwrap().edit(b"2");
    let mut second = vec![0xA5];
    second.extend_from_slice(&1u32.to_le_bytes());
    second.extend_from_slice(&2u32.to_le_bytes());
    second.extend_from_slice(&1u16.to_le_bytes());
    second.push(b'2');
    n.clients[0]
        .session
        .send_update("doc", second, n.now)
        .unwrap();
    n.run();
    assert_eq!(
        n.take_transcript(),
        [
            // The server holds the op pending and asks for what it lacks.
            "c0> Update #0 s1 12B",
            "s>0 SyncRequest #0",
            "s>0 Ack #0 1/0",
            "s>1 Broadcast #0 12B",
            // a answers with everything the server lacks; b, also missing
            // the dependency, asks for a catch-up (and, lacking nothing the
            // server lacks, sends no update back).
            "c0> Update #0 s2 23B",
            "c1> SyncRequest #0",
            "s>0 Ack #0 2/0",
            "s>1 Broadcast #0 23B",
            "s>1 SyncChunk #0 Delta 23B",
            "s>1 SyncDone #0",
            "c1> SyncDone #0",
        ]
    );
    assert_eq!(n.server_text("doc"), "12");
    assert_eq!(n.text(0, "doc"), "12");
    assert_eq!(n.text(1, "doc"), "12");
}

#[test]
fn golden_pruning_once_every_subscriber_confirmed() {
    let mut n = Net::new(
        ServerConfig {
            prune_interval: Some(Duration::from_secs(5)),
            ..ServerConfig::default()
        },
        AllowAll,
    );
    for p in ["a", "b"] {
        let i = n.add_client(ClientConfig {
            ping_interval: Some(Duration::from_secs(1)),
            ..client_config(p)
        });
        n.open(i, "doc");
        n.connect(i);
    }
    n.edit(0, "doc", "one ");
    n.edit(1, "doc", "two ");
    n.take_transcript();
    // A ping round trip later both clients report their versions...
    n.advance(Duration::from_secs(1));
    let t = n.take_transcript();
    assert_eq!(
        t.iter()
            .filter(|l| l.starts_with('c') && l.ends_with("VersionReport #0"))
            .count(),
        2,
        "{t:?}"
    );
    // ...and the next prune pass prunes to their common version.
    n.advance(Duration::from_secs(4));
    let pruned: Vec<_> = n
        .take_server_events()
        .into_iter()
        .filter(|e| matches!(e, ServerEvent::HistoryPruned { .. }))
        .collect();
    assert_eq!(pruned.len(), 1);
    // A late joiner is served from the snapshot; a client still at or above
    // the pruned version would get a delta.
    let c = n.add_client(client_config("late"));
    n.open(c, "doc");
    n.connect(c);
    let t = n.take_transcript();
    assert!(
        t.iter().any(|l| l.contains("SyncChunk #0 Snapshot")),
        "{t:?}"
    );
    assert_eq!(n.text(c, "doc"), n.server_text("doc"));
    n.cut(0);
    n.connect(0);
    let t = n.take_transcript();
    assert!(
        t.iter().any(|l| l.contains("s>0 SyncChunk #0 Delta")),
        "{t:?}"
    );
}

#[test]
fn no_pruning_unless_configured() {
    let mut n = net();
    n.add_client(client_config("a"));
    n.open(0, "doc");
    n.connect(0);
    n.edit(0, "doc", "x");
    for _ in 0..10 {
        n.advance(Duration::from_secs(2));
    }
    assert!(
        !n.take_server_events()
            .iter()
            .any(|e| matches!(e, ServerEvent::HistoryPruned { .. }))
    );
}

#[test]
fn a_persisting_gap_is_re_requested_after_the_deadline_only() {
    let mut n = net();
    n.add_client(ClientConfig {
        ping_interval: Some(Duration::from_secs(60)),
        dead_after: Duration::from_secs(600),
        ..client_config("a")
    });
    n.open(0, "doc");
    n.connect(0);
    // Ops of an unknown client 9 whose first op never arrives anywhere.
    let orphan = |counter: u32| {
        let mut u = vec![0xA5];
        u.extend_from_slice(&9u32.to_le_bytes());
        u.extend_from_slice(&counter.to_le_bytes());
        u.extend_from_slice(&1u16.to_le_bytes());
        u.push(b'?');
        u
    };
    let out_of_sync = |n: &mut Net<AllowAll>, counter| {
        n.take_transcript();
        n.clients[0]
            .session
            .send_update("doc", orphan(counter), n.now)
            .unwrap();
        n.run();
        n.take_transcript()
            .iter()
            .filter(|l| l.starts_with("s>") && l.contains("SyncRequest"))
            .count()
    };
    assert_eq!(out_of_sync(&mut n, 2), 1);
    assert_eq!(
        out_of_sync(&mut n, 3),
        0,
        "no storm while the request is fresh"
    );
    n.advance(Duration::from_secs(5));
    assert_eq!(
        out_of_sync(&mut n, 4),
        1,
        "re-requested once the gap persisted"
    );
    assert_eq!(n.server_reg.get("doc").unwrap().pending_bytes(), 33);
}

#[test]
fn three_clients_converge_after_one_is_cut_mid_sync_of_a_large_document_and_edits_offline() {
    let mut n = net();
    n.record = false;
    let payload = "x".repeat(30);
    for i in 0..100_000 {
        n.server_reg
            .open("big")
            .unwrap()
            .edit(format!("{payload}{i:06}").as_bytes());
    }
    let size = n.server_reg.get("big").unwrap().snapshot().len();
    assert!(size > 4_000_000, "multi-megabyte document: {size}");
    for p in ["a", "b"] {
        let i = n.add_client(client_config(p));
        n.open(i, "big");
        n.connect(i);
    }
    let c = n.add_client(ClientConfig {
        limits: crdt_socket_sync::Limits {
            max_frame_len: 64 * 1024,
            ..Default::default()
        },
        ..client_config("c")
    });
    n.connect(c);
    n.clients[c].stalled = true;
    n.open(c, "big");
    let got = n.deliver(c, 20);
    assert!(got > 1_000_000 && got < size, "mid-sync: {got} of {size}");
    // Everyone edits; c's edits wait in its outbox.
    n.edit(0, "big", "a1;");
    n.edit(1, "big", "b1;");
    n.edit(c, "big", "c1;");
    n.cut(c);
    n.clients[c].stalled = false;
    n.edit(c, "big", "c2;");
    n.edit(0, "big", "a2;");
    assert!(n.clients[c].session.unacknowledged("big") >= 2);
    n.connect(c);
    n.edit(1, "big", "b2;");
    let server = n.server_text("big");
    for i in 0..3 {
        let text = n.text(i, "big");
        assert!(
            text == server,
            "client {i}: {} vs {} bytes",
            text.len(),
            server.len()
        );
        assert_eq!(n.clients[i].session.unacknowledged("big"), 0, "client {i}");
    }
    assert_eq!(n.server_reg.get("big").unwrap().op_count(), 100_006);
    assert!(
        n.take_server_events()
            .iter()
            .any(|e| matches!(e, ServerEvent::TransferResumed { .. }))
    );
}

#[test]
fn deferred_input_acknowledges_on_flush_with_one_commit() {
    use crdt_socket_sync::wire::{Bytes, DocId, Encoder, Message};
    /// Counts commits and claims durability.
    struct Durable(Reg, usize);
    impl Registry for Durable {
        type Doc = OpLog;
        fn open(
            &mut self,
            name: &str,
        ) -> Result<&mut OpLog, crdt_socket_sync::registry::RegistryError> {
            self.0.open(name)
        }
        fn get(&mut self, name: &str) -> Option<&mut OpLog> {
            self.0.get(name)
        }
        fn list(&self) -> Vec<String> {
            self.0.list()
        }
        fn unload(&mut self, name: &str) -> bool {
            self.0.unload(name)
        }
        fn remove(&mut self, name: &str) -> bool {
            self.0.remove(name)
        }
        fn flush(&mut self) -> Result<bool, crdt_socket_sync::registry::RegistryError> {
            self.1 += 1;
            Ok(true)
        }
    }
    let mut n = net();
    n.add_client(client_config("a"));
    n.open(0, "doc");
    n.connect(0);
    let conn = n.clients[0].conn.unwrap();
    let mut reg = Durable(std::mem::replace(&mut n.server_reg, server_registry()), 0);
    let mut encoder = Encoder::new(&Default::default());
    for seq in 2..12u64 {
        let mut op = vec![0xA5];
        op.extend_from_slice(&1u32.to_le_bytes());
        op.extend_from_slice(&((seq - 1) as u32).to_le_bytes());
        op.extend_from_slice(&1u16.to_le_bytes());
        op.push(b'x');
        let mut frame = Vec::new();
        encoder
            .encode(
                &[Message::Update {
                    doc: DocId(0),
                    seq,
                    data: Bytes(op),
                }],
                &mut frame,
            )
            .unwrap();
        n.hub.handle_input_deferred(conn, n.now, &frame, &mut reg);
    }
    assert!(
        n.hub.poll_transmit_for(conn).is_none(),
        "no ack before the flush"
    );
    n.hub.flush(&mut reg);
    assert_eq!(reg.1, 1, "one commit for ten inputs");
    let acks: Vec<String> = std::iter::from_fn(|| n.hub.poll_transmit_for(conn))
        .flat_map(|f| frame_text(&f))
        .collect();
    assert_eq!(acks, ["Ack #0 11/11"]);
    assert_eq!(reg.0.get("doc").unwrap().op_count(), 10);
}

#[test]
fn only_touched_connections_are_reported() {
    let mut n = net();
    for p in ["a", "b", "c"] {
        let i = n.add_client(client_config(p));
        n.open(i, if p == "c" { "other" } else { "doc" });
        n.connect(i);
    }
    let mut touched = Vec::new();
    n.hub.take_touched(&mut touched);
    touched.clear();
    n.hub.take_touched(&mut touched);
    assert!(touched.is_empty(), "nothing changed since the last call");
    // An edit touches the sender (ack) and the other subscriber (broadcast),
    // not the idle client on another document.
    let c = &mut n.clients[0];
    c.reg.open("doc").unwrap().edit(b"x");
    c.session.flush_local(&mut c.reg, "doc", n.now).unwrap();
    let frame = c.session.poll_transmit().unwrap();
    let conn = c.conn.unwrap();
    n.hub.handle_input(conn, n.now, &frame, &mut n.server_reg);
    n.hub.take_touched(&mut touched);
    touched.sort();
    let expected = vec![n.clients[0].conn.unwrap(), n.clients[1].conn.unwrap()];
    assert_eq!(touched, expected);
}
