//! Load generator for the side-by-side comparison (`benches/compare/run.sh`).
//!
//! Drives N WebSocket clients — each a [`ClientSession`] over
//! tokio-tungstenite with a yrs document — against a crdt-socket-sync server
//! (`examples/server.rs`), on one thread, as the Node client drives the
//! incumbents. Configured through the environment exactly like
//! `benches/compare/load-client.mjs` (same workloads, same JSON lines:
//! `{"mark": ...}` at phase boundaries, `{"result": {...}}` at the end).
//! Every loop is bounded in count and time (`MAX_S`).
//!
//! Workloads A and B can be split over several processes: `SHARD=i/n` runs
//! the clients whose index is `i` modulo `n` (the orchestrator starts `n`
//! of them and merges their results). With `BARRIER=1` every mark waits for
//! a `go` line on stdin, so the shards move from phase to phase together.
//! Latencies are measured with the wall clock (the writer and the reader may
//! be in different processes) and reported as a histogram that adds up
//! across shards.
//!
//! ```text
//! cargo run --release --example loadgen --features tokio,yrs -- gen-docs DIR SYNTH_MB
//! WORKLOAD=A URL=ws://127.0.0.1:PORT ROOMS=50 cargo run --release --example loadgen --features tokio,yrs
//! ```

#[path = "../tests/common/trace.rs"]
mod trace;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crdt_socket_sync::adapters::yrs::YrsDocument;
use crdt_socket_sync::client::{ClientConfig, ClientEvent, ClientSession};
use crdt_socket_sync::document::Document;
use crdt_socket_sync::registry::{MemoryRegistry, Registry};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use yrs::types::Change;
use yrs::{Any, Array, GetString, Map, Observable, Out, Text, Transact};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn env_s(k: &str, d: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| d.to_string())
}
fn env_n(k: &str, d: f64) -> f64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}
fn out(v: Value) {
    println!("{v}");
}

