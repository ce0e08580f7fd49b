//! Hub benchmarks.
//!
//! * **fan-out**: one ~20-byte update from one client, broadcast to 1, 10,
//!   100 and 1,000 other subscribers (all handshaken and synced, driven in
//!   memory). Timed: `handle_input` + draining every `poll_transmit` frame
//!   (N broadcasts and the sender's ack) + draining events. The baseline
//!   copies the same broadcast frame's bytes into N fresh `Vec`s, the least
//!   any fan-out returning owned frames must do.
//! * **memory**: heap growth per idle connection (accepted, handshaken, one
//!   document open and synced), counted by a global allocator wrapper.
//! * **timers**: the cost of `poll_timeout` and of a `handle_timeout` with
//!   nothing due, with 1,000 / 10,000 / 100,000 idle handshaken connections,
//!   and after 1 long-lived plus 200,000 short-lived connections (with the
//!   heap the churn left behind). Printed, not asserted.
//!
//! `cargo bench --bench hub` runs criterion on the fan-out, then prints a
//! summary table (frames/s, baseline, ratio) and the memory figures. Without
//! `--bench` (e.g. `cargo test --all-targets`) everything runs once, small.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use crdt_socket_sync::Framing;
use crdt_socket_sync::document::{ApplyOutcome, Document, DocumentError};
use crdt_socket_sync::registry::MemoryRegistry;
use crdt_socket_sync::server::{AllowAll, ConnId, Hub, ServerConfig};
use crdt_socket_sync::wire::{
    Bytes, Compression, DocId, Encoder, Message, MessageDecoder, PROTOCOL_VERSIONS,
};
use crdt_socket_sync::{Limits, registry::Registry};
use criterion::{BenchmarkId, Criterion, Throughput};

// ---------------------------------------------------------------------------
// Counting allocator: growth of the bytes requested from the system
// allocator while counting is on (off during the timing benchmarks, so they
// do not pay for the atomic updates). Deltas taken while it is on are exact.
// ---------------------------------------------------------------------------

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

