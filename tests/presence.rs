//! Presence (awareness) and application messages.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use crdt_socket_sync::Limits;
use crdt_socket_sync::client::{AppTarget, ClientConfig, ClientEvent, CommandError};
use crdt_socket_sync::rng::Rng;
use crdt_socket_sync::server::{AllowAll, AppVerdict, ServerConfig, ServerEvent, StaticTokens};
use crdt_socket_sync::wire::{Access, Bytes, DocId, Encoder, ErrorCode, Message, SessionId};

/// An application message as a client received it: kind, sender, document
/// and payload.
type Received = (u32, Option<SessionId>, Option<String>, Vec<u8>);

fn net_with(n_clients: usize) -> Net<AllowAll> {
    let mut n = Net::new(ServerConfig::default(), AllowAll);
    n.record = false;
    for i in 0..n_clients {
        n.add_client(client_config(&format!("p{i}")));
        n.open(i, "doc");
        n.connect(i);
    }
    n
}

fn set(n: &mut Net<AllowAll>, i: usize, state: Option<&str>) {
    let c = &mut n.clients[i];
    c.session
        .set_presence("doc", state.map(|s| s.as_bytes().to_vec()), n.now)
        .unwrap();
    n.run();
}

fn view(n: &Net<AllowAll>, i: usize) -> BTreeMap<String, String> {
    n.clients[i]
        .session
        .presence("doc")
        .into_iter()
        .map(|(_, p)| (p.identity, String::from_utf8(p.state.0).unwrap()))
        .collect()
}

fn presence_events(n: &mut Net<AllowAll>, i: usize) -> Vec<(String, Option<String>)> {
    n.take_events(i)
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::PresenceChanged {
                identity, state, ..
            } => Some((identity, state.map(|s| String::from_utf8(s.0).unwrap()))),
            _ => None,
        })
        .collect()
}

#[test]
fn join_update_and_leave_deltas() {
    let mut n = net_with(2);
    n.take_events(1);
    set(&mut n, 0, Some("cursor 1"));
    assert_eq!(
        presence_events(&mut n, 1),
        [("p0".into(), Some("cursor 1".into()))]
    );
    // Throttled: a burst inside the throttle window sends only the last state.
    set(&mut n, 0, Some("cursor 2"));
    set(&mut n, 0, Some("cursor 3"));
    assert!(presence_events(&mut n, 1).is_empty());
    n.advance(Duration::from_millis(50));
    assert_eq!(
        presence_events(&mut n, 1),
        [("p0".into(), Some("cursor 3".into()))]
    );
    // A joiner gets everyone's state at once.
    let j = n.add_client(client_config("joiner"));
    n.open(j, "doc");
    n.connect(j);
    assert_eq!(
        view(&n, j),
        BTreeMap::from([("p0".into(), "cursor 3".into())])
    );
    // Clearing is a leave for the others.
    n.advance(Duration::from_millis(50));
    set(&mut n, 0, None);
    assert_eq!(presence_events(&mut n, 1), [("p0".into(), None)]);
    assert!(view(&n, j).is_empty());
    // Disconnecting removes the state too.
    set(&mut n, 1, Some("here"));
    n.take_events(j);
    n.cut(1);
    assert_eq!(presence_events(&mut n, j), [("p1".into(), None)]);
}

#[test]
fn a_silent_peer_expires() {
    let mut n = Net::new(
        ServerConfig {
            presence_ttl: Duration::from_secs(5),
            ..ServerConfig::default()
        },
        AllowAll,
    );
    n.record = false;
    n.add_client(ClientConfig {
        presence_renew: Duration::from_secs(3600),
        ..client_config("silent")
    });
    n.add_client(client_config("watcher"));
    for i in 0..2 {
        n.open(i, "doc");
        n.connect(i);
    }
    set_any(&mut n, 0, "I am here");
    assert_eq!(n.clients[1].session.presence("doc").len(), 1);
    for _ in 0..4 {
        n.advance(Duration::from_secs(1));
    }
    assert_eq!(n.clients[1].session.presence("doc").len(), 1);
    n.advance(Duration::from_secs(1));
    assert!(n.clients[1].session.presence("doc").is_empty());
    // A client that renews in time never expires.
    n.clients[1]
        .session
        .set_presence("doc", Some(b"renewing".to_vec()), n.now)
        .unwrap();
    n.run();
    for _ in 0..30 {
        n.advance(Duration::from_secs(1));
    }
    assert_eq!(n.hub.presence("doc").len(), 1);
}

fn set_any<A: crdt_socket_sync::server::Authorizer>(n: &mut Net<A>, i: usize, state: &str) {
    let c = &mut n.clients[i];
    c.session
        .set_presence("doc", Some(state.as_bytes().to_vec()), n.now)
        .unwrap();
    n.run();
}