/// Milliseconds of the wall clock: comparable between the shards'
/// processes, which is all latencies need.
fn wall_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Lines of stdin (the orchestrator's `go`), read on a thread.
type StdinLines = tokio::sync::mpsc::Receiver<String>;

fn stdin_lines() -> StdinLines {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Prints a phase mark; with `BARRIER=1` (and always for `restart`) waits
/// for the orchestrator's `go`.
async fn mark(ctl: &Ctl, name: &str) {
    out(json!({ "mark": name }));
    if ctl.barrier || name == "restart" {
        let mut lines = ctl.stdin.take();
        if let Some(rx) = lines.as_mut() {
            while let Some(l) = rx.recv().await {
                if l.trim() == "go" {
                    break;
                }
            }
        }
        ctl.stdin.set(lines);
    }
}

/// Bucket of a latency in the histogram: bucket `k` holds
/// `[0.01 ms × 1.02^k, 0.01 ms × 1.02^(k+1))`, so histograms of several
/// shards add up and quantiles are exact to 2 %.
fn lat_bucket(ms: f64) -> i64 {
    ((ms.max(0.01) / 0.01).ln() / 1.02f64.ln()).floor() as i64
}
/// WebSocket frame header for a payload of `n` bytes (unmasked).
fn hdr(n: usize) -> u64 {
    2 + if n >= 126 { 2 } else { 0 } + if n >= 65536 { 6 } else { 0 }
}

/// State shared by every client task (one thread: `Cell`s).
struct Ctl {
    url: String,
    /// Marks wait for `go` (`BARRIER=1`).
    barrier: bool,
    stdin: Cell<Option<StdinLines>>,
    writing: Cell<bool>,
    paused: Cell<bool>,
    stop: Cell<bool>,
    changed: tokio::sync::watch::Sender<u64>,
    rx: Cell<u64>,
    tx: Cell<u64>,
    sent: Cell<u64>,
    pad: String,
}
impl Ctl {
    fn bump(&self) {
        self.changed.send_modify(|g| *g += 1);
    }
    fn ms(&self) -> f64 {
        wall_ms()
    }
}

/// One client's observable state.
#[derive(Default)]
struct St {
    synced: Cell<bool>,
    sync_count: Cell<u32>,
    joined_ms: Cell<Option<f64>>,
    /// Latencies (ms) and count of remote inserts (the observer may run on
    /// any thread in yrs' model, hence the mutex).
    lat: Arc<Mutex<(Vec<f64>, u64)>>,
    /// (E) remote changes of map "slow" and the last `seq` seen in it.
    slow: Arc<Mutex<(u64, i64)>>,
}

struct Spec {
    room: String,
    idx: u64,
    writer: bool,
    write_ms: f64,
    slow: bool,
    preload: Option<Rc<Vec<u8>>>,
    want_len: Option<u32>,
}

fn num(a: &Any) -> Option<f64> {
    match a {
        Any::Number(n) => n.as_f64(),
        _ => None,
    }
}

async fn next_msg(
    ws: &mut Option<Ws>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match ws {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn client(spec: Spec, ctl: Rc<Ctl>, st: Rc<St>) {
    let idx = spec.idx;
    let mut reg = MemoryRegistry::new(move |_: &str| YrsDocument::new());
    let room = spec.room.clone();
    let mut config = ClientConfig {
        peer: format!("c{idx}"),
        seed: idx,
        ..ClientConfig::default()
    };
    if spec.slow {
        config.dead_after = Duration::from_secs(600);
    }
    let mut session = ClientSession::new(config, Instant::now());
    let arr;
    // Set while this client inserts, so its observer skips its own edits.
    let local_edit = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let doc = reg.open(&room).expect("open");
        if let Some(p) = &spec.preload {
            doc.apply(p);
        }
        arr = doc.get_or_insert_array("log");
        let lat = Arc::clone(&st.lat);
        let local = Arc::clone(&local_edit);
        arr.observe("lat", move |txn, ev: &yrs::types::array::ArrayEvent| {
            if local.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            let now = wall_ms();
            let mut l = lat.lock().unwrap();
            for d in ev.delta(txn) {
                if let Change::Added(items) = d {
                    for it in items {
                        if let Out::Any(Any::Map(m)) = it {
                            l.1 += 1;
                            if let (Some(ts), Some(Any::Bool(true))) =
                                (m.get("ts").and_then(num), m.get("m"))
                            {
                                l.0.push(now - ts);
                            }
                        }
                    }
                }
            }
        });
    }
    let smap = {
        let doc = reg.open(&room).unwrap();
        let smap = doc.get_or_insert_map("slow");
        let slow = Arc::clone(&st.slow);
        let local = Arc::clone(&local_edit);
        smap.observe("slow", move |txn, ev: &yrs::types::map::MapEvent| {
            if local.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            let mut s = slow.lock().unwrap();
            s.0 += 1;
            if let Some(
                yrs::types::EntryChange::Inserted(Out::Any(Any::Map(m)))
                | yrs::types::EntryChange::Updated(_, Out::Any(Any::Map(m))),
            ) = ev.keys(txn).get("v")
                && let Some(seq) = m.get("seq").and_then(num)
            {
                s.1 = seq as i64;
            }
        });
        smap
    };
    let text = reg.open(&room).unwrap().get_or_insert_text("text");
    session.open(&mut reg, &room, Instant::now()).expect("open");
    let mut ws: Option<Ws> = None;
    let mut need_dial = true;
    let mut changed = ctl.changed.subscribe();
    let period = Duration::from_secs_f64(spec.write_ms / 1000.0);
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + period.mul_f64((idx % 97) as f64 / 97.0),
        period,
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        if ctl.stop.get() {
            break;
        }
        if need_dial {
            need_dial = false;
            let url = format!("{}/{}", ctl.url, room);
            match tokio::time::timeout(
                Duration::from_secs(10),
                tokio_tungstenite::connect_async_with_config(url, None, true),
            )
            .await
            {
                Ok(Ok((s, _))) => {
                    ws = Some(s);
                    session.connect(Instant::now());
                }
                _ => session.dial_failed(Instant::now()),
            }
        }
        // Drive: transmits, events, timeout.
        let mut wrote = false;
        while let Some(frame) = session.poll_transmit() {
            if let Some(s) = ws.as_mut() {
                ctl.tx
                    .set(ctl.tx.get() + frame.len() as u64 + hdr(frame.len()) + 4);
                if s.feed(Message::Binary(frame.into())).await.is_err() {
                    ws = None;
                    session.transport_lost(Instant::now());
                } else {
                    wrote = true;
                }
            }
        }
        if wrote
            && let Some(s) = ws.as_mut()
            && s.flush().await.is_err()
        {
            ws = None;
            session.transport_lost(Instant::now());
        }
        while let Some(ev) = session.poll_event() {
            match ev {
                ClientEvent::Dial { .. } => need_dial = true,
                ClientEvent::Synced { .. } => {
                    st.synced.set(true);
                    st.sync_count.set(st.sync_count.get() + 1);
                }
                ClientEvent::Closed { .. } => {
                    st.synced.set(false);
                    if let Some(mut s) = ws.take() {
                        let _ = s.close(None).await;
                    }
                }
                _ => {}
            }
        }
        if let Some(want) = spec.want_len
            && st.joined_ms.get().is_none()
        {
            let doc = reg.open(&room).unwrap();
            if text.len(&doc.transact()) == want {
                st.joined_ms.set(Some(ctl.ms()));
            }
        }
        if need_dial {
            continue;
        }
        let deadline = session.poll_timeout();
        let reading = !(spec.slow && ctl.paused.get()) && session.wants_input();
        let writing = spec.writer && ctl.writing.get();
        tokio::select! {
            m = next_msg(&mut ws), if reading => {
                let now = Instant::now();
                match m {
                    Some(Ok(Message::Binary(b))) => {
                        ctl.rx.set(ctl.rx.get() + b.len() as u64 + hdr(b.len()));
                        session.handle_input(now, &b, &mut reg);
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        ws = None;
                        session.transport_lost(now);
                    }
                    Some(Ok(_)) => {}
                }
            }
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d.into()).await, None => std::future::pending().await } } => {
                session.handle_timeout(Instant::now());
            }
            _ = ticker.tick(), if writing => {
                let seq = ctl.sent.get();
                ctl.sent.set(seq + 1);
                let mut m = HashMap::new();
                m.insert("ts".to_string(), Any::Number(ctl.ms().into()));
                m.insert("seq".to_string(), Any::Number((seq as i64).into()));
                m.insert("m".to_string(), Any::Bool(true));
                if !ctl.pad.is_empty() {
                    // Fresh random base64-alphabet text each time, as the Node
                    // client: deflate (negotiated by default) must not turn a
                    // 10 KB update into 50 bytes.
                    m.insert("pad".to_string(), Any::String(random_text(ctl.pad.len(), seq ^ idx << 40).into()));
                }
                {
                    let doc = reg.open(&room).unwrap();
                    local_edit.store(true, std::sync::atomic::Ordering::Relaxed);
                    let mut t = doc.transact_mut();
                    if ctl.pad.is_empty() {
                        arr.push_back(&mut t, Any::Map(Arc::new(m)));
                    } else {
                        smap.insert(&mut t, "v", Any::Map(Arc::new(m)));
                    }
                    drop(t);
                    local_edit.store(false, std::sync::atomic::Ordering::Relaxed);
                }
                let _ = session.flush_local(&mut reg, &room, Instant::now());
            }
            _ = changed.changed() => {}
        }
    }
    session.close(Instant::now());
    if let Some(mut s) = ws.take() {
        while let Some(frame) = session.poll_transmit() {
            let _ = s.feed(Message::Binary(frame.into())).await;
        }
        let _ = s.close(None).await;
    }
}