fn count(delta: isize) {
    if COUNTING.load(Ordering::Relaxed) {
        LIVE.fetch_add(delta, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `System`; we only count.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// A minimal document: per-client counters. An update is
// `client u32 | counter u32 | payload`; it applies when its counter is new.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Counters {
    clock: Vec<(u32, u32)>,
}

impl Document for Counters {
    fn version(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.clock.len() * 8);
        for (c, n) in &self.clock {
            out.extend_from_slice(&c.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }
    fn delta_since(&self, _version: &[u8]) -> Result<Vec<u8>, DocumentError> {
        Ok(Vec::new())
    }
    fn apply(&mut self, update: &[u8]) -> ApplyOutcome {
        let (Some(c), Some(n)) = (update.get(0..4), update.get(4..8)) else {
            return ApplyOutcome::Invalid(DocumentError::Invalid("short".into()));
        };
        let c = u32::from_le_bytes(c.try_into().unwrap_or_default());
        let n = u32::from_le_bytes(n.try_into().unwrap_or_default());
        match self.clock.iter_mut().find(|(k, _)| *k == c) {
            Some((_, m)) if *m >= n => ApplyOutcome::Duplicate,
            Some((_, m)) => {
                *m = n;
                ApplyOutcome::Applied
            }
            None => {
                self.clock.push((c, n));
                ApplyOutcome::Applied
            }
        }
    }
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
    fn load_snapshot(&mut self, _snapshot: &[u8]) -> Result<(), DocumentError> {
        Ok(())
    }
    fn take_local_update(&mut self) -> Option<Vec<u8>> {
        None
    }
}

type Reg = MemoryRegistry<Counters>;

const DOC: &str = "doc";

// ---------------------------------------------------------------------------
// Driving the hub with pre-encoded client frames.
// ---------------------------------------------------------------------------

fn frame(msgs: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    Encoder::new(&Limits::default())
        .encode(msgs, &mut out)
        .expect("bench frames encode");
    out
}

/// The frames a client sends to become an idle, synced subscriber of `DOC`
/// (the hub hands out `DocId(0)` for the first document).
struct ClientFrames {
    hello: Vec<u8>,
    open: Vec<u8>,
    sync_done: Vec<u8>,
}

impl ClientFrames {
    fn new() -> Self {
        ClientFrames {
            hello: frame(&[Message::Hello {
                versions: PROTOCOL_VERSIONS.to_vec(),
                peer: "bench".into(),
                token: Bytes::default(),
                compression: vec![Compression::None],
                limits: Limits::default().peer_limits(),
            }]),
            open: frame(&[Message::Open {
                name: DOC.into(),
                version: Bytes::default(),
                resume: None,
            }]),
            sync_done: frame(&[Message::SyncDone {
                doc: DocId(0),
                version: Bytes::default(),
            }]),
        }
    }
}

fn config(framing: Framing) -> ServerConfig {
    ServerConfig {
        framing,
        ..ServerConfig::default()
    }
}

/// Drains every output; returns the number of frames.
fn drain(hub: &mut Hub<AllowAll>) -> usize {
    let mut frames = 0;
    while let Some(f) = hub.poll_transmit() {
        black_box(f);
        frames += 1;
    }
    while let Some(e) = hub.poll_event() {
        black_box(e);
    }
    black_box(hub.poll_timeout());
    frames
}

/// Accepts one connection and makes it a synced subscriber of `DOC`.
fn join(hub: &mut Hub<AllowAll>, reg: &mut Reg, now: Instant, f: &ClientFrames) -> ConnId {
    let conn = hub.accept(now);
    for bytes in [&f.hello, &f.open, &f.sync_done] {
        hub.handle_input(conn, now, bytes, reg);
    }
    drain(hub);
    conn
}

/// A hub with a sender (returned) and `n` other synced subscribers.
fn fan_out_hub(n: usize, now: Instant) -> (Hub<AllowAll>, Reg, ConnId) {
    let mut hub = Hub::new(config(Framing::Datagram), AllowAll);
    let mut reg: Reg = MemoryRegistry::new(|_: &str| Counters::default());
    let f = ClientFrames::new();
    let sender = join(&mut hub, &mut reg, now, &f);
    for _ in 0..n {
        join(&mut hub, &mut reg, now, &f);
    }
    assert_eq!(hub.subscribers(DOC), n + 1);
    (hub, reg, sender)
}

/// The client frame carrying update number `k`: 20 bytes of CRDT data.
fn update_frame(k: u64) -> Vec<u8> {
    let mut data = Vec::with_capacity(20);
    data.extend_from_slice(&7u32.to_le_bytes());
    data.extend_from_slice(&(k as u32).to_le_bytes());
    data.extend_from_slice(b"hello, world");
    frame(&[Message::Update {
        doc: DocId(0),
        seq: k,
        data: Bytes(data),
    }])
}

/// Stateful fan-out driver: each step sends the next (new) update.
struct FanOut {
    hub: Hub<AllowAll>,
    reg: Reg,
    sender: ConnId,
    now: Instant,
    next: u64,
    batch: Vec<Vec<u8>>,
}

impl FanOut {
    fn new(n: usize) -> Self {
        let now = Instant::now();
        let (hub, reg, sender) = fan_out_hub(n, now);
        FanOut {
            hub,
            reg,
            sender,
            now,
            next: 1,
            batch: Vec::new(),
        }
    }

    /// Runs `iters` updates; returns the time spent in the hub (frame
    /// encoding on the client side is excluded) and the frames out.
    fn run(&mut self, iters: u64) -> (Duration, u64) {
        let mut total = Duration::ZERO;
        let mut frames = 0u64;
        let mut left = iters;
        while left > 0 {
            let chunk = left.min(256);
            left -= chunk;
            self.batch.clear();
            for _ in 0..chunk {
                self.batch.push(update_frame(self.next));
                self.next += 1;
            }
            let start = Instant::now();
            for f in &self.batch {
                self.hub
                    .handle_input(self.sender, self.now, f, &mut self.reg);
                frames += drain(&mut self.hub) as u64;
            }
            total += start.elapsed();
        }
        (total, frames)
    }
}

/// The broadcast frame a subscriber receives (same bytes the hub sends).
fn broadcast_frame() -> Vec<u8> {
    let mut data = Vec::with_capacity(20);
    data.extend_from_slice(&7u32.to_le_bytes());
    data.extend_from_slice(&1u32.to_le_bytes());
    data.extend_from_slice(b"hello, world");
    frame(&[Message::Broadcast {
        doc: DocId(0),
        data: Bytes(data),
    }])
}

/// Baseline: `iters` times, copy `frame` into `n` fresh `Vec`s.
fn baseline(frame: &[u8], n: usize, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        for _ in 0..n {
            black_box(black_box(frame).to_vec());
        }
    }
    start.elapsed()
}

/// Checks that a fan-out really reaches every subscriber with the update.
fn check_fan_out(n: usize) {
    let mut fo = FanOut::new(n);
    fo.hub
        .handle_input(fo.sender, fo.now, &update_frame(1), &mut fo.reg);
    let mut broadcasts = 0;
    let mut acks = 0;
    let mut decoder = MessageDecoder::new(Limits::default());
    while let Some((_, f)) = fo.hub.poll_transmit() {
        let mut msgs = Vec::new();
        decoder.decode(&f, &mut msgs).expect("hub frames decode");
        for m in msgs {
            match m {
                Message::Broadcast { data, .. } => {
                    assert_eq!(data.len(), 20);
                    broadcasts += 1;
                }
                Message::Ack { .. } => acks += 1,
                other => panic!("unexpected {}", other.name()),
            }
        }
    }
    assert_eq!((broadcasts, acks), (n, 1));
}

const FAN_OUTS: [usize; 4] = [1, 10, 100, 1000];

fn bench_fan_out(c: &mut Criterion) {
    let bframe = broadcast_frame();
    let mut group = c.benchmark_group("fan_out");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(20);
    for n in FAN_OUTS {
        check_fan_out(n);
        group.throughput(Throughput::Elements(n as u64 + 1));
        let mut fo = FanOut::new(n);
        group.bench_with_input(BenchmarkId::new("hub", n), &n, |b, _| {
            b.iter_custom(|iters| fo.run(iters).0)
        });
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("copy_baseline", n), &n, |b, &n| {
            b.iter_custom(|iters| baseline(&bframe, n, iters))
        });
    }
    group.finish();
}

/// Own measurement for the summary table: best of a few rounds.
fn summary(round: Duration) {
    let bframe = broadcast_frame();
    println!();
    println!(
        "fan-out summary (frame out = one poll_transmit; per update: N broadcasts + 1 ack; \
         broadcast frame = {} bytes)",
        bframe.len()
    );
    println!(
        "{:>6} {:>12} {:>14} {:>14} {:>14} {:>8}",
        "N", "ns/update", "hub frames/s", "ns/frame", "copy ns/frame", "ratio"
    );
    for n in FAN_OUTS {
        let mut fo = FanOut::new(n);
        fo.run(1 + 20_000 / n as u64); // warm up
        let iters = (200_000 / n as u64).max(50);
        let mut best_hub = f64::MAX;
        let mut best_copy = f64::MAX;
        let mut per_update = f64::MAX;
        let deadline = Instant::now() + round;
        while Instant::now() < deadline || best_hub == f64::MAX {
            let (t, frames) = fo.run(iters);
            assert_eq!(frames, iters * (n as u64 + 1));
            best_hub = best_hub.min(t.as_nanos() as f64 / frames as f64);
            per_update = per_update.min(t.as_nanos() as f64 / iters as f64);
            let t = baseline(&bframe, n, iters);
            best_copy = best_copy.min(t.as_nanos() as f64 / (iters * n as u64) as f64);
        }
        println!(
            "{:>6} {:>12.0} {:>14.0} {:>14.1} {:>14.1} {:>7.1}x",
            n,
            per_update,
            1e9 / best_hub,
            best_hub,
            best_copy,
            best_hub / best_copy
        );
    }
}

// ---------------------------------------------------------------------------
// Memory per idle connection.
// ---------------------------------------------------------------------------

fn memory(conns: usize, framing: Framing) {
    let now = Instant::now();
    let f = ClientFrames::new();
    let mut hub = Hub::new(config(framing), AllowAll);
    let mut reg: Reg = MemoryRegistry::new(|_: &str| Counters::default());
    // One connection first, so the document and the hub's scratch buffers
    // exist before counting.
    join(&mut hub, &mut reg, now, &f);
    let _ = reg.get(DOC);

    COUNTING.store(true, Ordering::Relaxed);
    let start = live();
    let mut ids = Vec::with_capacity(conns);
    let ids_bytes = (conns * std::mem::size_of::<ConnId>()) as isize;
    for _ in 0..conns {
        ids.push(hub.accept(now));
    }
    drain(&mut hub);
    let accepted = live() - ids_bytes;
    for &id in &ids {
        hub.handle_input(id, now, &f.hello, &mut reg);
    }
    drain(&mut hub);
    let hello = live() - ids_bytes;
    for &id in &ids {
        hub.handle_input(id, now, &f.open, &mut reg);
    }
    drain(&mut hub);
    let opened = live() - ids_bytes;
    for &id in &ids {
        hub.handle_input(id, now, &f.sync_done, &mut reg);
    }
    drain(&mut hub);
    let synced = live() - ids_bytes;
    COUNTING.store(false, Ordering::Relaxed);
    assert_eq!(hub.subscribers(DOC), conns + 1);
    let per = |a: isize, b: isize| (a - b) as f64 / conns as f64;
    println!(
        "memory per idle connection ({framing:?} framing, {conns} connections): \
         {:.0} B total = accept {:.0} + hello {:.0} + open {:.0} + sync-done {:.0}",
        per(synced, start),
        per(accepted, start),
        per(hello, accepted),
        per(opened, hello),
        per(synced, opened),
    );
    black_box((&hub, &reg, ids));
}

// ---------------------------------------------------------------------------
// Timers: what finding and firing deadlines costs with many connections.
// ---------------------------------------------------------------------------

/// Drains transmits and events without asking for the deadline (whose cost
/// is what is measured).
fn drain_outputs(hub: &mut Hub<AllowAll>) {
    while let Some(f) = hub.poll_transmit() {
        black_box(f);
    }
    while let Some(e) = hub.poll_event() {
        black_box(e);
    }
}

/// Nanoseconds per call of `f`, best of a few rounds of `calls` calls.
fn ns_per_call(calls: u32, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..calls {
            f();
        }
        best = best.min(start.elapsed().as_nanos() as f64 / f64::from(calls));
    }
    best
}

