//! Durable update throughput: the hub with a [`SqliteRegistry`] next to the
//! same hub with a [`MemoryRegistry`], in the same run.
//!
//! 100 in-process writers, each with its own document, keep a window of
//! updates in flight (like clients typing while acks travel). A round is
//! what a server loop sees under that load: every writer's frames go through
//! `Hub::handle_input_deferred`, then one `Hub::flush` (for SQLite: one
//! transaction, one fsync: group commit), then every ack is drained.
//! Timed: the hub's side only (inputs, flush, draining transmits); the
//! client sessions run untimed. Every update of a durable run is checked to
//! be acknowledged `durable`.
//!
//! `cargo bench --bench durable --features sqlite` prints the medians of
//! several samples (updates/s) and the durable/memory ratio. Without
//! `--bench` (e.g. `cargo test --all-targets`) it runs once, small.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crdt_socket_sync::client::{ClientConfig, ClientEvent, ClientSession};
use crdt_socket_sync::registry::{MemoryRegistry, Registry};
use crdt_socket_sync::server::{AllowAll, ConnId, Hub, ServerConfig};
use crdt_socket_sync::store::{SqliteConfig, SqliteRegistry, Synchronous};
use crdt_socket_sync::testing::OpLog;

const WRITERS: usize = 100;

struct Writer {
    session: ClientSession,
    reg: MemoryRegistry<OpLog>,
    conn: ConnId,
    doc: String,
    last_seq: u64,
    durable: u64,
}

struct Sample {
    updates: u64,
    hub_time: Duration,
    commits: Option<u64>,
}

fn deliver<R: Registry<Doc = OpLog>>(hub: &mut Hub<AllowAll>, reg: &mut R, writers: &mut [Writer]) {
    for _ in 0..100 {
        let mut moved = false;
        for w in writers.iter_mut() {
            while let Some(frame) = w.session.poll_transmit() {
                moved = true;
                hub.handle_input(w.conn, Instant::now(), &frame, reg);
            }
        }
        while let Some((conn, frame)) = hub.poll_transmit() {
            moved = true;
            let w = &mut writers[conn.0 as usize];
            w.session.handle_input(Instant::now(), &frame, &mut w.reg);
        }
        while hub.poll_event().is_some() {}
        for w in writers.iter_mut() {
            while w.session.poll_event().is_some() {}
        }
        if !moved {
            return;
        }
    }
}

/// Runs rounds of `window` updates per writer until the hub spent `budget`.
fn sample<R: Registry<Doc = OpLog>>(
    reg: &mut R,
    window: usize,
    budget: Duration,
    durable: bool,
) -> Sample {
    let mut hub = Hub::new(ServerConfig::default(), AllowAll);
    let now = Instant::now();
    let mut writers: Vec<Writer> = (0..WRITERS)
        .map(|i| {
            let config = ClientConfig {
                peer: format!("w{i}"),
                offer_deflate: false,
                ..ClientConfig::default()
            };
            let mut session = ClientSession::new(config, now);
            let conn = hub.accept(now);
            assert_eq!(conn.0 as usize, i);
            session.connect(now);
            let mut reg = MemoryRegistry::new(move |_: &str| OpLog::new(i as u32 + 1));
            let doc = format!("doc{i}");
            session.open(&mut reg, &doc, now).unwrap();
            Writer {
                session,
                reg,
                conn,
                doc,
                last_seq: 0,
                durable: 0,
            }
        })
        .collect();
    deliver(&mut hub, reg, &mut writers);
    let mut hub_time = Duration::ZERO;
    let mut updates = 0u64;
    let mut inputs: Vec<(ConnId, Vec<u8>)> = Vec::new();
    let mut outputs: Vec<(ConnId, Vec<u8>)> = Vec::new();
    let mut n = 0u64;
    while hub_time < budget {
        // The writers type (untimed).
        inputs.clear();
        for w in writers.iter_mut() {
            for _ in 0..window {
                n += 1;
                let doc = w.reg.open(&w.doc).unwrap();
                doc.edit(format!("key{n:08}").as_bytes());
                if let Some(seq) = w.session.flush_local(&mut w.reg, &w.doc, now).unwrap() {
                    w.last_seq = seq;
                    updates += 1;
                }
            }
            while let Some(frame) = w.session.poll_transmit() {
                inputs.push((w.conn, frame));
            }
        }
        // The server: every input, one flush, every ack (timed).
        let t = Instant::now();
        for (conn, frame) in &inputs {
            hub.handle_input_deferred(*conn, now, frame, reg);
        }
        hub.flush(reg);
        outputs.clear();
        while let Some(out) = hub.poll_transmit() {
            outputs.push(out);
        }
        while hub.poll_event().is_some() {}
        hub_time += t.elapsed();
        // The acks reach the writers (untimed).
        for (conn, frame) in &outputs {
            let w = &mut writers[conn.0 as usize];
            w.session.handle_input(now, frame, &mut w.reg);
            while let Some(e) = w.session.poll_event() {
                if let ClientEvent::Acknowledged { durable, .. } = e {
                    w.durable = w.durable.max(durable);
                }
            }
        }
    }
    if durable {
        for w in &writers {
            assert_eq!(w.durable, w.last_seq, "every update acknowledged durable");
        }
    }
    Sample {
        updates,
        hub_time,
        commits: None,
    }
}