struct Pool {
    ctl: Rc<Ctl>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}
impl Pool {
    fn spawn(&mut self, spec: Spec) -> Rc<St> {
        let st = Rc::new(St::default());
        self.handles.push(tokio::task::spawn_local(client(
            spec,
            Rc::clone(&self.ctl),
            Rc::clone(&st),
        )));
        st
    }
    async fn shutdown(self) {
        self.ctl.stop.set(true);
        self.ctl.bump();
        for h in self.handles {
            let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
        }
    }
}

async fn wait_all(sts: &[Rc<St>], pred: impl Fn(&St) -> bool, max: Duration) -> bool {
    let end = Instant::now() + max;
    while Instant::now() < end {
        if sts.iter().all(|s| pred(s)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sts.iter().all(|s| pred(s))
}

fn quantiles(mut lat: Vec<f64>) -> Value {
    lat.sort_by(|a, b| a.total_cmp(b));
    let q = |x: f64| {
        if lat.is_empty() {
            Value::Null
        } else {
            json!(lat[((lat.len() as f64 * x) as usize).min(lat.len() - 1)])
        }
    };
    json!({ "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": q(1.0) })
}

fn spec(room: &str, idx: u64) -> Spec {
    Spec {
        room: room.into(),
        idx,
        writer: false,
        write_ms: 1000.0,
        slow: false,
        preload: None,
        want_len: None,
    }
}

/// This process's part of `0..n` clients: `SHARD=i/n` (default `0/1`).
fn shard() -> (u64, u64) {
    let s = env_s("SHARD", "0/1");
    let (i, n) = s.split_once('/').unwrap_or(("0", "1"));
    let n = n.parse().unwrap_or(1u64).max(1);
    (i.parse().unwrap_or(0u64).min(n - 1), n)
}

/// (A) and (B). After the writers stop, deliveries drain until none came
/// for `QUIET_MS` (or `DRAIN_MAX_S` passed): what is still missing then is
/// reported as `undelivered`, and `drain_ms` says how long the last ones took.
async fn live(mut pool: Pool) -> Value {
    let rooms = env_n("ROOMS", 10.0) as u64;
    let per_room = env_n("PER_ROOM", 3.0) as u64;
    let writers = env_n("WRITERS", 1.0) as u64;
    let write_ms = env_n("WRITE_MS", 100.0);
    let duration = env_n("DURATION_S", 10.0);
    let restart = env_s("RESTART", "0") == "1";
    let quiet = Duration::from_millis(env_n("QUIET_MS", 500.0) as u64);
    let drain_max = Duration::from_secs_f64(env_n("DRAIN_MAX_S", 20.0));
    let (shard, shards) = shard();
    let mut sts = Vec::new();
    for r in 0..rooms {
        for i in 0..per_room {
            let idx = r * per_room + i;
            if idx % shards != shard {
                continue;
            }
            let mut s = spec(&format!("room-{r}"), idx);
            s.writer = i < writers;
            s.write_ms = write_ms;
            sts.push(pool.spawn(s));
        }
        if r % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let all_synced = wait_all(&sts, |s| s.synced.get(), Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ctl = Rc::clone(&pool.ctl);
    mark(&ctl, "steady_start").await;
    let (rx0, tx0) = (ctl.rx.get(), ctl.tx.get());
    let t0 = Instant::now();
    ctl.writing.set(true);
    ctl.bump();
    tokio::time::sleep(Duration::from_secs_f64(duration)).await;
    ctl.writing.set(false);
    ctl.bump();
    let write_s = t0.elapsed().as_secs_f64();
    mark(&ctl, "write_end").await;
    let delivered = |sts: &[Rc<St>]| -> u64 {
        sts.iter()
            .map(|s| s.lat.lock().unwrap().0.len() as u64)
            .sum()
    };
    let drain_start = Instant::now();
    let (mut last, mut last_change) = (delivered(&sts), drain_start);
    while last_change.elapsed() < quiet && drain_start.elapsed() < drain_max {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = delivered(&sts);
        if now != last {
            (last, last_change) = (now, Instant::now());
        }
    }
    let drain_s = (last_change - drain_start).as_secs_f64();
    mark(&ctl, "steady_end").await;
    let (rx, tx) = (ctl.rx.get() - rx0, ctl.tx.get() - tx0);
    let sent = ctl.sent.get();
    let mut lat = Vec::new();
    for s in &sts {
        let mut l = s.lat.lock().unwrap();
        lat.append(&mut l.0);
    }
    let recv = lat.len() as u64;
    let mut hist: std::collections::BTreeMap<i64, u64> = Default::default();
    for l in &lat {
        *hist.entry(lat_bucket(*l)).or_default() += 1;
    }
    let hist: serde_json::Map<String, Value> = hist
        .into_iter()
        .map(|(k, n)| (k.to_string(), json!(n)))
        .collect();
    // Exact for one shard; the orchestrator recomputes both from the sums
    // when there are several.
    let expected = sent * (per_room - 1);
    let mut res = json!({
        "clients": sts.len(), "all_synced": all_synced, "sent": sent, "delivered": recv, "expected": expected,
        "undelivered": expected as i64 - recv as i64, "write_s": write_s, "drain_ms": drain_s * 1000.0,
        "delivered_per_s": recv as f64 / (write_s + drain_s),
        "shard": shard, "shards": shards, "lat_hist": hist,
        "rx_bytes": rx, "tx_bytes": tx,
        "rx_bytes_per_delivered": if recv > 0 { json!(rx as f64 / recv as f64) } else { Value::Null },
        "tx_bytes_per_sent": if sent > 0 { json!(tx as f64 / sent as f64) } else { Value::Null },
    });
    res.as_object_mut()
        .unwrap()
        .extend(quantiles(lat).as_object().unwrap().clone());
    if restart {
        mark(&ctl, "restart").await;
        let t1 = Instant::now();
        let before: Vec<u32> = sts.iter().map(|s| s.sync_count.get()).collect();
        let max = Duration::from_secs_f64(env_n("RESYNC_MAX_S", 60.0));
        let end = Instant::now() + max;
        let done = |sts: &[Rc<St>]| {
            sts.iter()
                .zip(&before)
                .filter(|(s, b)| s.synced.get() && s.sync_count.get() > **b)
                .count()
        };
        while done(&sts) < sts.len() && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = done(&sts);
        res["resync_ms"] = if n == sts.len() {
            json!(t1.elapsed().as_secs_f64() * 1000.0)
        } else {
            Value::Null
        };
        res["resynced"] = json!(n);
    }
    pool.shutdown().await;
    res
}

/// (C).
async fn idle(mut pool: Pool) -> Value {
    let conns = env_n("CONNS", 500.0) as u64;
    let docs = env_n("DOCS", 100.0) as u64;
    let batch = env_n("BATCH", 100.0) as u64;
    let settle = Duration::from_millis(env_n("SETTLE_MS", 3000.0) as u64);
    tokio::time::sleep(Duration::from_secs(1)).await;
    mark(&pool.ctl, "c0").await;
    let mut sts = Vec::new();
    let connect = async |pool: &mut Pool, from: u64, to: u64, sts: &mut Vec<Rc<St>>| {
        let mut i = from;
        while i < to {
            let group: Vec<_> = (i..to.min(i + batch))
                .map(|j| pool.spawn(spec(&format!("doc-{}", j % docs), j)))
                .collect();
            wait_all(&group, |s| s.synced.get(), Duration::from_secs(30)).await;
            sts.extend(group);
            i += batch;
        }
    };
    connect(&mut pool, 0, docs, &mut sts).await;
    tokio::time::sleep(settle).await;
    mark(&pool.ctl, "c1").await;
    connect(&mut pool, docs, conns, &mut sts).await;
    tokio::time::sleep(settle).await;
    mark(&pool.ctl, "c2").await;
    let synced = sts.iter().filter(|s| s.synced.get()).count();
    tokio::time::sleep(Duration::from_millis(env_n("HOLD_MS", 2000.0) as u64)).await;
    mark(&pool.ctl, "c3").await;
    pool.shutdown().await;
    json!({ "conns": conns, "docs": docs, "synced": synced })
}

fn text_len(update: &[u8]) -> u32 {
    let mut d = YrsDocument::new();
    d.apply(update);
    let t = d.get_or_insert_text("text");
    t.len(&d.transact())
}

/// (D).
async fn bigsync(mut pool: Pool) -> Value {
    let update = Rc::new(std::fs::read(env_s("DOC_FILE", "")).expect("DOC_FILE"));
    let joiners = env_n("JOINERS", 10.0) as u64;
    let want = text_len(&update);
    let mut s = spec("big", 0);
    s.preload = Some(Rc::clone(&update));
    let seeder = pool.spawn(s);
    wait_all(&[seeder], |s| s.synced.get(), Duration::from_secs(120)).await;
    let mut seeded = false;
    for i in 0..60 {
        let mut p = spec("big", 10_000 + i);
        p.want_len = Some(want);
        let probe = pool.spawn(p);
        seeded = wait_all(
            &[probe],
            |s| s.joined_ms.get().is_some(),
            Duration::from_secs(10),
        )
        .await;
        if seeded {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    mark(&pool.ctl, "join_start").await;
    let t0 = pool.ctl.ms();
    let sts: Vec<_> = (0..joiners)
        .map(|i| {
            let mut s = spec("big", 1 + i);
            s.want_len = Some(want);
            pool.spawn(s)
        })
        .collect();
    let ok = wait_all(
        &sts,
        |s| s.joined_ms.get().is_some(),
        Duration::from_secs_f64(env_n("JOIN_MAX_S", 120.0)),
    )
    .await;
    let total = pool.ctl.ms() - t0;
    mark(&pool.ctl, "join_end").await;
    let mut times: Vec<f64> = sts
        .iter()
        .filter_map(|s| s.joined_ms.get().map(|t| t - t0))
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    // Optionally keep the synced joiners connected (memory they hold).
    tokio::time::sleep(Duration::from_millis(env_n("HOLD_MS", 0.0) as u64)).await;
    pool.shutdown().await;
    json!({ "doc_bytes": update.len(), "text_len": want, "seeded": seeded, "joiners": joiners, "all_joined": ok,
        "joined": times.len(), "all_joined_ms": if ok { json!(total) } else { Value::Null },
        "join_p50_ms": times.get(times.len() / 2), "join_max_ms": times.last() })
}

/// (E): the writer overwrites entry "v" of map "slow" (the document stays
/// small), the reader stops reading its socket for `PAUSE_S`.
async fn slow_reader(mut pool: Pool) -> Value {
    let rate = env_n("RATE_HZ", 200.0);
    let duration = env_n("DURATION_S", 20.0);
    let pause_at = env_n("PAUSE_AT_S", 2.0);
    let pause = env_n("PAUSE_S", 10.0);
    let mut w = spec("slow", 0);
    w.writer = true;
    w.write_ms = 1000.0 / rate;
    let writer = pool.spawn(w);
    let mut r = spec("slow", 1);
    r.slow = true;
    let reader = pool.spawn(r);
    wait_all(
        &[Rc::clone(&writer), Rc::clone(&reader)],
        |s| s.synced.get(),
        Duration::from_secs(30),
    )
    .await;
    let ctl = Rc::clone(&pool.ctl);
    mark(&ctl, "e_start").await;
    let t0 = Instant::now();
    ctl.writing.set(true);
    ctl.bump();
    tokio::time::sleep(Duration::from_secs_f64(pause_at)).await;
    ctl.paused.set(true);
    ctl.bump();
    mark(&ctl, "pause").await;
    tokio::time::sleep(Duration::from_secs_f64(pause)).await;
    ctl.paused.set(false);
    ctl.bump();
    mark(&ctl, "resume").await;
    let t_resume = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(duration).saturating_sub(t0.elapsed())).await;
    ctl.writing.set(false);
    ctl.bump();
    let sent = ctl.sent.get();
    let got = || *reader.slow.lock().unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    while got().1 != sent as i64 - 1 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let caught = got().1 == sent as i64 - 1;
    let catch_up = t_resume.elapsed().as_secs_f64() * 1000.0;
    mark(&ctl, "e_end").await;
    let res = json!({ "sent": sent, "reader_events": got().0, "caught_up": caught,
        "catch_up_ms_after_resume": if caught { json!(catch_up) } else { Value::Null },
        "reader_reconnected": reader.sync_count.get() > 1, "update_bytes": ctl.pad.len(), "rate_hz": rate, "pause_s": pause });
    pool.shutdown().await;
    res
}

/// `len` pseudo-random characters from the base64 alphabet (6 bits each).
fn random_text(len: usize, seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x >> 58) as usize] as char
        })
        .collect()
}

/// Writes `paper.bin` (the automerge-paper trace's final yrs state, text
/// "text") and `synth.bin` (`mb` MB of pseudo-random base64-alphabet text
/// inserted in 1 KiB pieces at pseudo-random positions) as Yjs v1 updates, readable by Yjs and yrs alike.
fn gen_docs(dir: &str, mb: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let t = trace::load("automerge-paper");
    let doc = YrsDocument::new();
    let text = doc.get_or_insert_text("text");
    for txn in &t.txns {
        let mut tx = doc.transact_mut();
        for p in &txn.patches {
            if p.del > 0 {
                text.remove_range(&mut tx, p.pos as u32, p.del as u32);
            }
            if !p.ins.is_empty() {
                text.insert(&mut tx, p.pos as u32, &p.ins);
            }
        }
    }
    assert_eq!(text.get_string(&doc.transact()), t.end_content);
    std::fs::write(format!("{dir}/paper.bin"), doc.snapshot()).unwrap();
    let doc = YrsDocument::new();
    let text = doc.get_or_insert_text("text");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..(mb * 1024 * 1024 / 1024) {
        let chunk = random_text(1024, i as u64 + 1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut tx = doc.transact_mut();
        let len = text.len(&tx);
        text.insert(&mut tx, (x % (len as u64 + 1)) as u32, &chunk);
    }
    std::fs::write(format!("{dir}/synth.bin"), doc.snapshot()).unwrap();
    out(
        json!({ "paper_bytes": std::fs::metadata(format!("{dir}/paper.bin")).unwrap().len(),
        "synth_bytes": std::fs::metadata(format!("{dir}/synth.bin")).unwrap().len() }),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("gen-docs") {
        gen_docs(
            &args[2],
            args.get(3).and_then(|s| s.parse().ok()).unwrap_or(2),
        );
        return;
    }
    let max_s = env_n("MAX_S", 600.0);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs_f64(max_s));
        println!("{}", json!({ "error": "MAX_S exceeded" }));
        std::process::exit(2);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&rt, async {
        let (changed, _) = tokio::sync::watch::channel(0);
        let pad_bytes = if env_s("WORKLOAD", "A") == "E" {
            env_n("UPDATE_BYTES", 10000.0) as usize
        } else {
            0
        };
        let ctl = Rc::new(Ctl {
            url: env_s("URL", "ws://127.0.0.1:8080"),
            barrier: env_s("BARRIER", "0") == "1",
            stdin: Cell::new(Some(stdin_lines())),
            writing: Cell::new(false),
            paused: Cell::new(false),
            stop: Cell::new(false),
            changed,
            rx: Cell::new(0),
            tx: Cell::new(0),
            sent: Cell::new(0),
            pad: "x".repeat(pad_bytes),
        });
        let pool = Pool {
            ctl,
            handles: Vec::new(),
        };
        match env_s("WORKLOAD", "A").as_str() {
            "A" | "B" => live(pool).await,
            "C" => idle(pool).await,
            "D" => bigsync(pool).await,
            "E" => slow_reader(pool).await,
            w => panic!("unknown workload {w}"),
        }
    });
    let mut r = json!({ "target": "ours", "workload": env_s("WORKLOAD", "A") });
    r.as_object_mut()
        .unwrap()
        .extend(result.as_object().unwrap().clone());
    out(json!({ "result": r }));
    let _ = RefCell::new(()); // keep imports tidy across cfgs
    std::process::exit(0);
}
