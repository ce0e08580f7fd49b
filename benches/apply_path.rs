//! The server's apply path for yrs keystrokes, next to raw yrs.
//!
//! The keystrokes of the automerge-paper trace (all 259,778 of them with
//! `--bench`, 500 otherwise) are made on a yrs document and their updates framed as a client would send them (one
//! `Update` per frame). Timed, per keystroke, in the same run:
//!
//! * **hub**: `Hub::handle_input` of the frame (decode, CRC check, apply
//!   through the yrs adapter, ack) plus draining every transmit (the ack to
//!   the sender and the broadcast to one other subscriber) and the events.
//!   Transmits are drained with `poll_transmit_into` into one reused buffer
//!   (a transport writing to its sockets); a second hub drains with
//!   `poll_transmit`, one owned `Vec` per frame, and is reported too.
//!   The server's documents are `YrsDocument::server` copies, as a server
//!   registry should make them (no local-edit capture);
//! * **raw yrs**: `Update::decode_v1` + `apply_update` of the same bytes on a
//!   plain `yrs::Doc`.
//!
//! In each round the three apply the whole trace to their own documents,
//! interleaved in slices of 2,000 keystrokes so that other load on the
//! machine slows them alike. Prints the medians of several rounds and the
//! median per-round ratio (target ≤ 1.2×). `cargo bench --bench apply_path`.

#[path = "../tests/common/trace.rs"]
mod trace;

use std::hint::black_box;
use std::time::{Duration, Instant};

use crdt_socket_sync::Limits;
use crdt_socket_sync::adapters::yrs::YrsDocument;
use crdt_socket_sync::client::{ClientConfig, ClientSession};
use crdt_socket_sync::document::Document;
use crdt_socket_sync::registry::MemoryRegistry;
use crdt_socket_sync::server::{AllowAll, ConnId, Hub, ServerConfig};
use crdt_socket_sync::wire::{Bytes, DocId, Encoder, Message};

/// The whole trace: late keystrokes land in a long document, as on a real server.
const KEYS: usize = usize::MAX;
const ROUNDS: usize = 5;

/// The yrs updates of the first `n` keystrokes of automerge-paper.
fn updates(n: usize) -> Vec<Vec<u8>> {
    use yrs::{Text, Transact};
    let t = trace::load("automerge-paper");
    let mut doc = YrsDocument::with_client_id(7);
    let text = doc.get_or_insert_text("body");
    let mut out = Vec::new();
    for txn in t.txns.iter().take(n) {
        let p = &txn.patches[0];
        {
            let mut tx = doc.transact_mut();
            if p.del > 0 {
                text.remove_range(&mut tx, p.pos as u32, p.del as u32);
            } else {
                text.insert(&mut tx, p.pos as u32, &p.ins);
            }
        }
        out.push(doc.take_local_update().expect("an edit"));
    }
    out
}

/// Raw yrs: `Update::decode_v1` + `apply_update` on a plain `Doc`.
struct Raw(yrs::Doc);

impl Raw {
    fn run(&mut self, updates: &[Vec<u8>]) -> Duration {
        use yrs::updates::decoder::Decode;
        use yrs::{Transact, Update};
        let start = Instant::now();
        for u in updates {
            self.0
                .transact_mut()
                .apply_update(Update::decode_v1(u).expect("valid"))
                .expect("applies");
        }
        start.elapsed()
    }
}

/// The adapter as the hub uses it: a server copy, which does not capture
/// local edits.
struct Adapter(YrsDocument);

impl Adapter {
    fn run(&mut self, updates: &[Vec<u8>]) -> Duration {
        let start = Instant::now();
        for u in updates {
            black_box(self.0.apply(u));
        }
        start.elapsed()
    }
}

