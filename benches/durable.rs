//! Durable update throughput: the hub with a [`SqliteRegistry`] next to the
//! same hub with a [`MemoryRegistry`], in the same run.
//!
//! 100 writers, each with its own document, send updates concurrently. The
//! writers' frames are made up front (untimed), in rounds of `window`
//! updates per writer: a round is what a server loop receives from its 100
//! clients between two commits. Timed, in wall-clock time: the server side
//! only, as the hub task runs it: every frame of a round through
//! `Hub::handle_input`, one commit, completed commits polled, the
//! acknowledgements drained; after the last round, until every update is
//! acknowledged `durable` (SQLite) or applied (memory). The SQLite
//! committer thread runs concurrently, on the same machine, inside the
//! timed span. Afterwards every writer's session checks (untimed) that its
//! last update was acknowledged `durable`.
//!
//! Columns:
//! - `memory`: `MemoryRegistry` (nothing durable), `Hub::commit`.
//! - `FULL async`: `SqliteRegistry`, `synchronous=FULL` (fsync per
//!   transaction), `Hub::commit` + `Hub::poll_commits`: the hub never waits
//!   for the disk; the committer writes everything handed over since its
//!   last transaction in one transaction.
//! - `FULL flush`: the same registry driven with `Hub::flush` (commit and
//!   wait, one fsync per round): the path before asynchronous durability.
//! - `NORMAL async`: `synchronous=NORMAL` (no fsync per commit).
//!
//! `cargo bench --bench durable --features sqlite` prints the medians of
//! several interleaved samples (updates/s), the durable/memory ratios, and
//! the committer's commits per second and updates per commit. Without
//! `--bench` (e.g. `cargo test --all-targets`) it runs once, small.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
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
}

/// How the server loop commits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Drive {
    /// `Hub::commit`, then `Hub::poll_commits` (and, at the end, waiting for
    /// the registry's commit waker).
    Commit,
    /// `Hub::flush`: commit and wait.
    Flush,
}

struct Sample {
    updates: u64,
    time: Duration,
    /// Registry transactions during the timed span.
    commits: u64,
}

