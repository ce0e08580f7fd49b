//! The client's partial initial-sync transfers share one budget,
//! `Limits::max_transfer_len`, across documents and reconnections: a chunk
//! past it drops the other documents' partial transfers, which then catch
//! up after their `SyncDone`. The server is played by hand.

mod common;

use std::time::Duration;

use common::client_rig::Driven;
use common::*;
use crdt_socket_sync::client::{ClientConfig, ClientEvent, Status};
use crdt_socket_sync::document::Document;
use crdt_socket_sync::registry::Registry;
use crdt_socket_sync::wire::{Access, Bytes, DocId, Message, SyncKind};
use crdt_socket_sync::{CloseCause, Limits};

/// A hand-driven client whose transfers share `max_transfer_len`.
fn driven(max_transfer_len: u64) -> Driven {
    Driven::new(ClientConfig {
        limits: Limits {
            max_transfer_len,
            ..Limits::default()
        },
        ..client_config("c")
    })
}

impl Driven {
    fn reconnect(&mut self) -> Vec<Message> {
        self.c.transport_lost(self.now);
        let at = self.c.poll_timeout().expect("a reconnect is scheduled");
        self.now = self.now.max(at) + Duration::from_millis(1);
        self.c.handle_timeout(self.now);
        self.events();
        self.connect()
    }

    fn text(&mut self, name: &str) -> String {
        self.reg.get(name).unwrap().text()
    }
}

fn opened(name: &str, doc: u32) -> Message {
    Message::Opened {
        name: name.into(),
        doc: DocId(doc),
        access: Access::ReadWrite,
    }
}

fn chunk(doc: u32, transfer: u64, offset: usize, payload: &[u8], end: usize) -> Message {
    Message::SyncChunk {
        doc: DocId(doc),
        transfer,
        kind: SyncKind::Delta,
        offset: offset as u64,
        total: payload.len() as u64,
        data: Bytes(payload[offset..end].to_vec()),
    }
}

/// A server-side document with `lines` lines; its full delta.
fn server_doc(seed: u32, lines: usize) -> (OpLog, Vec<u8>) {
    let mut doc = OpLog::new(seed);
    for i in 0..lines {
        doc.edit(format!("doc {seed} line {i}\n").as_bytes());
    }
    let payload = doc.delta_since(&[]).unwrap();
    (doc, payload)
}

fn sync_done(doc: u32, server: &OpLog) -> Message {
    Message::SyncDone {
        doc: DocId(doc),
        version: Bytes(server.version()),
    }
}

/// The documents (by handle) the client asked to catch up on.
fn status_requests(msgs: &[Message]) -> Vec<u32> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::SyncRequest { doc, .. } => Some(doc.0),
            _ => None,
        })
        .collect()
}

fn closed(ev: &[ClientEvent]) -> bool {
    ev.iter().any(|e| matches!(e, ClientEvent::Closed { .. }))
}

#[test]
fn a_transfer_dropped_for_the_budget_catches_up_after_its_sync_done() {
    let (sa, pa) = server_doc(7, 20);
    let (sb, pb) = server_doc(8, 20);
    // Room for b's whole transfer but not for half of a's besides it.
    let limit = pb.len() + pa.len() / 4;
    let mut d = driven(limit as u64);
    d.c.open(&mut d.reg, "a", d.now).unwrap();
    d.c.open(&mut d.reg, "b", d.now).unwrap();
    d.connect();
    d.feed(&[opened("a", 0), opened("b", 1)]);
    let half = pa.len() / 2;
    // A hostile server interleaves two transfers.
    d.feed(&[chunk(0, 1, 0, &pa, half)]);
    d.feed(&[chunk(1, 2, 0, &pb, pb.len())]);
    // a's transfer was dropped: the rest of it is discarded, not an error.
    d.feed(&[chunk(0, 1, half, &pa, pa.len())]);
    d.feed(&[sync_done(1, &sb), sync_done(0, &sa)]);
    let sent = d.sent();
    assert!(!closed(&d.events()));
    assert_eq!(d.c.status(), Status::Connected);
    assert_eq!(d.text("b"), sb.text());
    // a asks for what it lacks instead; b does not.
    assert_eq!(status_requests(&sent), vec![0], "{sent:?}");
    assert_eq!(d.text("a"), "");
}

