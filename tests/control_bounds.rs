//! Control traffic is bounded like data, application messages reach only
//! sessions that share a document, and a token refresh takes effect before
//! the next message (issue 16, items 3, 10 and 11).
//!
//! Each test drives a hub by hand with raw connections and takes the
//! attacker's side: what one peer's input cost every other session (queued
//! bytes), not only whether it was refused.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::{Reg, frame, hello, read_hub_output, server_registry};
use crdt_socket_sync::registry::Registry as _;
use crdt_socket_sync::server::{
    AllowAll, Authorizer, ConnId, Hub, Identity, ServerConfig, ServerEvent, StaticTokens,
};
use crdt_socket_sync::wire::{
    Access, Bytes, CloseReason, DocId, ErrorCode, Message, RejectCode, Route, SessionId,
};
use crdt_socket_sync::{CloseCause, Limits};

/// A hub driven by hand: inputs are frames of messages, outputs are read
/// per connection only when a test says so (a peer that never reads).
struct Raw<A> {
    hub: Hub<A>,
    reg: Reg,
    now: Instant,
    events: Vec<ServerEvent>,
}

impl<A: Authorizer> Raw<A> {
    fn new(limits: Limits, auth: A) -> Self {
        let config = ServerConfig {
            limits,
            ..ServerConfig::default()
        };
        Raw {
            hub: Hub::new(config, auth),
            reg: server_registry(),
            now: Instant::now(),
            events: Vec::new(),
        }
    }

    /// A connection through its handshake with `token`, everything it was
    /// sent read.
    fn connect(&mut self, peer: &str, token: &[u8]) -> ConnId {
        let conn = self.hub.accept(self.now);
        self.input(conn, &[hello(peer, token)]);
        let welcome = self.read(conn);
        assert!(
            matches!(welcome.as_slice(), [Message::Welcome { .. }]),
            "{welcome:?}"
        );
        conn
    }

    fn session_id(&self, conn: ConnId) -> SessionId {
        self.hub.session(conn).unwrap().session_id()
    }

    fn input(&mut self, conn: ConnId, msgs: &[Message]) {
        self.hub
            .handle_input(conn, self.now, &frame(msgs), &mut self.reg);
        self.hub.commit(&mut self.reg);
        while let Some(e) = self.hub.poll_event() {
            self.events.push(e);
        }
    }

    /// Opens `name` on `conn` and reads the answer (its handle).
    fn open(&mut self, conn: ConnId, name: &str) -> DocId {
        self.input(
            conn,
            &[Message::Open {
                name: name.into(),
                version: Bytes::default(),
                resume: None,
            }],
        );
        self.read(conn)
            .iter()
            .find_map(|m| match m {
                Message::Opened { doc, .. } => Some(*doc),
                _ => None,
            })
            .expect("opened")
    }

    /// Everything queued for `conn`, decoded.
    fn read(&mut self, conn: ConnId) -> Vec<Message> {
        read_hub_output(&mut self.hub, conn)
    }

    fn queued(&self, conn: ConnId) -> usize {
        self.hub.session(conn).map_or(0, |s| s.queued_bytes())
    }

    fn disconnect_cause(&mut self, conn: ConnId) -> Option<CloseCause> {
        self.events.iter().find_map(|e| match e {
            ServerEvent::ClientDisconnected { conn: c, cause } if *c == conn => Some(cause.clone()),
            _ => None,
        })
    }

    fn text(&mut self, name: &str) -> String {
        self.reg.get(name).map(|d| d.text()).unwrap_or_default()
    }
}

/// An `OpLog` update appending `text` as client `client`'s op `counter`.
fn op(client: u32, counter: u32, text: &str) -> Bytes {
    let mut d = vec![crdt_socket_sync::testing::MAGIC];
    d.extend_from_slice(&client.to_le_bytes());
    d.extend_from_slice(&counter.to_le_bytes());
    d.extend_from_slice(&(text.len() as u16).to_le_bytes());
    d.extend_from_slice(text.as_bytes());
    Bytes(d)
}

