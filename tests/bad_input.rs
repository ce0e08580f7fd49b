//! Every class of bad input gets a typed error and an event, never a panic,
//! and the hub's other sessions keep working.

mod common;

use common::*;
use crdt_socket_sync::client::ClientEvent;
use crdt_socket_sync::document::Document;
use crdt_socket_sync::registry::{OpenPolicy, Registry};
use crdt_socket_sync::server::{AllowAll, ConnId, ServerConfig, ServerEvent, StaticTokens};
use crdt_socket_sync::wire::{
    Access, Bytes, CloseReason, DocId, ErrorCode, FrameError, Message, PeerLimits,
};
use crdt_socket_sync::{CloseCause, InboundError, Limits};

/// Two healthy clients editing one document, plus a raw connection for the
/// bad input.
fn setup<A: crdt_socket_sync::server::Authorizer>(auth: A) -> (Net<A>, ConnId) {
    with_raw_connection(ServerConfig::default(), auth)
}

/// Sends `bytes` on the raw connection; returns what the hub sent back to it.
fn send_raw<A: crdt_socket_sync::server::Authorizer>(
    n: &mut Net<A>,
    raw: ConnId,
    bytes: &[u8],
) -> Vec<String> {
    n.hub.handle_input(raw, n.now, bytes, &mut n.server_reg);
    n.hub.commit(&mut n.server_reg);
    let mut out = Vec::new();
    while let Some(f) = n.hub.poll_transmit_for(raw) {
        out.extend(frame_text(&f));
    }
    out
}

/// The two good clients still sync edits both ways.
fn others_still_work<A: crdt_socket_sync::server::Authorizer>(n: &mut Net<A>) {
    let before = n.server_text("doc");
    n.edit(0, "doc", "A");
    n.edit(1, "doc", "B");
    let after = n.server_text("doc");
    assert_eq!(after.len(), before.len() + 2);
    assert_eq!(n.text(0, "doc"), after);
    assert_eq!(n.text(1, "doc"), after);
}

fn disconnect_cause<A: crdt_socket_sync::server::Authorizer>(
    n: &mut Net<A>,
    raw: ConnId,
) -> CloseCause {
    let ev = n.take_server_events();
    let causes: Vec<_> = ev
        .into_iter()
        .filter_map(|e| match e {
            ServerEvent::ClientDisconnected { conn, cause } if conn == raw => Some(cause),
            _ => None,
        })
        .collect();
    assert_eq!(causes.len(), 1, "exactly one disconnect event");
    causes.into_iter().next().unwrap()
}

