//! Abuse over the real WebSocket server: `examples/server.rs` (tokio,
//! SQLite in a scratch directory, yrs documents) runs as a child process,
//! so its resident memory can be read from `/proc/<pid>/status`, while
//! attackers speak to it over loopback and two honest clients
//! ([`WebSocketClient`]) keep editing one document.
//!
//! Each case starts a fresh server and checks, for one kind of abuse:
//! - the server's RSS growth (peak during the attack over the level before
//!   it) stays under [`RSS_BOUND_MIB`];
//! - the offender is closed with a typed reason (the protocol `Close`
//!   message, decoded, and the WebSocket close code after it), where the
//!   case calls for a close;
//! - the honest clients keep converging: during the attack they edit in
//!   rounds and each sees the other's edit within [`ROUND_TIMEOUT`];
//! - the server's log stays within its log limits (the example logs at
//!   `info`, rate-limited per connection and kind and in total).
//!
//! Cases: garbage speakers; the amplification frames (an `UpdateBatch` of
//! 4 M empty updates deflated into ~18 KB, an application-message flood at
//! a slow reader on another document, 1,024 `SyncRequest`s in one frame
//! against a 1 MB document); protocol fragments before `Hello`; 1,000
//! silent sockets; a peer cycling 20,000 documents. Every loop is bounded
//! in count and time; the cases run one at a time (they measure one
//! server's memory), a watchdog kills a server whose RSS runs away.
//!
//! `CSS_ABUSE_SERVER` overrides the server binary (default: the `server`
//! example, built with this test's features).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crdt_socket_sync::Limits;
use crdt_socket_sync::adapters::yrs::YrsDocument;
use crdt_socket_sync::client::{ClientConfig, Status};
use crdt_socket_sync::registry::MemoryRegistry;
use crdt_socket_sync::transport::tokio::connect;
use crdt_socket_sync::transport::{ClientOptions, WebSocketClient};
use crdt_socket_sync::wire::{
    Bytes, CloseReason, Compression, DocId, Encoder, Message, MessageDecoder, PeerLimits, Route,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tungstenite::Message as WsMessage;
use yrs::{Array, GetString, ReadTxn, Text, Transact};

#[path = "common/crash.rs"]
#[allow(dead_code)]
mod crash_kit;

/// Largest RSS growth of the server one case may cause.
const RSS_BOUND_MIB: u64 = 32;
/// The watchdog kills a server that grew this much (the case then fails):
/// today's main grows by gigabytes on some of these inputs.
const RSS_KILL_MIB: u64 = 768;
/// An honest round (each client edits, each sees the other's edit) must
/// finish within this, attack or not (a loaded 2-core CI machine).
const ROUND_TIMEOUT: Duration = Duration::from_secs(20);
/// The server example's log limits (`LogLimits::default()`): lines per
/// window, and the window.
const LOG_LINES_PER_WINDOW: u64 = 1001;
const LOG_WINDOW: Duration = Duration::from_secs(10);

type Reg = MemoryRegistry<YrsDocument>;
type Client = WebSocketClient<Reg>;
type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, WsMessage>;
type Source = SplitStream<WebSocketStream<MaybeTlsStream<TcpStream>>>;

/// The cases measure one server process each: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn server_binary() -> PathBuf {
    static BIN: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut bin = BIN.lock().unwrap_or_else(|e| e.into_inner());
    bin.get_or_insert_with(|| {
        crash_kit::example_binary("CSS_ABUSE_SERVER", "server", &crash_kit::test_features())
    })
    .clone()
}

/// The server's log, as counted by the thread reading its output.
#[derive(Default)]
struct LogTally {
    lines: AtomicU64,
    bytes: AtomicU64,
    /// The first warnings, for the report.
    sample: Mutex<Vec<String>>,
}

/// One server process; killed when dropped.
struct Server {
    child: Child,
    pid: u32,
    url: String,
    dir: PathBuf,
    log: Arc<LogTally>,
    started: Instant,
}