/// Moves frames both ways until nothing moves (setup, untimed).
fn settle<R: Registry<Doc = OpLog>>(hub: &mut Hub<AllowAll>, reg: &mut R, writers: &mut [Writer]) {
    for _ in 0..100 {
        let mut moved = false;
        for w in writers.iter_mut() {
            while let Some(frame) = w.session.poll_transmit() {
                moved = true;
                hub.handle_input(w.conn, Instant::now(), &frame, reg);
                hub.flush(reg);
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

/// `rounds` rounds of `window` updates per writer.
fn sample<R: Registry<Doc = OpLog>>(
    reg: &mut R,
    woken: Option<&mpsc::Receiver<()>>,
    drive: Drive,
    window: usize,
    rounds: usize,
    commits: impl Fn(&R) -> u64,
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
            }
        })
        .collect();
    settle(&mut hub, reg, &mut writers);
    if let Some(w) = woken {
        while w.try_recv().is_ok() {}
    }
    // The writers type (untimed): the frames of every round.
    let mut n = 0u64;
    let mut updates = 0u64;
    let plan: Vec<Vec<(ConnId, Vec<u8>)>> = (0..rounds)
        .map(|_| {
            let mut frames = Vec::new();
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
                    frames.push((w.conn, frame));
                }
            }
            frames
        })
        .collect();
    let commits_before = commits(reg);
    let mut outputs: Vec<(ConnId, Vec<u8>)> = Vec::new();
    // The server (timed).
    let t = Instant::now();
    for frames in &plan {
        for (conn, frame) in frames {
            hub.handle_input(*conn, now, frame, reg);
        }
        match drive {
            Drive::Commit => {
                hub.commit(reg);
                hub.poll_commits(reg);
            }
            Drive::Flush => hub.flush(reg),
        }
        while let Some(out) = hub.poll_transmit() {
            outputs.push(out);
        }
        while hub.poll_event().is_some() {}
    }
    while hub.commits_in_flight() > 0 {
        if let Some(w) = woken {
            w.recv_timeout(Duration::from_secs(30))
                .expect("the committer reports");
        }
        hub.poll_commits(reg);
        while let Some(out) = hub.poll_transmit() {
            outputs.push(out);
        }
        while hub.poll_event().is_some() {}
    }
    let time = t.elapsed();
    let commits = commits(reg) - commits_before;
    // The acks reach the writers (untimed): all durable when stored.
    let durable = woken.is_some();
    let mut acked = vec![(0u64, 0u64); WRITERS];
    for (conn, frame) in &outputs {
        let w = &mut writers[conn.0 as usize];
        w.session.handle_input(now, frame, &mut w.reg);
        while let Some(e) = w.session.poll_event() {
            if let ClientEvent::Acknowledged {
                applied, durable, ..
            } = e
            {
                let a = &mut acked[conn.0 as usize];
                *a = (a.0.max(applied), a.1.max(durable));
            }
        }
    }
    for (w, (applied, dur)) in writers.iter().zip(&acked) {
        assert_eq!(*applied, w.last_seq, "every update acknowledged");
        if durable {
            assert_eq!(*dur, w.last_seq, "every update acknowledged durable");
        }
    }
    Sample {
        updates,
        time,
        commits,
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

/// A fresh SQLite registry and the channel its commit waker sends on.
fn sqlite(sync: Synchronous) -> (SqliteRegistry<OpLog>, mpsc::Receiver<()>) {
    let config = SqliteConfig {
        synchronous: sync,
        ..SqliteConfig::default()
    };
    let mut reg = SqliteRegistry::open_with(temp_db("bench"), config, |_: &str| OpLog::new(0))
        .expect("the bench database opens");
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    reg.set_commit_waker(Arc::new(move || {
        let _ = tx.lock().map(|t| t.send(()));
    }));
    (reg, rx)
}

fn rate(s: &Sample) -> f64 {
    s.updates as f64 / s.time.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[derive(Default)]
struct Column {
    rates: Vec<f64>,
    commits_per_s: Vec<f64>,
    per_commit: Vec<f64>,
}

impl Column {
    fn push(&mut self, s: &Sample) {
        self.rates.push(rate(s));
        self.commits_per_s
            .push(s.commits as f64 / s.time.as_secs_f64());
        self.per_commit
            .push(s.updates as f64 / s.commits.max(1) as f64);
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let samples: usize = std::env::var("CSS_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 7 } else { 1 });
    // Updates per writer per sample.
    let per_writer: usize = if full { 5000 } else { 8 };
    // `CSS_BENCH_WINDOWS=1,8` picks the windows (updates per writer per
    // server round).
    let windows: Vec<usize> = match std::env::var("CSS_BENCH_WINDOWS") {
        Ok(v) => v.split(',').filter_map(|w| w.trim().parse().ok()).collect(),
        Err(_) if full => vec![1, 8, 32],
        Err(_) => vec![4],
    };
    println!(
        "durable update throughput: {WRITERS} writers, one document each, {per_writer} updates \
         each per sample; server wall time until every update is acknowledged (durable for \
         SQLite); median of {samples} interleaved samples"
    );
    println!(
        "{:>6} {:>12} {:>12} {:>6} {:>11} {:>8} {:>12} {:>6} {:>12} {:>6}",
        "window",
        "memory/s",
        "FULL async/s",
        "ratio",
        "commits/s",
        "upd/cmt",
        "FULL flush/s",
        "ratio",
        "NORMAL as/s",
        "ratio"
    );
    for &window in &windows {
        let rounds = (per_writer / window).max(1);
        let (mut mem, mut full_async, mut full_flush, mut normal) = (
            Column::default(),
            Column::default(),
            Column::default(),
            Column::default(),
        );
        for _ in 0..samples {
            // Interleaved, so drift in machine load hits all columns alike.
            let mut reg = MemoryRegistry::new(|_: &str| OpLog::new(0));
            mem.push(&sample(
                &mut reg,
                None,
                Drive::Commit,
                window,
                rounds,
                |_| 0,
            ));
            for (sync, drive, out) in [
                (Synchronous::Full, Drive::Commit, &mut full_async),
                (Synchronous::Full, Drive::Flush, &mut full_flush),
                (Synchronous::Normal, Drive::Commit, &mut normal),
            ] {
                let (mut reg, woken) = sqlite(sync);
                let s = sample(&mut reg, Some(&woken), drive, window, rounds, |r| {
                    r.stats().commits
                });
                out.push(&s);
            }
        }
        let m = median(mem.rates);
        let fa = median(full_async.rates);
        let ff = median(full_flush.rates);
        let na = median(normal.rates);
        println!(
            "{window:>6} {m:>12.0} {fa:>12.0} {:>5.0}% {:>11.0} {:>8.1} {ff:>12.0} {:>5.0}% {na:>12.0} {:>5.0}%",
            100.0 * fa / m,
            median(full_async.commits_per_s),
            median(full_async.per_commit),
            100.0 * ff / m,
            100.0 * na / m,
        );
    }
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("css-bench-durable-{}", std::process::id())),
    );
}