#[test]
fn garbage_bytes() {
    let (mut n, raw) = setup(AllowAll);
    let out = send_raw(&mut n, raw, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(out, ["Close ProtocolError"]);
    assert!(matches!(
        disconnect_cause(&mut n, raw),
        CloseCause::Inbound(InboundError::Frame(FrameError::BadVersion { .. }))
    ));
    // Further input on the closed connection is ignored.
    assert!(send_raw(&mut n, raw, b"more").is_empty());
    others_still_work(&mut n);
}

#[test]
fn bad_checksum() {
    let (mut n, raw) = setup(AllowAll);
    let mut f = frame(&[hello("x", b"")]);
    let last = f.len() - 1;
    f[last] ^= 0x40;
    assert_eq!(send_raw(&mut n, raw, &f), ["Close ProtocolError"]);
    assert!(matches!(
        disconnect_cause(&mut n, raw),
        CloseCause::Inbound(InboundError::Frame(FrameError::ChecksumMismatch { .. }))
    ));
    others_still_work(&mut n);
}

#[test]
fn oversize_frame() {
    let (mut n, raw) = setup(AllowAll);
    // A header declaring a 512 MiB body; only the header is sent.
    let f = [0x10, 0x80, 0x80, 0x80, 0x80, 0x02];
    assert_eq!(send_raw(&mut n, raw, &f), ["Close ProtocolError"]);
    assert!(matches!(
        disconnect_cause(&mut n, raw),
        CloseCause::Inbound(InboundError::Frame(FrameError::TooLarge { .. }))
    ));
    others_still_work(&mut n);
}

#[test]
fn message_before_handshake() {
    let (mut n, raw) = setup(AllowAll);
    let f = frame(&[Message::Open {
        name: "doc".into(),
        version: Bytes::default(),
        resume: None,
    }]);
    assert_eq!(send_raw(&mut n, raw, &f), ["Close ProtocolError"]);
    assert!(matches!(
        disconnect_cause(&mut n, raw),
        CloseCause::Protocol(_)
    ));
    // Nothing was opened for it.
    assert_eq!(n.hub.subscribers("doc"), 2);
    others_still_work(&mut n);
}

#[test]
fn server_only_message_from_a_client_is_fatal() {
    let (mut n, raw) = setup(AllowAll);
    send_raw(&mut n, raw, &frame(&[hello("x", b"")]));
    n.take_server_events();
    let f = frame(&[Message::Broadcast {
        doc: DocId(0),
        data: Bytes(vec![1]),
    }]);
    assert_eq!(send_raw(&mut n, raw, &f), ["Close ProtocolError"]);
    assert!(matches!(
        disconnect_cause(&mut n, raw),
        CloseCause::Protocol(_)
    ));
    others_still_work(&mut n);
}

#[test]
fn unknown_document_with_must_exist_policy() {
    let (mut n, raw) = setup(AllowAll);
    n.server_reg.set_policy(OpenPolicy::MustExist);
    send_raw(&mut n, raw, &frame(&[hello("x", b"")]));
    n.take_server_events();
    let f = frame(&[Message::Open {
        name: "nope".into(),
        version: Bytes::default(),
        resume: None,
    }]);
    assert_eq!(
        send_raw(&mut n, raw, &f),
        ["OpenRefused nope DocumentNotFound"]
    );
    let ev = n.take_server_events();
    assert!(matches!(
        &ev[..],
        [ServerEvent::DocumentError {
            code: ErrorCode::DocumentNotFound,
            ..
        }]
    ));
    // The session continues: it can still open an existing document.
    let f = frame(&[Message::Open {
        name: "doc".into(),
        version: Bytes::default(),
        resume: None,
    }]);
    let out = send_raw(&mut n, raw, &f);
    assert_eq!(out[0], "Opened doc#0 ReadWrite");
    others_still_work(&mut n);
}

#[test]
fn unknown_document_handle() {
    let (mut n, raw) = setup(AllowAll);
    send_raw(&mut n, raw, &frame(&[hello("x", b"")]));
    let f = frame(&[Message::Update {
        doc: DocId(42),
        seq: 1,
        data: Bytes(vec![0xA5]),
    }]);
    assert_eq!(
        send_raw(&mut n, raw, &f),
        ["Error Some(42) None UnknownDocument"]
    );
    others_still_work(&mut n);
}

#[test]
fn write_to_read_only_document() {
    let auth = StaticTokens::default()
        .with("good1", "good1", Access::ReadWrite)
        .with("good2", "good2", Access::ReadWrite)
        .with("ro", "reader", Access::ReadOnly);
    let (mut n, raw) = setup(auth);
    send_raw(&mut n, raw, &frame(&[hello("x", b"ro")]));
    let open = frame(&[Message::Open {
        name: "doc".into(),
        version: Bytes::default(),
        resume: None,
    }]);
    send_raw(&mut n, raw, &open);
    n.take_server_events();
    let before = n.server_text("doc");
    let mut update = vec![0xA5];
    update.extend_from_slice(&9u32.to_le_bytes());
    update.extend_from_slice(&1u32.to_le_bytes());
    update.extend_from_slice(&1u16.to_le_bytes());
    update.push(b'!');
    let f = frame(&[Message::Update {
        doc: DocId(0),
        seq: 1,
        data: Bytes(update),
    }]);
    assert_eq!(
        send_raw(&mut n, raw, &f),
        ["Error Some(0) Some(1) ReadOnly"]
    );
    assert_eq!(n.server_text("doc"), before);
    assert!(n.take_server_events().iter().any(|e| matches!(
        e,
        ServerEvent::DocumentError {
            code: ErrorCode::ReadOnly,
            ..
        }
    )));
    others_still_work(&mut n);
}

#[test]
fn invalid_crdt_payload() {
    let (mut n, _raw) = setup(AllowAll);
    n.record = true;
    let c = &mut n.clients[0];
    let seq = c
        .session
        .send_update("doc", b"not an update".to_vec(), n.now)
        .unwrap();
    n.run();
    let t = n.take_transcript();
    assert!(
        t.contains(&format!("s>0 Error Some(0) Some({seq}) InvalidUpdate")),
        "{t:?}"
    );
    // No fan-out of the bad bytes, and the sender drops it from its outbox.
    assert!(!t.iter().any(|l| l.contains("Broadcast")));
    assert_eq!(n.clients[0].session.unacknowledged("doc"), 0);
    assert!(n.take_events(0).iter().any(|e| matches!(
        e,
        ClientEvent::DocumentError {
            code: ErrorCode::InvalidUpdate,
            ..
        }
    )));
    assert!(n.take_server_events().iter().any(|e| matches!(
        e,
        ServerEvent::DocumentError {
            code: ErrorCode::InvalidUpdate,
            ..
        }
    )));
    n.record = false;
    others_still_work(&mut n);
}

#[test]
fn unsupported_version() {
    let (mut n, raw) = setup(AllowAll);
    let f = frame(&[Message::Hello {
        versions: vec![0, 7],
        peer: "future".into(),
        token: Bytes::default(),
        compression: vec![],
        limits: PeerLimits {
            max_frame_len: 1 << 20,
            max_decompressed_len: 1 << 20,
        },
    }]);
    assert_eq!(
        send_raw(&mut n, raw, &f),
        ["Reject UnsupportedVersion", "Close Rejected"]
    );
    assert!(matches!(
        disconnect_cause(&mut n, raw),
        CloseCause::Rejected { .. }
    ));
    others_still_work(&mut n);
}

#[test]
fn client_survives_garbage_from_the_server() {
    let mut n = Net::new(ServerConfig::default(), AllowAll);
    n.add_client(client_config("a"));
    n.connect(0);
    n.take_events(0);
    let c = &mut n.clients[0];
    c.session.handle_input(n.now, &[0xff; 40], &mut c.reg);
    let out = c.session.poll_transmit().map(|f| frame_text(&f));
    assert_eq!(out, Some(vec!["Close ProtocolError".to_string()]));
    let ev = n.take_events(0);
    let ev: Vec<_> = ev
        .into_iter()
        .chain(std::iter::from_fn(|| n.clients[0].session.poll_event()))
        .collect();
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(
                e,
                ClientEvent::Closed {
                    cause: CloseCause::Inbound(_)
                }
            ))
            .count(),
        1
    );
    let _ = CloseReason::ProtocolError;
}