fn app(kind: u32, route: Route, len: usize) -> Message {
    Message::App {
        kind,
        route,
        from: None,
        data: Bytes(vec![7; len]),
    }
}

fn errors(msgs: &[Message]) -> Vec<ErrorCode> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::Error { code, .. } => Some(*code),
            _ => None,
        })
        .collect()
}

/// A small queue bound, and rates high enough that only the queue bound
/// limits a flood.
fn limits() -> Limits {
    Limits {
        max_outbound_bytes: 256 << 10,
        app_rate: 1_000_000,
        presence_rate: 1_000_000,
        ..Limits::default()
    }
}

// ---- item 3: application messages and control traffic are bounded ----

/// A client on "x" floods a slow reader on "y" with application messages
/// addressed to its session. They share no document, so nothing reaches the
/// victim: the sender learns only `UnknownSession`, the same answer as for a
/// session that does not exist. (On main the victim's queue grew without
/// bound: 200 × 32 KiB against a 256 KiB limit.)
#[test]
fn an_app_flood_to_a_slow_reader_on_another_document_reaches_nothing() {
    let mut r = Raw::new(limits(), AllowAll);
    let sender = r.connect("sender", b"");
    let victim = r.connect("victim", b"");
    r.open(sender, "x");
    r.open(victim, "y");
    let target = r.session_id(victim);
    let before = r.queued(victim);
    for _ in 0..200 {
        r.input(sender, &[app(1, Route::Session(target), 32 << 10)]);
        assert!(
            r.queued(victim) <= before,
            "victim queued {}",
            r.queued(victim)
        );
    }
    assert_eq!(r.queued(victim), before, "nothing reached the victim");
    let got = r.read(sender);
    assert_eq!(errors(&got).len(), 200);
    assert!(errors(&got).iter().all(|c| *c == ErrorCode::UnknownSession));
    // Indistinguishable from a session that does not exist.
    r.input(sender, &[app(1, Route::Session(SessionId(12345)), 1)]);
    let gone = r.read(sender);
    let text = |m: &[Message]| match m {
        [Message::Error { message, .. }] => message.replace("0x3039", "ID"),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        text(&gone),
        text(&got[..1]).replace(&format!("{:#x}", target.0), "ID")
    );
    assert!(!r.hub.is_closed(victim) && !r.hub.is_closed(sender));
}

/// A slow reader sharing the sender's document gets application messages
/// only up to its high-water mark (half its limit); the rest are dropped
/// and the sender is told `Backpressure`, at most once per message, and
/// those reports never push the sender past its own high-water mark.
#[test]
fn an_app_flood_to_a_slow_reader_on_the_same_document_stops_at_its_high_water_mark() {
    let limits = limits();
    let high = limits.max_outbound_bytes / 2;
    let mut r = Raw::new(limits, AllowAll);
    let sender = r.connect("sender", b"");
    let victim = r.connect("victim", b"");
    let doc = r.open(sender, "doc");
    r.open(victim, "doc");
    let target = r.session_id(victim);
    let one = 32 << 10;
    for i in 0..200 {
        let route = if i % 2 == 0 {
            Route::Session(target)
        } else {
            Route::Document(doc)
        };
        r.input(sender, &[app(1, route, one)]);
        assert!(
            r.queued(victim) <= high,
            "victim queued {}",
            r.queued(victim)
        );
        assert!(
            r.queued(sender) <= high,
            "sender queued {}",
            r.queued(sender)
        );
    }
    assert!(!r.hub.is_closed(victim) && !r.hub.is_closed(sender));
    let got = r.read(sender);
    let reports = errors(&got);
    assert!(
        reports.len() > 150 && reports.len() <= 200,
        "{} reports",
        reports.len()
    );
    assert!(reports.iter().all(|c| *c == ErrorCode::Backpressure));
    // The victim got what fit, and recovers once it reads.
    let delivered = r
        .read(victim)
        .iter()
        .filter(|m| matches!(m, Message::App { .. }))
        .count();
    assert!((3..=high / one).contains(&delivered), "{delivered}");
    r.input(sender, &[app(1, Route::Session(target), one)]);
    assert!(r.read(sender).is_empty(), "no report once there is room");
    assert_eq!(r.read(victim).len(), 1);
}