fn timers(sizes: &[usize], churn: usize) {
    let now = Instant::now();
    let f = ClientFrames::new();
    println!();
    println!("timers (idle handshaken connections; ns per call, best of 5 rounds)");
    println!(
        "{:>8} {:>16} {:>22}",
        "conns", "poll_timeout", "handle_timeout (none)"
    );
    for &n in sizes {
        let mut hub = Hub::new(config(Framing::Datagram), AllowAll);
        let mut reg: Reg = MemoryRegistry::new(|_: &str| Counters::default());
        for _ in 0..n {
            let conn = hub.accept(now);
            hub.handle_input(conn, now, &f.hello, &mut reg);
            drain_outputs(&mut hub);
        }
        let calls = (2_000_000 / n as u32).clamp(20, 100_000);
        let poll = ns_per_call(calls, || {
            black_box(hub.poll_timeout());
        });
        let fire = ns_per_call(calls, || hub.handle_timeout(now, &mut reg));
        assert_eq!(hub.connections(), n);
        println!("{n:>8} {poll:>16.0} {fire:>22.0}");
    }
    // One long-lived connection, then `churn` connections that each come
    // and go while it stays.
    let mut hub = Hub::new(config(Framing::Datagram), AllowAll);
    let mut reg: Reg = MemoryRegistry::new(|_: &str| Counters::default());
    let live_conn = hub.accept(now);
    hub.handle_input(live_conn, now, &f.hello, &mut reg);
    drain_outputs(&mut hub);
    COUNTING.store(true, Ordering::Relaxed);
    let start = live();
    for _ in 0..churn {
        let conn = hub.accept(now);
        hub.connection_lost(conn, now);
        drain_outputs(&mut hub);
    }
    let grown = live() - start;
    COUNTING.store(false, Ordering::Relaxed);
    assert_eq!(hub.connections(), 1);
    let poll = ns_per_call(20, || {
        black_box(hub.poll_timeout());
    });
    let fire = ns_per_call(20, || hub.handle_timeout(now, &mut reg));
    println!(
        "1 live + {churn} short-lived connections: poll_timeout {poll:.0} ns, \
         handle_timeout (none) {fire:.0} ns, heap left behind {grown} B"
    );
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default().configure_from_args();
    bench_fan_out(&mut c);
    c.final_summary();
    if bench_mode {
        summary(Duration::from_millis(600));
        println!();
        memory(10_000, Framing::Datagram);
        memory(10_000, Framing::Stream);
        timers(&[1_000, 10_000, 100_000], 200_000);
    } else {
        memory(1_000, Framing::Datagram);
        timers(&[1_000], 1_000);
    }
}