/// A hub with a sender and one other subscriber of "doc", both synced
/// (the subscriber as a real client session). `server(1)` creates the
/// server's document, `client(10)` and `client(11)` the clients'.
fn setup<D: Document + 'static>(
    server: fn(u64) -> D,
    client: fn(u64) -> D,
) -> (
    Hub<AllowAll>,
    MemoryRegistry<D>,
    ConnId,
    ConnId,
    ClientSession,
    MemoryRegistry<D>,
) {
    let now = Instant::now();
    let mut hub = Hub::new(ServerConfig::default(), AllowAll);
    let mut reg = MemoryRegistry::new(move |_: &str| server(1));
    let mut conns = Vec::new();
    let mut sessions = Vec::new();
    for i in 0..2u64 {
        let conn = hub.accept(now);
        let mut s = ClientSession::new(
            ClientConfig {
                peer: format!("c{i}"),
                ..Default::default()
            },
            now,
        );
        let mut docs = MemoryRegistry::new(move |_: &str| client(10 + i));
        s.connect(now);
        s.open(&mut docs, "doc", now).expect("open");
        for _ in 0..10 {
            while let Some(f) = s.poll_transmit() {
                hub.handle_input(conn, now, &f, &mut reg);
                hub.commit(&mut reg);
            }
            while let Some(f) = hub.poll_transmit_for(conn) {
                s.handle_input(now, &f, &mut docs);
            }
        }
        conns.push(conn);
        sessions.push((s, docs));
    }
    while hub.poll_event().is_some() {}
    let (sub, sub_docs) = sessions.pop().expect("two");
    (hub, reg, conns[0], conns[1], sub, sub_docs)
}

/// The hub path: a sender's frames in, every transmit and event out.
struct HubPath<D: Document> {
    hub: Hub<AllowAll>,
    reg: MemoryRegistry<D>,
    sender: ConnId,
}

impl HubPath<YrsDocument> {
    fn new() -> Self {
        let (hub, reg, sender, _sub, _s, _d) =
            setup(|_| YrsDocument::server(), YrsDocument::with_client_id);
        HubPath { hub, reg, sender }
    }
}

impl<D: Document> HubPath<D> {
    /// Drains with `poll_transmit_into` into one reused buffer, as a
    /// transport writing frames straight to its sockets would.
    fn run(&mut self, frames: &[Vec<u8>]) -> Duration {
        let now = Instant::now();
        let start = Instant::now();
        let mut out = 0usize;
        let mut buf = Vec::with_capacity(4096);
        for f in frames {
            self.hub.handle_input(self.sender, now, f, &mut self.reg);
            self.hub.commit(&mut self.reg);
            while self.hub.poll_transmit_into(&mut buf).is_some() {
                out += buf.len();
                buf.clear();
            }
            while self.hub.poll_event().is_some() {}
        }
        let d = start.elapsed();
        black_box(out);
        d
    }

    /// Drains with `poll_transmit`: an owned `Vec` per frame (what a
    /// transport handing frames to another task does).
    fn run_owned(&mut self, frames: &[Vec<u8>]) -> Duration {
        let now = Instant::now();
        let start = Instant::now();
        let mut out = 0usize;
        for f in frames {
            self.hub.handle_input(self.sender, now, f, &mut self.reg);
            self.hub.commit(&mut self.reg);
            while let Some((_, frame)) = self.hub.poll_transmit() {
                out += frame.len();
            }
            while self.hub.poll_event().is_some() {}
        }
        let d = start.elapsed();
        black_box(out);
        d
    }
}

/// Keystrokes per slice of the interleaved rounds.
const SLICE: usize = 2_000;

/// One round: each path applies the whole trace to its own fresh document,
/// interleaved slice by slice (rotating which path goes first), so a busy
/// machine slows them alike. Returns ns/update for raw, adapter, hub
/// (reused transmit buffer), hub (owned frames).
fn round(updates: &[Vec<u8>], frames: &[Vec<u8>]) -> [f64; 4] {
    let mut raw = Raw(yrs::Doc::with_client_id(1));
    let mut adapter = Adapter(YrsDocument::server());
    let mut hub = HubPath::new();
    let mut owned = HubPath::new();
    let mut t = [Duration::ZERO; 4];
    for (k, (u, f)) in updates.chunks(SLICE).zip(frames.chunks(SLICE)).enumerate() {
        for p in 0..4 {
            match (p + k) % 4 {
                0 => t[0] += raw.run(u),
                1 => t[1] += adapter.run(u),
                2 => t[2] += hub.run(f),
                _ => t[3] += owned.run_owned(f),
            }
        }
    }
    black_box((&raw.0, &adapter.0));
    t.map(|d| d.as_nanos() as f64 / updates.len() as f64)
}

/// A document that accepts everything and does nothing.
struct Noop;