#[test]
fn a_transfer_kept_for_resumption_counts_towards_the_budget() {
    let (sa, pa) = server_doc(7, 20);
    let (sb, pb) = server_doc(8, 20);
    let limit = pb.len() + pa.len() / 4;
    let mut d = driven(limit as u64);
    d.c.open(&mut d.reg, "a", d.now).unwrap();
    d.c.open(&mut d.reg, "b", d.now).unwrap();
    d.connect();
    d.feed(&[opened("a", 0), opened("b", 1)]);
    let half = pa.len() / 2;
    d.feed(&[chunk(0, 1, 0, &pa, half)]);
    // Cut mid-transfer: the next connection asks to resume a.
    let opens = d.reconnect();
    assert!(
        opens.iter().any(|m| matches!(
            m,
            Message::Open { name, resume: Some(r), .. } if name == "a" && r.offset == half as u64
        )),
        "{opens:?}"
    );
    // An honest server sends b's transfer first, then resumes a's.
    d.feed(&[opened("a", 0), opened("b", 1)]);
    d.feed(&[chunk(1, 2, 0, &pb, pb.len()), sync_done(1, &sb)]);
    d.feed(&[chunk(0, 1, half, &pa, pa.len()), sync_done(0, &sa)]);
    let sent = d.sent();
    assert!(!closed(&d.events()));
    assert_eq!(d.text("b"), sb.text());
    assert_eq!(status_requests(&sent), vec![0], "{sent:?}");
}

/// Transfers that end every way a transfer ends give their bytes back: a
/// later pair of transfers filling the budget exactly drops neither.
#[test]
fn the_budget_is_given_back_however_a_transfer_ends() {
    let (sx, px) = server_doc(7, 20);
    let (sy, py) = server_doc(8, 20);
    let limit = px.len() + py.len();
    let garbage = vec![0u8; limit];
    let mut d = driven(limit as u64);
    for name in ["closed", "broken", "refused", "x", "y"] {
        d.c.open(&mut d.reg, name, d.now).unwrap();
    }
    d.connect();
    d.feed(&[
        opened("closed", 0),
        opened("broken", 1),
        opened("refused", 2),
    ]);
    // Closed by the application while partial.
    d.feed(&[chunk(0, 1, 0, &garbage, limit - 1)]);
    d.c.close_doc("closed").unwrap();
    // Out of order: the connection closes, the transfer is not kept.
    d.feed(&[chunk(1, 2, 0, &garbage, limit - 1)]);
    d.feed(&[chunk(1, 2, 0, &garbage, limit - 1)]);
    d.feed(&[chunk(1, 2, limit, &garbage, limit)]);
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
    // Kept for resumption, then refused on the next connection.
    d.reconnect();
    d.feed(&[opened("refused", 2)]);
    d.feed(&[chunk(2, 3, 0, &garbage, limit - 1)]);
    d.reconnect();
    d.feed(&[Message::OpenRefused {
        name: "refused".into(),
        code: crdt_socket_sync::wire::ErrorCode::Forbidden,
        message: String::new(),
    }]);
    // Completed.
    d.feed(&[opened("broken", 1)]);
    d.feed(&[chunk(1, 4, 0, &px, px.len() - 1)]);
    d.feed(&[chunk(1, 4, px.len() - 1, &px, px.len()), sync_done(1, &sx)]);
    d.sent();
    assert_eq!(d.text("broken"), sx.text());
    // Now x and y fill the budget exactly, interleaved: neither is dropped.
    d.feed(&[opened("x", 3), opened("y", 4)]);
    d.feed(&[chunk(3, 5, 0, &px, px.len() / 2)]);
    d.feed(&[chunk(4, 6, 0, &py, py.len())]);
    d.feed(&[chunk(3, 5, px.len() / 2, &px, px.len())]);
    d.feed(&[sync_done(4, &sy), sync_done(3, &sx)]);
    let sent = d.sent();
    assert!(!closed(&d.events()));
    assert_eq!(status_requests(&sent), Vec::<u32>::new(), "{sent:?}");
    assert_eq!(d.text("x"), sx.text());
    assert_eq!(d.text("y"), sy.text());
}