/// A peer that sends pings and never reads is closed as a slow consumer
/// when its pongs would pass its queue limit: its queue never holds more
/// than the limit plus the `Close` frame. (On main it grew by every pong.)
#[test]
fn a_pinger_that_never_reads_is_closed_within_its_limit() {
    let limits = Limits {
        max_outbound_bytes: 64 << 10,
        ..Limits::default()
    };
    let max = limits.max_outbound_bytes;
    let mut r = Raw::new(limits, AllowAll);
    let pinger = r.connect("pinger", b"");
    let pings: Vec<Message> = (0..1000)
        .map(|k| Message::Ping { t: u64::MAX - k })
        .collect();
    for _ in 0..200 {
        r.input(pinger, &pings);
        assert!(
            r.queued(pinger) <= max + 256,
            "queued {} against {max}",
            r.queued(pinger)
        );
        if r.hub.is_closed(pinger) {
            break;
        }
    }
    assert!(r.hub.is_closed(pinger));
    assert_eq!(
        r.disconnect_cause(pinger),
        Some(CloseCause::Local(CloseReason::SlowConsumer))
    );
    let got = r.read(pinger);
    assert!(matches!(
        got.last(),
        Some(Message::Close {
            reason: CloseReason::SlowConsumer,
            ..
        })
    ));
}

/// Every state of a document is sent to a session that opens it, but only
/// as much as fits under its high-water mark: a snapshot of 64 × 4 KiB
/// states does not pass a 64 KiB limit. (On main the whole snapshot was
/// queued whatever the limit.)
#[test]
fn the_presence_snapshot_respects_the_queue_bound() {
    let limits = Limits {
        max_outbound_bytes: 64 << 10,
        ..limits()
    };
    let max = limits.max_outbound_bytes;
    let mut r = Raw::new(limits, AllowAll);
    for i in 0..64 {
        let c = r.connect(&format!("p{i}"), b"");
        let doc = r.open(c, "doc");
        r.input(
            c,
            &[Message::AwarenessSet {
                doc,
                clock: 1,
                state: Some(Bytes(vec![b'x'; 4000])),
            }],
        );
        // Everyone else is read, so only the newcomer's queue matters.
        for conn in 0..=i {
            r.read(ConnId(conn));
        }
    }
    assert_eq!(r.hub.presence("doc").len(), 64);
    let newcomer = r.connect("new", b"");
    r.input(
        newcomer,
        &[Message::Open {
            name: "doc".into(),
            version: Bytes::default(),
            resume: None,
        }],
    );
    assert!(r.queued(newcomer) <= max, "queued {}", r.queued(newcomer));
    assert!(!r.hub.is_closed(newcomer));
    let states: usize = r
        .read(newcomer)
        .iter()
        .map(|m| match m {
            Message::Awareness { entries, .. } => entries.len(),
            _ => 0,
        })
        .sum();
    assert!((1..64).contains(&states), "{states} states sent");
}

/// Replies a session may not miss (here `Opened` and its sync) count
/// against its bound: a peer opening documents without reading is closed
/// as a slow consumer, never queues past its limit plus the `Close`.
#[test]
fn a_peer_that_opens_without_reading_is_closed_within_its_limit() {
    let limits = Limits {
        max_outbound_bytes: 16 << 10,
        ..Limits::default()
    };
    let max = limits.max_outbound_bytes;
    let mut r = Raw::new(limits, AllowAll);
    let peer = r.connect("opener", b"");
    for i in 0..1000 {
        let name = format!("{i:0>400}");
        r.input(
            peer,
            &[Message::Open {
                name,
                version: Bytes::default(),
                resume: None,
            }],
        );
        assert!(r.queued(peer) <= max + 256, "queued {}", r.queued(peer));
        if r.hub.is_closed(peer) {
            break;
        }
    }
    assert_eq!(
        r.disconnect_cause(peer),
        Some(CloseCause::Local(CloseReason::SlowConsumer))
    );
}