impl Server {
    fn start(case: &str, max_connections: usize) -> Server {
        let bin = server_binary();
        let dir = crash_kit::scratch_dir(&format!("css-abuse-{case}"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(bin)
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .args(["--data-dir", dir.to_str().unwrap()])
            .args(["--storage", "sqlite", "--crdt", "yrs"])
            .args(["--max-connections", &max_connections.to_string()])
            // The example's default filter: its log limits are under test.
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the server starts");
        let log = Arc::new(LogTally::default());
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    log.lines.fetch_add(1, Ordering::Relaxed);
                    log.bytes
                        .fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
                    let mut sample = log.sample.lock().unwrap();
                    if line.starts_with("crdt-socket-sync server:")
                        || (sample.len() < 8 && line.contains("WARN"))
                    {
                        sample.push(line);
                    }
                }
            });
        }
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let up = log
                .sample
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.starts_with("crdt-socket-sync server:"));
            if up {
                break;
            }
            assert!(Instant::now() < until, "the server did not report serving");
            std::thread::sleep(Duration::from_millis(10));
        }
        Server {
            pid: child.id(),
            child,
            url: format!("ws://127.0.0.1:{port}"),
            dir,
            log,
            started: Instant::now(),
        }
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(self.pid)
    }

    /// CPU time (user + system) the server used so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the command name (which is in parentheses).
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
            .sum();
        // USER_HZ is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The log stayed within the server's log limits since it started.
    fn check_log(&self, case: &str) {
        let lines = self.log.lines.load(Ordering::Relaxed);
        let windows = self.started.elapsed().as_secs() / LOG_WINDOW.as_secs() + 1;
        // The startup lines, and one window the limiter may straddle.
        let bound = (windows + 1) * LOG_LINES_PER_WINDOW + 16;
        eprintln!(
            "{case}: server log {lines} lines, {} KiB (bound {bound} lines)",
            self.log.bytes.load(Ordering::Relaxed) / 1024
        );
        assert!(lines <= bound, "{case}: {lines} log lines (bound {bound})");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Samples the server's RSS every few milliseconds, keeping the peak; kills
/// the server past [`RSS_KILL_MIB`] of growth.
struct RssWatch {
    baseline: u64,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    killed: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    fn start(server: &Server) -> RssWatch {
        let pid = server.pid;
        let baseline = server.rss_kib();
        let peak = Arc::new(AtomicU64::new(baseline));
        let stop = Arc::new(AtomicBool::new(false));
        let killed = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, stop, killed) = (peak.clone(), stop.clone(), killed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let rss = rss_kib(pid);
                    peak.fetch_max(rss, Ordering::AcqRel);
                    if rss > baseline + RSS_KILL_MIB * 1024 && !killed.swap(true, Ordering::AcqRel)
                    {
                        // Our own child, by its id.
                        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        RssWatch {
            baseline,
            peak,
            stop,
            killed,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the growth in KiB and whether the watchdog fired.
    fn finish(mut self) -> (u64, bool) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let growth = self
            .peak
            .load(Ordering::Acquire)
            .saturating_sub(self.baseline);
        (growth, self.killed.load(Ordering::Acquire))
    }
}

/// Two honest clients editing document `honest`: client `a` appends to
/// array `a`, `b` to array `b`.
#[derive(Clone)]
struct Honest {
    a: Client,
    b: Client,
    rounds: Arc<AtomicU64>,
}

const HONEST_DOC: &str = "honest";

impl Honest {
    async fn connect(url: &str) -> Honest {
        let mut clients = Vec::new();
        for id in 1..=2u64 {
            let options = ClientOptions {
                session: ClientConfig {
                    peer: format!("honest{id}"),
                    ..ClientConfig::default()
                },
                documents: vec![HONEST_DOC.into()],
                ..ClientOptions::default()
            };
            let reg = MemoryRegistry::new(move |_: &str| YrsDocument::new(id));
            let (client, events) = connect(url, reg, options).await.expect("honest connects");
            // Keep the event channel drained.
            tokio::spawn(async move {
                let mut events = events;
                while events.recv().await.is_some() {}
            });
            clients.push(client);
        }
        let b = clients.pop().unwrap();
        let a = clients.pop().unwrap();
        Honest {
            a,
            b,
            rounds: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Both edit; both see both edits within [`ROUND_TIMEOUT`].
    async fn round(&self) -> Result<Duration, String> {
        let n = self.rounds.fetch_add(1, Ordering::AcqRel) + 1;
        let started = Instant::now();
        for (client, array) in [(&self.a, "a"), (&self.b, "b")] {
            client
                .with_doc(HONEST_DOC, move |doc| {
                    let arr = doc.get_or_insert_array(array);
                    arr.push_back(&mut doc.transact_mut(), n as i64);
                })
                .await
                .map_err(|e| format!("round {n}: edit failed: {e}"))?;
        }
        let lens = |client: &Client| {
            let client = client.clone();
            async move {
                client
                    .read_doc(HONEST_DOC, |doc| {
                        let txn = doc.transact();
                        let len = |name: &str| txn.get_array(name).map_or(0, |a| a.len(&txn));
                        (u64::from(len("a")), u64::from(len("b")))
                    })
                    .await
                    .unwrap_or((0, 0))
            }
        };
        loop {
            let (la, lb) = (lens(&self.a).await, lens(&self.b).await);
            if la == (n, n) && lb == (n, n) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > ROUND_TIMEOUT {
                return Err(format!(
                    "round {n}: not converged after {ROUND_TIMEOUT:?}: a sees {la:?}, b sees \
                     {lb:?} (statuses {:?}/{:?})",
                    self.a.status(),
                    self.b.status()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Rounds every `every` until `stop`; the first failure, if any.
    fn keep_checking(
        &self,
        every: Duration,
    ) -> (
        Arc<AtomicBool>,
        tokio::task::JoinHandle<Result<u64, String>>,
    ) {
        let stop = Arc::new(AtomicBool::new(false));
        let this = self.clone();
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut done = 0;
            let mut worst = Duration::ZERO;
            while !flag.load(Ordering::Acquire) {
                worst = worst.max(this.round().await?);
                done += 1;
                tokio::time::sleep(every).await;
            }
            eprintln!("  honest rounds during the attack: {done}, slowest {worst:?}");
            Ok(done)
        });
        (stop, task)
    }

    async fn close(&self) {
        let _ = self.a.close().await;
        let _ = self.b.close().await;
    }
}

/// What a raw connection received.
#[derive(Debug, Default)]
struct Seen {
    /// The protocol `Close` message's reason, if one came.
    close: Option<CloseReason>,
    /// The WebSocket close code, if a close frame came.
    ws_close: Option<u16>,
    /// Bytes of WebSocket messages received.
    bytes: u64,
    /// `Error` messages received.
    errors: u64,
    /// The socket ended (close, error or end of stream) before the deadline.
    ended: bool,
}

impl Seen {
    fn closed_typed(&self) -> bool {
        self.ended && (self.close.is_some() || self.ws_close.is_some_and(|c| c != 1000))
    }
}

/// A raw WebSocket speaking the protocol by hand.
struct Raw {
    sink: Sink,
    encoder: Encoder,
}

/// What the reader of a raw connection reports as it goes.
enum Note {
    Opened(DocId),
}

impl Raw {
    async fn connect(url: &str) -> Result<(Raw, Source), tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        let (sink, source) = ws.split();
        let limits = Limits {
            max_decompressed_len: 4 << 20,
            ..Limits::default()
        };
        let mut encoder = Encoder::new(&limits);
        encoder.set_compression(Compression::Deflate, 64);
        Ok((Raw { sink, encoder }, source))
    }

    async fn send(&mut self, messages: &[Message]) -> bool {
        let mut frame = Vec::new();
        self.encoder.encode(messages, &mut frame).expect("encodes");
        self.send_bytes(frame).await
    }

    async fn send_bytes(&mut self, bytes: Vec<u8>) -> bool {
        self.sink
            .send(WsMessage::Binary(bytes.into()))
            .await
            .is_ok()
    }

    async fn hello(&mut self) -> bool {
        self.send(&[Message::Hello {
            versions: crdt_socket_sync::wire::PROTOCOL_VERSIONS.to_vec(),
            peer: "attacker".into(),
            token: Bytes(Vec::new()),
            compression: vec![Compression::Deflate],
            limits: PeerLimits {
                max_frame_len: 1 << 20,
                max_decompressed_len: 4 << 20,
            },
        }])
        .await
    }
}

/// Reads `source` until it ends or `deadline`, decoding protocol messages;
/// reports `Welcome` and `Opened` on `notes`.
async fn read_all(
    mut source: Source,
    deadline: Instant,
    notes: Option<mpsc::UnboundedSender<Note>>,
) -> Seen {
    let mut seen = Seen::default();
    let mut decoder = MessageDecoder::new(Limits {
        max_decompressed_len: 64 << 20,
        ..Limits::default()
    });
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout_at(deadline.into(), source.next()).await;
        let msg = match next {
            Err(_) => return seen,
            Ok(None) | Ok(Some(Err(_))) => {
                seen.ended = true;
                return seen;
            }
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            WsMessage::Binary(b) => {
                seen.bytes += b.len() as u64;
                out.clear();
                if decoder.decode(&b, &mut out).is_err() {
                    continue;
                }
                for m in out.drain(..) {
                    match m {
                        Message::Close { reason, .. } => seen.close = Some(reason),
                        Message::Error { .. } => seen.errors += 1,
                        Message::Opened { doc, .. } => {
                            if let Some(n) = &notes {
                                let _ = n.send(Note::Opened(doc));
                            }
                        }
                        _ => {}
                    }
                }
            }
            WsMessage::Close(frame) => {
                seen.ws_close = Some(frame.map_or(1005, |f| u16::from(f.code)));
                seen.ended = true;
                return seen;
            }
            _ => {}
        }
    }
}

/// The common frame of every case: a fresh server, two honest clients
/// checked in rounds while `attack` runs, the RSS watched. Returns what
/// `attack` returned.
fn run_case<T, F, Fut>(case: &str, max_connections: usize, attack: F) -> T
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut server = Server::start(case, max_connections);
    let url = server.url.clone();
    runtime.block_on(async {
        let honest = Honest::connect(&url).await;
        honest
            .round()
            .await
            .expect("honest clients converge before the attack");
        // Let the allocator settle before the baseline.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cpu0 = server.cpu();
        let watch = RssWatch::start(&server);
        let (stop, checks) = honest.keep_checking(Duration::from_millis(250));
        let started = Instant::now();
        let result = attack(url.clone()).await;
        let took = started.elapsed();
        // Queued work finishes; memory it holds counts.
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Release);
        let during = checks.await.expect("the check task");
        let after = honest.round().await;
        let (growth, killed) = watch.finish();
        let cpu = server.cpu().saturating_sub(cpu0);
        eprintln!(
            "{case}: attack took {took:?}; server RSS growth {} KiB (bound {} KiB), CPU {cpu:?}",
            growth,
            RSS_BOUND_MIB * 1024
        );
        assert!(
            !killed,
            "{case}: the server's RSS grew past {RSS_KILL_MIB} MiB (killed)"
        );
        assert!(server.alive(), "{case}: the server died");
        assert!(
            growth <= RSS_BOUND_MIB * 1024,
            "{case}: server RSS grew by {growth} KiB (bound {RSS_BOUND_MIB} MiB)"
        );
        during.unwrap_or_else(|e| panic!("{case}: honest clients during the attack: {e}"));
        after.unwrap_or_else(|e| panic!("{case}: honest clients after the attack: {e}"));
        assert_eq!(honest.a.status(), Status::Connected, "{case}");
        server.check_log(case);
        honest.close().await;
        result
    })
}

/// A small xorshift for garbage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Garbage speakers: random bytes, a text message, a frame with a bad
/// checksum, an oversized declared length; before and after `Hello`. Each
/// is closed with a typed reason.
#[test]
fn garbage_speakers_are_closed_with_a_typed_reason() {
    let seen = run_case("garbage", 10_000, |url| async move {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut tasks = Vec::new();
        for i in 0..40u64 {
            let (mut raw, source) = Raw::connect(&url).await.expect("connects");
            let deadline = Instant::now() + Duration::from_secs(10);
            let reader = tokio::spawn(read_all(source, deadline, None));
            if i % 2 == 1 {
                raw.hello().await;
            }
            let payload = match i % 4 {
                0 | 1 => {
                    let n = 1 + (rng.next() % 4096) as usize;
                    rng.bytes(n)
                }
                2 => {
                    // A valid frame with its checksum broken.
                    let mut frame = Vec::new();
                    raw.encoder
                        .encode(&[Message::Ping { t: 1 }], &mut frame)
                        .unwrap();
                    let last = frame.len() - 1;
                    frame[last] ^= 0xff;
                    frame
                }
                _ => {
                    // Version 1, no flags, a declared body of 2^32 - 1.
                    vec![0x10, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3]
                }
            };
            if i == 3 {
                let _ = raw.sink.send(WsMessage::Text("hello?".into())).await;
            } else {
                raw.send_bytes(payload).await;
            }
            tasks.push(reader);
        }
        let mut seen = Vec::new();
        for t in tasks {
            seen.push(t.await.unwrap());
        }
        seen
    });
    for (i, s) in seen.iter().enumerate() {
        assert!(
            s.closed_typed(),
            "garbage speaker {i} not closed with a typed reason: {s:?}"
        );
        assert!(
            s.bytes <= 1024,
            "garbage speaker {i} was sent {} bytes back",
            s.bytes
        );
    }
}

/// Item 1: an `UpdateBatch` of 4 M empty updates, deflated into ~18 KB.
#[test]
fn a_deflated_batch_of_four_million_empty_updates_costs_little() {
    let (seen, frame_len) = run_case("update-batch", 10_000, |url| async move {
        let (mut raw, source) = Raw::connect(&url).await.expect("connects");
        let (tx, mut notes) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_all(
            source,
            Instant::now() + Duration::from_secs(30),
            Some(tx),
        ));
        raw.hello().await;
        raw.send(&[Message::Open {
            name: "bomb".into(),
            version: Bytes(vec![0]),
            resume: None,
        }])
        .await;
        let doc = match tokio::time::timeout(Duration::from_secs(10), notes.recv()).await {
            Ok(Some(Note::Opened(doc))) => doc,
            _ => panic!("the document opens"),
        };
        // As many empty updates as 4 MiB of decompressed body holds.
        let n = (4 << 20) - 16;
        let batch = Message::UpdateBatch {
            doc,
            first_seq: 1,
            data: vec![Bytes(Vec::new()); n],
        };
        let mut frame = Vec::new();
        raw.encoder.encode(&[batch], &mut frame).expect("encodes");
        let frame_len = frame.len();
        eprintln!("update-batch: {n} empty updates in a {frame_len}-byte frame");
        raw.send_bytes(frame).await;
        (reader.await.unwrap(), frame_len)
    });
    assert!(
        frame_len < 64 << 10,
        "the frame is small ({frame_len} bytes)"
    );
    eprintln!("update-batch: offender saw {seen:?}");
    assert!(
        seen.closed_typed(),
        "the batch's sender is closed with a typed reason: {seen:?}"
    );
    assert!(
        seen.bytes <= 64 << 10,
        "{} bytes of answers to one {frame_len}-byte frame",
        seen.bytes
    );
}

/// Item 3: 64 KiB application messages, 100 a second, routed to the session
/// of a reader on another document that never reads. The victim's queue
/// stays bounded (it never receives them, or it is closed as a slow
/// consumer), and the sender gets typed refusals or a close.
#[test]
fn an_app_message_flood_at_a_slow_reader_stays_bounded() {
    let (attacker, victim_ended) = run_case("app-flood", 10_000, |url| async move {
        // The victim: handshake, open "y", learn its session id, stop reading.
        let (mut victim, mut victim_source) = Raw::connect(&url).await.expect("connects");
        victim.hello().await;
        victim
            .send(&[Message::Open {
                name: "y".into(),
                version: Bytes(vec![0]),
                resume: None,
            }])
            .await;
        let mut decoder = MessageDecoder::new(Limits::default());
        let mut session = None;
        let mut opened = false;
        let until = Instant::now() + Duration::from_secs(10);
        while !(opened && session.is_some()) {
            let m = tokio::time::timeout_at(until.into(), victim_source.next())
                .await
                .expect("the victim is welcomed")
                .expect("open")
                .expect("ok");
            if let WsMessage::Binary(b) = m {
                let mut out = Vec::new();
                let _ = decoder.decode(&b, &mut out);
                for m in out {
                    match m {
                        Message::Welcome { session: s, .. } => session = Some(s),
                        Message::Opened { .. } => opened = true,
                        _ => {}
                    }
                }
            }
        }
        let victim_session = session.unwrap();
        // The attacker, on document "x".
        let (mut raw, source) = Raw::connect(&url).await.expect("connects");
        let reader = tokio::spawn(read_all(
            source,
            Instant::now() + Duration::from_secs(20),
            None,
        ));
        raw.hello().await;
        raw.send(&[Message::Open {
            name: "x".into(),
            version: Bytes(vec![0]),
            resume: None,
        }])
        .await;
        // Incompressible, so deflate does not shrink what is queued.
        let mut rng = Rng(7);
        let data = Bytes(rng.bytes(64 << 10));
        let started = Instant::now();
        let mut sent = 0u32;
        // 100 a second for 8 s: 50 MiB at the victim if nothing bounds it.
        while sent < 800 && started.elapsed() < Duration::from_secs(15) {
            let app = Message::App {
                kind: 1,
                route: Route::Session(victim_session),
                from: None,
                data: data.clone(),
            };
            if !raw.send(&[app]).await {
                break;
            }
            sent += 1;
            let due = started + Duration::from_millis(10 * u64::from(sent));
            tokio::time::sleep_until(due.into()).await;
        }
        eprintln!("app-flood: {sent} app messages of 64 KiB sent");
        // Answers in flight arrive before the close handshake completes.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = raw.sink.close().await;
        let attacker = reader.await.unwrap();
        // Whether the server closed the victim (a close is in its socket).
        let victim = read_all(victim_source, Instant::now() + Duration::from_secs(5), None).await;
        (attacker, victim.close)
    });
    eprintln!("app-flood: attacker saw {attacker:?}, victim's close {victim_ended:?}");
    assert!(
        attacker.closed_typed()
            || attacker.errors > 0
            || victim_ended == Some(CloseReason::SlowConsumer),
        "neither a refusal for the sender nor a slow-consumer close for the victim"
    );
}

/// Item 5: 1,024 `SyncRequest`s in one frame against a 1 MB document.
#[test]
fn a_frame_of_status_requests_against_a_large_document_stays_bounded() {
    let seen = run_case("status-requests", 10_000, |url| async move {
        // A 1 MB document, written by a client of its own in 100 KB edits.
        let reg = MemoryRegistry::new(|_: &str| YrsDocument::new(99));
        let options = ClientOptions {
            documents: vec!["big".into()],
            ..ClientOptions::default()
        };
        let (writer, _events) = connect(&url, reg, options).await.expect("connects");
        let mut rng = Rng(11);
        for _ in 0..10 {
            let chunk: String = (0..100_000)
                .map(|_| char::from(b'a' + (rng.next() % 26) as u8))
                .collect();
            writer
                .with_doc("big", move |doc| {
                    let text = doc.get_or_insert_text("t");
                    let mut txn = doc.transact_mut();
                    let len = text.len(&txn);
                    text.insert(&mut txn, len, &chunk);
                })
                .await
                .unwrap();
        }
        let until = Instant::now() + Duration::from_secs(30);
        while writer.unacknowledged("big").await.unwrap_or(1) > 0 {
            assert!(Instant::now() < until, "the 1 MB document is acknowledged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let len = writer
            .read_doc("big", |doc| {
                doc.get_or_insert_text("t")
                    .get_string(&doc.transact())
                    .len()
            })
            .await
            .unwrap();
        assert_eq!(len, 1_000_000);
        let (mut raw, source) = Raw::connect(&url).await.expect("connects");
        let (tx, mut notes) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_all(
            source,
            Instant::now() + Duration::from_secs(20),
            Some(tx),
        ));
        raw.hello().await;
        raw.send(&[Message::Open {
            name: "big".into(),
            version: Bytes(vec![0]),
            resume: None,
        }])
        .await;
        let doc = match tokio::time::timeout(Duration::from_secs(10), notes.recv()).await {
            Ok(Some(Note::Opened(doc))) => doc,
            _ => panic!("the document opens"),
        };
        let requests: Vec<Message> = (0..1024)
            .map(|_| Message::SyncRequest {
                doc,
                version: Bytes(vec![0]),
            })
            .collect();
        raw.send(&requests).await;
        // The answers (or a close); then the close handshake ends the reader.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _ = raw.sink.close().await;
        let seen = reader.await.unwrap();
        let _ = writer.close().await;
        seen
    });
    eprintln!("status-requests: requester saw {seen:?}");
    // Besides the initial sync (1 MB) the answers stay within a few copies
    // of the document, or the requester is closed.
    assert!(
        seen.closed_typed() || seen.bytes <= 8 << 20,
        "{} bytes sent back for one frame of status requests",
        seen.bytes
    );
}

/// Item 2: fragments of a 64 MiB message, deflated, before `Hello`, on 8
/// connections. Each is closed with a typed reason before the server holds
/// the fragments.
#[test]
fn fragments_before_hello_are_refused() {
    let seen = run_case("fragments", 10_000, |url| async move {
        let total: u64 = (64 << 20) - 64;
        let piece = (4 << 20) - 64;
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (mut raw, source) = Raw::connect(&url).await.expect("connects");
            tasks.push(tokio::spawn(async move {
                let reader = tokio::spawn(read_all(
                    source,
                    Instant::now() + Duration::from_secs(20),
                    None,
                ));
                let mut offset = 0u64;
                let mut wire = 0usize;
                while offset < total {
                    let len = piece.min((total - offset) as usize);
                    let mut frame = Vec::new();
                    raw.encoder
                        .encode(
                            &[Message::Fragment {
                                id: 1,
                                offset,
                                total,
                                data: Bytes(vec![0; len]),
                            }],
                            &mut frame,
                        )
                        .expect("encodes");
                    wire += frame.len();
                    if !raw.send_bytes(frame).await {
                        break;
                    }
                    offset += len as u64;
                }
                // Leave the connection open (until the server acts).
                let seen = reader.await.unwrap();
                (seen, wire, offset)
            }));
        }
        let mut seen = Vec::new();
        for t in tasks {
            seen.push(t.await.unwrap());
        }
        seen
    });
    for (i, (s, wire, offset)) in seen.iter().enumerate() {
        eprintln!(
            "fragments: connection {i} sent {offset} bytes of fragments in {wire} wire bytes: {s:?}"
        );
        assert!(s.closed_typed(), "fragment sender {i}: {s:?}");
    }
}

/// 1,000 silent sockets: upgraded, never a `Hello`. Each is closed with a
/// handshake timeout; honest clients are served throughout.
#[test]
fn a_thousand_silent_sockets_are_closed_after_the_handshake_timeout() {
    let seen = run_case("silent-sockets", 1100, |url| async move {
        let mut held = Vec::new();
        let started = Instant::now();
        for _ in 0..1000 {
            if started.elapsed() > Duration::from_secs(30) {
                break;
            }
            match Raw::connect(&url).await {
                Ok((raw, source)) => held.push((raw, source)),
                Err(e) => panic!("silent socket {} refused: {e}", held.len()),
            }
        }
        eprintln!(
            "silent-sockets: {} sockets open after {:?}",
            held.len(),
            started.elapsed()
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut tasks = Vec::new();
        for (raw, source) in held {
            tasks.push(tokio::spawn(async move {
                let seen = read_all(source, deadline, None).await;
                drop(raw);
                seen
            }));
        }
        let mut seen = Vec::new();
        for t in tasks {
            seen.push(t.await.unwrap());
        }
        seen
    });
    assert_eq!(seen.len(), 1000);
    for (i, s) in seen.iter().enumerate() {
        assert!(
            s.closed_typed() && s.close == Some(CloseReason::HandshakeTimeout),
            "silent socket {i}: {s:?}"
        );
    }
}

/// Item 6: one peer opens and closes 20,000 distinct documents.
#[test]
fn a_peer_cycling_twenty_thousand_documents_stays_bounded() {
    let (cycled, max_handle, seen) = run_case("document-cycling", 10_000, |url| async move {
        let (mut raw, source) = Raw::connect(&url).await.expect("connects");
        let (tx, mut notes) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_all(
            source,
            Instant::now() + Duration::from_secs(90),
            Some(tx),
        ));
        raw.hello().await;
        let started = Instant::now();
        let mut cycled = 0u32;
        let mut max_handle = 0u32;
        'cycle: while cycled < 20_000 && started.elapsed() < Duration::from_secs(60) {
            let batch = 256.min(20_000 - cycled);
            let opens: Vec<Message> = (cycled..cycled + batch)
                .map(|i| Message::Open {
                    name: format!("cycle-{i}"),
                    version: Bytes(vec![0]),
                    resume: None,
                })
                .collect();
            if !raw.send(&opens).await {
                break;
            }
            let mut docs = Vec::new();
            while docs.len() < batch as usize {
                match tokio::time::timeout(Duration::from_secs(20), notes.recv()).await {
                    Ok(Some(Note::Opened(doc))) => {
                        max_handle = max_handle.max(doc.0);
                        docs.push(doc);
                    }
                    _ => break 'cycle,
                }
            }
            let closes: Vec<Message> = docs
                .into_iter()
                .map(|doc| Message::CloseDoc { doc })
                .collect();
            if !raw.send(&closes).await {
                break;
            }
            cycled += batch;
        }
        eprintln!(
            "document-cycling: {cycled} documents opened and closed in {:?}, largest handle {max_handle}",
            started.elapsed()
        );
        let _ = raw.sink.close().await;
        (cycled, max_handle, reader.await.unwrap())
    });
    eprintln!("document-cycling: the cycler saw {seen:?}");
    assert!(
        cycled >= 20_000 || seen.closed_typed(),
        "the cycler stalled after {cycled} documents without a typed close: {seen:?}"
    );
    // Handles are per connection: with at most 256 open at once they stay
    // small (one byte on the wire up to 127), and say nothing about how many
    // documents the server holds.
    assert!(
        max_handle < 1024,
        "handle {max_handle} after cycling {cycled} documents"
    );
}