#[test]
fn state_is_restored_after_reconnect() {
    let mut n = net_with(2);
    set(&mut n, 0, Some("my cursor"));
    n.cut(0);
    assert!(view(&n, 1).is_empty());
    n.connect(0);
    assert_eq!(
        view(&n, 1),
        BTreeMap::from([("p0".into(), "my cursor".into())])
    );
    // And the reconnected client sees the others again.
    set(&mut n, 1, Some("other"));
    n.cut(0);
    n.connect(0);
    assert_eq!(view(&n, 0), BTreeMap::from([("p1".into(), "other".into())]));
}

#[test]
fn identity_cannot_be_spoofed() {
    let auth = StaticTokens::default()
        .with("t-mallory", "mallory", Access::ReadWrite)
        .with("t-bob", "bob", Access::ReadWrite);
    let mut n = Net::new(ServerConfig::default(), auth);
    n.record = false;
    n.add_client(ClientConfig {
        token: b"t-mallory".to_vec(),
        ..client_config("alice") // claims to be alice
    });
    n.add_client(ClientConfig {
        token: b"t-bob".to_vec(),
        ..client_config("bob")
    });
    for i in 0..2 {
        n.open(i, "doc");
        n.connect(i);
    }
    set_any(&mut n, 0, "{\"user\":\"alice\"}");
    let seen = n.clients[1].session.presence("doc");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].1.identity, "mallory");
}

#[test]
fn size_and_rate_limits_are_typed_errors() {
    let mut n = net_with(2);
    let big = vec![0u8; Limits::default().max_presence_len + 1];
    let c = &mut n.clients[0];
    assert!(matches!(
        c.session.set_presence("doc", Some(big.clone()), n.now),
        Err(CommandError::LimitExceeded(_))
    ));
    // A client that bypasses its own checks gets typed errors from the server.
    let conn = n.clients[0].conn.unwrap();
    let msgs: Vec<Message> = std::iter::once(Message::AwarenessSet {
        doc: DocId(0),
        clock: 1,
        state: Some(Bytes(big)),
    })
    .chain((2..60).map(|clock| Message::AwarenessSet {
        doc: DocId(0),
        clock,
        state: Some(Bytes(vec![1])),
    }))
    .collect();
    let mut frame = Vec::new();
    Encoder::new(&Limits::default())
        .encode(&msgs, &mut frame)
        .unwrap();
    n.hub.handle_input(conn, n.now, &frame, &mut n.server_reg);
    n.hub.commit(&mut n.server_reg);
    let errors: Vec<String> = n
        .take_server_events()
        .into_iter()
        .filter_map(|e| match e {
            ServerEvent::DocumentError {
                code: ErrorCode::LimitExceeded,
                message,
                ..
            } => Some(message),
            _ => None,
        })
        .collect();
    assert!(errors[0].contains("exceeds the limit"), "{errors:?}");
    // 59 updates against a burst of 30 per second: the oversized one and 29
    // more take the tokens, the other 29 are refused (the errors of one
    // input past the first 8 are counted in one more).
    assert_eq!(refused(&errors), 29, "{errors:?}");
    n.run();
    assert_eq!(n.clients[1].session.presence("doc").len(), 1);
}

#[test]
fn app_messages_to_one_to_all_to_the_server_and_dropped_by_the_hook() {
    let mut n = net_with(3);
    n.hub.set_app_hook(Box::new(|m| match m.kind {
        13 => AppVerdict::Drop,
        1 => AppVerdict::Replace(m.data.to_ascii_uppercase()),
        _ => AppVerdict::Forward,
    }));
    for i in 0..3 {
        n.take_events(i);
    }
    let app = |n: &mut Net<AllowAll>, i: usize| -> Vec<Received> {
        n.take_events(i)
            .into_iter()
            .filter_map(|e| match e {
                ClientEvent::AppMessage {
                    kind,
                    from,
                    doc,
                    data,
                } => Some((kind, from, doc.map(|d| d.to_string()), data)),
                _ => None,
            })
            .collect()
    };
    let s0 = n.clients[0].session.session_id();
    let s2 = n.clients[2].session.session_id().unwrap();
    // To one session, transformed by the hook.
    n.clients[0]
        .session
        .send_app(AppTarget::Session(s2), 1, b"psst".to_vec())
        .unwrap();
    n.run();
    assert_eq!(app(&mut n, 2), [(1, s0, None, b"PSST".to_vec())]);
    assert!(app(&mut n, 1).is_empty());
    // To every subscriber of the document.
    n.clients[0]
        .session
        .send_app(AppTarget::Document("doc".into()), 7, b"all".to_vec())
        .unwrap();
    n.run();
    for i in [1, 2] {
        assert_eq!(
            app(&mut n, i),
            [(7, s0, Some("doc".into()), b"all".to_vec())]
        );
    }
    assert!(app(&mut n, 0).is_empty(), "not echoed to the sender");
    // Dropped by the hook.
    n.clients[0]
        .session
        .send_app(AppTarget::Document("doc".into()), 13, b"spam".to_vec())
        .unwrap();
    n.run();
    assert!(app(&mut n, 1).is_empty());
    assert!(
        n.take_server_events()
            .iter()
            .any(|e| matches!(e, ServerEvent::AppMessageDropped { kind: 13, .. }))
    );
    // To the server.
    n.clients[1]
        .session
        .send_app(AppTarget::Server, 9, b"hello server".to_vec())
        .unwrap();
    n.run();
    assert!(n.take_server_events().iter().any(
        |e| matches!(e, ServerEvent::AppMessage { kind: 9, data, .. } if data == b"hello server")
    ));
    // From the server to everyone.
    n.hub.broadcast_app("doc", 5, b"notice".to_vec());
    n.run();
    assert_eq!(
        app(&mut n, 0),
        [(5, None, Some("doc".into()), b"notice".to_vec())]
    );
    // To a session that is gone: a typed error.
    n.cut(2);
    n.clients[0]
        .session
        .send_app(AppTarget::Session(s2), 2, vec![])
        .unwrap();
    n.run();
    assert!(n.take_events(0).iter().any(|e| matches!(
        e,
        ClientEvent::DocumentError {
            code: ErrorCode::UnknownSession,
            ..
        }
    )));
}