// ---- item 10: a token refresh takes effect before the next message ----

/// Grants per (identity, document); tokens name identities.
#[derive(Default)]
struct PerDoc {
    tokens: BTreeMap<Vec<u8>, String>,
    grants: BTreeMap<(String, String), Access>,
}

impl PerDoc {
    fn token(mut self, token: &str, who: &str) -> Self {
        self.tokens.insert(token.into(), who.into());
        self
    }
    fn grant(mut self, who: &str, doc: &str, access: Access) -> Self {
        self.grants.insert((who.into(), doc.into()), access);
        self
    }
}

impl Authorizer for PerDoc {
    fn authenticate(&mut self, _peer: &str, token: &[u8]) -> Result<Identity, String> {
        self.tokens
            .get(token)
            .map(|who| Identity::new(who.as_str()))
            .ok_or_else(|| "unknown token".into())
    }
    fn authorize(&mut self, who: &Identity, doc: &str) -> Option<Access> {
        self.grants
            .get(&(who.name().to_string(), doc.to_string()))
            .copied()
    }
}

fn writer_on_doc<A: Authorizer>(auth: A, token: &[u8]) -> (Raw<A>, ConnId, DocId) {
    let mut r = Raw::new(Limits::default(), auth);
    let conn = r.connect("w", token);
    let doc = r.open(conn, "doc");
    r.input(
        conn,
        &[Message::Update {
            doc,
            seq: 1,
            data: op(1, 1, "a"),
        }],
    );
    assert_eq!(r.text("doc"), "a");
    r.read(conn);
    (r, conn, doc)
}

/// A refresh whose token no longer authenticates (revoked) closes the
/// session with a typed cause, and the write right behind it in the same
/// frame is not applied. (On main: an error, then the write was applied.)
#[test]
fn a_refresh_to_a_revoked_token_closes_the_session_before_the_next_write() {
    let auth = StaticTokens::default().with("w", "writer", Access::ReadWrite);
    let (mut r, conn, doc) = writer_on_doc(auth, b"w");
    // The operator revokes the token; the client presents it again.
    *r.hub.authorizer_mut() = StaticTokens::default();
    r.input(
        conn,
        &[
            Message::RefreshToken {
                token: Bytes(b"w".to_vec()),
            },
            Message::Update {
                doc,
                seq: 2,
                data: op(1, 2, "b"),
            },
        ],
    );
    assert_eq!(
        r.text("doc"),
        "a",
        "the write after the refresh was refused"
    );
    assert!(r.hub.is_closed(conn));
    assert!(matches!(
        r.disconnect_cause(conn),
        Some(CloseCause::Rejected {
            code: RejectCode::Unauthorized,
            ..
        })
    ));
    assert!(matches!(
        r.read(conn).last(),
        Some(Message::Close {
            reason: CloseReason::Rejected,
            ..
        })
    ));
    assert_eq!(r.hub.subscribers("doc"), 0);
}

/// The same for a token that never existed.
#[test]
fn a_refresh_to_an_unknown_token_closes_the_session() {
    let auth = StaticTokens::default().with("w", "writer", Access::ReadWrite);
    let (mut r, conn, doc) = writer_on_doc(auth, b"w");
    r.input(
        conn,
        &[
            Message::RefreshToken {
                token: Bytes(b"guess".to_vec()),
            },
            Message::Update {
                doc,
                seq: 2,
                data: op(1, 2, "b"),
            },
        ],
    );
    assert_eq!(r.text("doc"), "a");
    assert!(matches!(
        r.disconnect_cause(conn),
        Some(CloseCause::Rejected {
            code: RejectCode::Unauthorized,
            ..
        })
    ));
}

