//! Token refreshes are rate-limited and re-authorize only a changed
//! identity; a client's own error reports keep a bounded text.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Reg, frame, hello, server_registry};
use crdt_socket_sync::server::{Authorizer, ConnId, Hub, Identity, ServerConfig, ServerEvent};
use crdt_socket_sync::wire::{Access, Bytes, CloseReason, DocId, ErrorCode, Message};
use crdt_socket_sync::{CloseCause, Limits};

/// Authenticates every token as "u" with the token's first byte as grant;
/// counts `authorize` calls.
struct ByGrant(&'static AtomicU64);

impl Authorizer for ByGrant {
    fn authenticate(&mut self, _peer: &str, token: &[u8]) -> Result<Identity, String> {
        Ok(Identity::new("u").with_grant(u64::from(token.first().copied().unwrap_or(0))))
    }
    fn authorize(&mut self, _identity: &Identity, _doc: &str) -> Option<Access> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Some(Access::ReadWrite)
    }
}

const DOCS: usize = 8;

fn setup(calls: &'static AtomicU64) -> (Hub<ByGrant>, Reg, ConnId, Instant) {
    let mut hub = Hub::new(ServerConfig::default(), ByGrant(calls));
    let mut reg = server_registry();
    let now = Instant::now();
    let conn = hub.accept(now);
    let mut msgs = vec![hello("p", b"a")];
    for i in 0..DOCS {
        msgs.push(Message::Open {
            name: format!("d{i}"),
            version: Bytes::default(),
            resume: None,
        });
    }
    hub.handle_input(conn, now, &frame(&msgs), &mut reg);
    hub.commit(&mut reg);
    drain(&mut hub, conn);
    (hub, reg, conn, now)
}

fn drain(hub: &mut Hub<ByGrant>, conn: ConnId) -> Vec<ServerEvent> {
    while hub.poll_transmit_for(conn).is_some() {}
    std::iter::from_fn(|| hub.poll_event()).collect()
}

fn refresh(token: &[u8]) -> Message {
    Message::RefreshToken {
        token: Bytes(token.to_vec()),
    }
}

/// A refresh to the identity the session already has calls `authorize`
/// for none of its documents.
#[test]
fn a_refresh_to_the_same_identity_authorizes_nothing() {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let (mut hub, mut reg, conn, now) = setup(&CALLS);
    let before = CALLS.load(Ordering::Relaxed);
    hub.handle_input(conn, now, &frame(&[refresh(b"a")]), &mut reg);
    hub.commit(&mut reg);
    drain(&mut hub, conn);
    assert_eq!(CALLS.load(Ordering::Relaxed) - before, 0);
    assert!(!hub.is_closed(conn));
}

/// A refresh to a new grant authorizes each open document once; another
/// one a second later is within the rate and does it again.
#[test]
fn a_refresh_to_a_new_grant_authorizes_every_document_once() {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let (mut hub, mut reg, conn, now) = setup(&CALLS);
    let before = CALLS.load(Ordering::Relaxed);
    hub.handle_input(conn, now, &frame(&[refresh(b"b")]), &mut reg);
    hub.commit(&mut reg);
    drain(&mut hub, conn);
    assert_eq!(CALLS.load(Ordering::Relaxed) - before, DOCS as u64);
    let later = now + Duration::from_secs(1);
    hub.handle_input(conn, later, &frame(&[refresh(b"c")]), &mut reg);
    hub.commit(&mut reg);
    drain(&mut hub, conn);
    assert_eq!(CALLS.load(Ordering::Relaxed) - before, 2 * DOCS as u64);
    assert!(!hub.is_closed(conn));
}

/// Refreshes past `Limits::refresh_rate` close the session with
/// `LimitExceeded` before the later messages of the frame, having cost at
/// most one authorization per document per allowed refresh.
#[test]
fn refreshes_past_the_rate_close_the_session() {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let (mut hub, mut reg, conn, now) = setup(&CALLS);
    assert_eq!(Limits::default().refresh_rate, 1);
    let before = CALLS.load(Ordering::Relaxed);
    let msgs: Vec<Message> = (0..64u8).map(|i| refresh(&[b'b' + i])).collect();
    hub.handle_input(conn, now, &frame(&msgs), &mut reg);
    hub.commit(&mut reg);
    let events = drain(&mut hub, conn);
    assert!(hub.is_closed(conn));
    assert_eq!(CALLS.load(Ordering::Relaxed) - before, DOCS as u64);
    assert!(
        events.iter().any(|e| matches!(
            e,
            ServerEvent::ClientDisconnected {
                cause: CloseCause::Local(CloseReason::LimitExceeded),
                ..
            }
        )),
        "{events:?}"
    );
}

/// A client's error report keeps at most 256 bytes of its text, cut at a
/// character boundary, and counts against the per-input cap.
#[test]
fn client_error_reports_keep_a_bounded_text() {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let (mut hub, mut reg, conn, now) = setup(&CALLS);
    let report = Message::Error {
        doc: Some(DocId(0)),
        seq: None,
        code: ErrorCode::Internal,
        message: "é".repeat(10_000),
    };
    hub.handle_input(conn, now, &frame(&[report]), &mut reg);
    hub.commit(&mut reg);
    let events = drain(&mut hub, conn);
    let texts: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::DocumentError { message, .. } => Some(message),
            _ => None,
        })
        .collect();
    assert_eq!(texts.len(), 1);
    assert!(texts[0].len() <= 256 && texts[0].len() >= 254);
    assert!(texts[0].chars().all(|c| c == 'é'));
}