impl Document for Noop {
    fn version(&self) -> Vec<u8> {
        Vec::new()
    }
    fn delta_since(&self, _: &[u8]) -> Result<Vec<u8>, crdt_socket_sync::document::DocumentError> {
        Ok(Vec::new())
    }
    fn apply(&mut self, _: &[u8]) -> crdt_socket_sync::document::ApplyOutcome {
        crdt_socket_sync::document::ApplyOutcome::Applied
    }
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
    fn load_snapshot(&mut self, _: &[u8]) -> Result<(), crdt_socket_sync::document::DocumentError> {
        Ok(())
    }
    fn take_local_update(&mut self) -> Option<Vec<u8>> {
        None
    }
}

fn noop_path(frames: &[Vec<u8>], rounds: usize) -> Duration {
    let (hub, reg, sender, _sub, _s, _d) = setup(|_| Noop, |_| Noop);
    let mut path = HubPath { hub, reg, sender };
    (0..rounds).map(|_| path.run(frames)).sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = if quick { 500 } else { KEYS };
    let updates = updates(n);
    let n = updates.len();
    let mut encoder = Encoder::new(&Limits::default());
    let frames: Vec<Vec<u8>> = updates
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let mut f = Vec::new();
            encoder
                .encode(
                    &[Message::Update {
                        doc: DocId(0),
                        seq: i as u64 + 2,
                        data: Bytes(u.clone()),
                    }],
                    &mut f,
                )
                .expect("encodes");
            f
        })
        .collect();
    // Sanity: the hub path really applies every update.
    {
        let (mut hub, mut reg, sender, sub, mut s, mut docs) =
            setup(|_| YrsDocument::server(), YrsDocument::with_client_id);
        let now = Instant::now();
        for f in &frames {
            hub.handle_input(sender, now, f, &mut reg);
            hub.commit(&mut reg);
            while let Some(frame) = hub.poll_transmit_for(sub) {
                s.handle_input(now, &frame, &mut docs);
            }
            while hub.poll_transmit().is_some() {}
        }
        use crdt_socket_sync::registry::Registry;
        let server = reg.get("doc").expect("doc").version();
        assert_eq!(
            docs.get("doc").expect("doc").version(),
            server,
            "subscriber in sync"
        );
    }
    // `APPLY_PATH_PROFILE=noop`: the hub path around a document that does
    // nothing, to profile the session overhead alone.
    if std::env::var("APPLY_PATH_PROFILE").as_deref() == Ok("noop") {
        let rounds = std::env::var("NOOP_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { 2000 } else { 20 });
        let t = noop_path(&frames, rounds);
        println!(
            "hub overhead with a no-op document: {:.0} ns/update",
            t.as_nanos() as f64 / (rounds * n) as f64
        );
        return;
    }
    // `APPLY_PATH_PROFILE=1`: only the hub path, for a profiler.
    if std::env::var_os("APPLY_PATH_PROFILE").is_some() {
        let rounds = std::env::var("PROFILE_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        for _ in 0..rounds {
            black_box(HubPath::new().run(&frames));
        }
        return;
    }
    let rounds = if quick { 1 } else { ROUNDS };
    let mut rows: [Vec<f64>; 4] = Default::default();
    let (mut ratios, mut owned_ratios) = (vec![], vec![]);
    for _ in 0..rounds {
        let t = round(&updates, &frames);
        for (row, v) in rows.iter_mut().zip(t) {
            row.push(v);
        }
        ratios.push(t[2] / t[0]);
        owned_ratios.push(t[3] / t[0]);
    }
    let [r, a, o, w] = rows.map(median);
    println!(
        "apply path, {n} automerge-paper keystrokes (yrs), median of {rounds} interleaved rounds:"
    );
    println!("  raw yrs decode+apply                      {r:6.0} ns/update");
    println!("  adapter apply alone (server copy)         {a:6.0} ns/update");
    println!("  hub input+apply+ack+fan-out               {o:6.0} ns/update");
    println!("  same, an owned Vec per frame (poll_transmit) {w:6.0} ns/update");
    println!(
        "  ratio hub/raw {:.2}x (target <= 1.20x); with owned frames {:.2}x  (medians of per-round ratios)",
        median(ratios),
        median(owned_ratios)
    );
    let bytes: usize = updates.iter().map(Vec::len).sum();
    let frame_bytes: usize = frames.iter().map(Vec::len).sum();
    println!(
        "  update {:.1} B, client frame {:.1} B",
        bytes as f64 / n as f64,
        frame_bytes as f64 / n as f64
    );
}