fn temp_db(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("css-bench-durable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{tag}.sqlite"));
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
    path
}

fn rate(s: &Sample) -> f64 {
    s.updates as f64 / s.hub_time.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (samples, budget) = if full {
        (7, Duration::from_millis(1500))
    } else {
        (1, Duration::from_millis(20))
    };
    // `CSS_BENCH_WINDOWS=1,8` picks the windows.
    let windows: Vec<usize> = match std::env::var("CSS_BENCH_WINDOWS") {
        Ok(v) => v.split(',').filter_map(|w| w.trim().parse().ok()).collect(),
        Err(_) if full => vec![1, 8, 32, 128],
        Err(_) => vec![4],
    };
    println!(
        "durable update throughput, {WRITERS} writers, one document each, hub time only \
         ({samples} samples, median)"
    );
    println!(
        "{:>7} {:>10} {:>14} {:>14} {:>8} {:>14} {:>8}",
        "window", "batch", "memory upd/s", "FULL upd/s", "ratio", "NORMAL upd/s", "ratio"
    );
    for &window in &windows {
        let (mut mem, mut full_sync, mut normal) = (Vec::new(), Vec::new(), Vec::new());
        let mut commits = 0;
        let mut rounds_updates = 0;
        for _ in 0..samples {
            // Interleaved, so drift in machine load hits all three alike.
            let mut reg = MemoryRegistry::new(|_: &str| OpLog::new(0));
            mem.push(rate(&sample(&mut reg, window, budget, false)));
            for (sync, out) in [
                (Synchronous::Full, &mut full_sync),
                (Synchronous::Normal, &mut normal),
            ] {
                let config = SqliteConfig {
                    synchronous: sync,
                    ..SqliteConfig::default()
                };
                let mut reg =
                    SqliteRegistry::open_with(temp_db("bench"), config, |_: &str| OpLog::new(0))
                        .unwrap();
                let mut s = sample(&mut reg, window, budget, true);
                s.commits = Some(reg.stats().commits);
                if sync == Synchronous::Full {
                    commits += s.commits.unwrap_or(0);
                    rounds_updates += s.updates;
                }
                out.push(rate(&s));
            }
        }
        let (m, f, n) = (median(mem), median(full_sync), median(normal));
        println!(
            "{window:>7} {:>10.0} {m:>14.0} {f:>14.0} {:>7.0}% {n:>14.0} {:>7.0}%",
            rounds_updates as f64 / commits.max(1) as f64,
            100.0 * f / m,
            100.0 * n / m
        );
    }
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("css-bench-durable-{}", std::process::id())),
    );
}