#[test]
fn app_message_size_and_rate_limits() {
    let mut n = net_with(2);
    let too_big = vec![0; Limits::default().max_app_message_len + 1];
    assert!(matches!(
        n.clients[0].session.send_app(AppTarget::Server, 1, too_big),
        Err(CommandError::LimitExceeded(_))
    ));
    for _ in 0..150 {
        n.clients[0]
            .session
            .send_app(AppTarget::Server, 1, vec![1])
            .unwrap();
    }
    n.run();
    let ev = n.take_server_events();
    let delivered = ev
        .iter()
        .filter(|e| matches!(e, ServerEvent::AppMessage { .. }))
        .count();
    let limited = ev
        .iter()
        .filter_map(|e| match e {
            ServerEvent::DocumentError {
                code: ErrorCode::LimitExceeded,
                message,
                ..
            } => Some(message.clone()),
            _ => None,
        })
        .collect::<Vec<_>>();
    assert_eq!((delivered, refused(&limited)), (100, 50), "{limited:?}");
}

/// Messages refused by a rate limit, from the error messages: one each, or
/// counted in the report of an input's unreported errors.
fn refused(errors: &[String]) -> usize {
    errors
        .iter()
        .map(|m| {
            if m.contains("per second") {
                1
            } else if m.contains("were not reported") {
                m.split(' ').next().unwrap().parse().unwrap()
            } else {
                0
            }
        })
        .sum()
}

/// 50 clients move cursors while connections are cut and healed; at
/// quiescence every client's view equals the latest states of the other
/// connected sessions.
#[test]
fn sim_fifty_clients_moving_cursors_through_cuts() {
    let mut n = net_with(50);
    let mut rng = Rng::new(2026);
    let mut latest: Vec<Option<String>> = vec![None; 50];
    for step in 0..2_000 {
        let i = rng.below_or_equal(49) as usize;
        match rng.below_or_equal(9) {
            0 => n.cut(i),
            1 if n.clients[i].conn.is_none() => n.connect(i),
            2 => n.advance(Duration::from_millis(rng.below_or_equal(200))),
            _ => {
                let s = format!("{i}@{step}");
                n.clients[i]
                    .session
                    .set_presence("doc", Some(s.clone().into_bytes()), n.now)
                    .unwrap();
                latest[i] = Some(s);
                n.run();
            }
        }
    }
    // Heal: reconnect everyone cut, let throttles and renewals run.
    for i in 0..50 {
        if n.clients[i].conn.is_none() {
            n.connect(i);
        }
    }
    for _ in 0..5 {
        n.advance(Duration::from_millis(100));
    }
    let sessions: Vec<Option<SessionId>> =
        n.clients.iter().map(|c| c.session.session_id()).collect();
    for i in 0..50 {
        let seen: BTreeMap<SessionId, String> = n.clients[i]
            .session
            .presence("doc")
            .into_iter()
            .map(|(s, p)| (s, String::from_utf8(p.state.0).unwrap()))
            .collect();
        let expected: BTreeMap<SessionId, String> = (0..50)
            .filter(|j| *j != i)
            .filter_map(|j| Some((sessions[j]?, latest[j].clone()?)))
            .collect();
        assert_eq!(seen, expected, "client {i}");
    }
    assert_eq!(n.hub.presence("doc").len(), latest.iter().flatten().count());
}