#[test]
fn hub_and_client_never_panic_on_random_bytes() {
    // A cheap deterministic sweep; the fuzz targets go much further.
    let mut rng = crdt_socket_sync::rng::Rng::new(1);
    for round in 0..500 {
        let (mut n, raw) = if round % 2 == 0 {
            setup(AllowAll)
        } else {
            let (mut n, raw) = setup(AllowAll);
            send_raw(&mut n, raw, &frame(&[hello("x", b"")]));
            (n, raw)
        };
        let len = rng.below_or_equal(64) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if round % 3 == 0 && !bytes.is_empty() {
            bytes[0] = 0x10; // a valid version byte, to reach deeper checks
        }
        send_raw(&mut n, raw, &bytes);
        let c = &mut n.clients[0];
        c.session.handle_input(n.now, &bytes, &mut c.reg);
        while c.session.poll_transmit().is_some() {}
    }
}

#[test]
fn updates_waiting_for_missing_dependencies_are_bounded() {
    let config = ServerConfig {
        limits: Limits {
            max_pending_bytes: 1000,
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    let (mut n, raw) = with_raw_connection(config, AllowAll);
    send_raw(&mut n, raw, &frame(&[hello("x", b"")]));
    send_raw(
        &mut n,
        raw,
        &frame(&[Message::Open {
            name: "doc".into(),
            version: Bytes::default(),
            resume: None,
        }]),
    );
    n.take_server_events();
    // Ops 2.. of an unknown client 77 whose op 1 never comes.
    let mut sent = 0;
    for counter in 2..200u32 {
        let mut op = vec![0xA5];
        op.extend_from_slice(&77u32.to_le_bytes());
        op.extend_from_slice(&counter.to_le_bytes());
        op.extend_from_slice(&20u16.to_le_bytes());
        op.extend_from_slice(&[b'z'; 20]);
        let out = send_raw(
            &mut n,
            raw,
            &frame(&[Message::Update {
                doc: DocId(0),
                seq: u64::from(counter),
                data: Bytes(op),
            }]),
        );
        sent += 1;
        if out.iter().any(|l| l == "Close LimitExceeded") {
            break;
        }
    }
    assert!(
        n.hub.is_closed(raw),
        "the session was closed after {sent} updates"
    );
    let held = n.server_reg.get("doc").unwrap().pending_bytes();
    assert!(held <= 1000 + 30, "pending stays bounded: {held}");
    assert!(matches!(
        n.take_server_events().iter().find_map(|e| match e {
            ServerEvent::ClientDisconnected { conn, cause } if *conn == raw => Some(cause.clone()),
            _ => None,
        }),
        Some(CloseCause::Local(CloseReason::LimitExceeded))
    ));
    others_still_work(&mut n);
}