/// A refresh to an identity without access to an open document closes that
/// document (the session goes on): the next write to it is refused.
#[test]
fn a_refresh_to_an_identity_without_access_closes_the_document() {
    let auth = PerDoc::default()
        .token("a", "alice")
        .token("b", "bob")
        .grant("alice", "doc", Access::ReadWrite)
        .grant("bob", "other", Access::ReadWrite);
    let (mut r, conn, doc) = writer_on_doc(auth, b"a");
    r.input(
        conn,
        &[
            Message::RefreshToken {
                token: Bytes(b"b".to_vec()),
            },
            Message::Update {
                doc,
                seq: 2,
                data: op(1, 2, "b"),
            },
        ],
    );
    assert_eq!(r.text("doc"), "a");
    assert!(!r.hub.is_closed(conn));
    assert_eq!(r.hub.subscribers("doc"), 0);
    let got = r.read(conn);
    assert!(got.contains(&Message::CloseDoc { doc }), "{got:?}");
    assert_eq!(
        errors(&got),
        [ErrorCode::Forbidden, ErrorCode::UnknownDocument]
    );
    // Bob may open what he may open.
    r.open(conn, "other");
}

/// A refresh from read-write to read-only takes effect before the next
/// write in the same frame.
#[test]
fn a_downgrade_to_read_only_takes_effect_before_the_next_write() {
    let auth = StaticTokens::default()
        .with("w", "alice", Access::ReadWrite)
        .with("r", "reader", Access::ReadOnly);
    let (mut r, conn, doc) = writer_on_doc(auth, b"w");
    r.input(
        conn,
        &[
            Message::RefreshToken {
                token: Bytes(b"r".to_vec()),
            },
            Message::Update {
                doc,
                seq: 2,
                data: op(1, 2, "b"),
            },
        ],
    );
    assert_eq!(r.text("doc"), "a");
    let got = r.read(conn);
    assert!(got.iter().any(|m| matches!(
        m,
        Message::Opened {
            access: Access::ReadOnly,
            ..
        }
    )));
    assert_eq!(errors(&got), [ErrorCode::ReadOnly]);
}

// ---- item 11: StaticTokens grants per token ----

/// Two tokens of one identity keep their own access: the read-only one
/// added last does not make the read-write one read-only. (On main the last
/// `with` for an identity won.)
#[test]
fn static_tokens_grant_access_per_token() {
    let mut auth = StaticTokens::default()
        .with("alice-rw", "alice", Access::ReadWrite)
        .with("alice-ro", "alice", Access::ReadOnly);
    let rw = auth.authenticate("p", b"alice-rw").unwrap();
    let ro = auth.authenticate("p", b"alice-ro").unwrap();
    assert_eq!(rw.name(), "alice");
    assert_eq!(ro.name(), "alice");
    assert_eq!(auth.authorize(&rw, "doc"), Some(Access::ReadWrite));
    assert_eq!(auth.authorize(&ro, "doc"), Some(Access::ReadOnly));
    // An identity no token of this table made gets nothing.
    assert_eq!(auth.authorize(&Identity::new("alice"), "doc"), None);

    // Through a hub: both connected at once, the writer writes.
    let (mut r, w, doc) = writer_on_doc(auth, b"alice-rw");
    let reader = r.connect("r", b"alice-ro");
    let rdoc = r.open(reader, "doc");
    r.input(
        reader,
        &[Message::Update {
            doc: rdoc,
            seq: 1,
            data: op(2, 1, "r"),
        }],
    );
    assert_eq!(errors(&r.read(reader)), [ErrorCode::ReadOnly]);
    r.input(
        w,
        &[Message::Update {
            doc,
            seq: 2,
            data: op(1, 2, "b"),
        }],
    );
    assert_eq!(r.text("doc"), "ab");
}

/// Session ids are neither zero (the id of a session before its handshake)
/// nor sequential, and never repeat among live sessions.
#[test]
fn session_ids_are_distinct_and_not_sequential() {
    let mut r = Raw::new(Limits::default(), AllowAll);
    let ids: Vec<u64> = (0..64)
        .map(|i| {
            let c = r.connect(&format!("p{i}"), b"");
            r.session_id(c).0
        })
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len());
    assert!(!ids.contains(&0));
    assert!(ids.windows(2).all(|w| w[1].wrapping_sub(w[0]) > 1 << 16));
}
