//! Process crash test: a durable server (`examples/durable_tcp_server.rs`,
//! or any binary with the same command line given by `CSS_CRASH_SERVER`)
//! runs as a separate process while clients write continuously; the test
//! `kill -9`s it at random moments, checks that every update acknowledged as
//! `durable` before the kill is in the data file, restarts the server on the
//! same file, and at the end checks that every client converged.
//!
//! Environment:
//! - `CSS_CRASH_SERVER`: the server binary. It must accept
//!   `--data FILE --addr HOST:PORT` and print `listening <addr>` once ready.
//!   Default: the `durable_tcp_server` example next to this test binary
//!   (the test runs `cargo build --example durable_tcp_server --features
//!   sqlite` first, a no-op when it is up to date).
//! - `CSS_CRASH_KILLS`: number of kills (default 20; a long run uses more).
//! - `CSS_CRASH_SEED`: seed of the kill schedule (printed on every run).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crdt_socket_sync::Framing;
use crdt_socket_sync::client::{ClientConfig, ClientEvent, ClientSession};
use crdt_socket_sync::document::Document;
use crdt_socket_sync::registry::{MemoryRegistry, Registry};
use crdt_socket_sync::store::SqliteRegistry;
use crdt_socket_sync::testing::OpLog;

#[path = "common/crash.rs"]
mod crash_kit;
use crash_kit::Rng;

const DOC: &str = "crash";
const CLIENTS: usize = 4;

/// What a client thread reports to the test.
#[derive(Clone, Default)]
struct Report {
    /// Local edits made.
    edits: u32,
    /// Edits covered by a `durable` acknowledgement.
    durable_edits: u32,
    /// Updates not yet acknowledged as applied.
    unacked: usize,
    /// The client's document version.
    version: Vec<u8>,
    /// Whether its transport is up.
    connected: bool,
    reconnects: u32,
}

struct Shared {
    /// Where the server listens; `None` while it is down or being checked.
    addr: Mutex<Option<SocketAddr>>,
    writing: AtomicBool,
    stop: AtomicBool,
    reports: Vec<Mutex<Report>>,
}

/// Per-client op counters of an `OpLog` version.
fn clock(version: &[u8]) -> Vec<(u32, u32)> {
    version
        .chunks(8)
        .map(|c| {
            (
                u32::from_le_bytes(c[0..4].try_into().unwrap()),
                u32::from_le_bytes(c[4..8].try_into().unwrap()),
            )
        })
        .collect()
}

fn ops_of(version: &[u8], client: u32) -> u32 {
    clock(version)
        .into_iter()
        .find(|(c, _)| *c == client)
        .map_or(0, |(_, n)| n)
}

fn client_thread(i: usize, shared: Arc<Shared>) {
    let me = i as u32 + 1;
    let config = ClientConfig {
        peer: format!("writer{i}"),
        framing: Framing::Stream,
        reconnect: None,
        dead_after: Duration::from_secs(3),
        ..ClientConfig::default()
    };
    let mut session = ClientSession::new(config, Instant::now());
    let mut reg = MemoryRegistry::new(move |_: &str| OpLog::new(me));
    // (seq, edits made when it was sent): a durable ack of `seq` covers them.
    let mut sent: Vec<(u64, u32)> = Vec::new();
    let mut edits = 0u32;
    let mut durable_edits = 0u32;
    let mut opened = false;
    let mut buf = vec![0u8; 64 * 1024];
    let mut reconnects = 0u32;
    while !shared.stop.load(Ordering::Acquire) {
        let addr = *shared.addr.lock().unwrap();
        let Some(addr) = addr else {
            thread::sleep(Duration::from_millis(2));
            continue;
        };
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(1)));
        reconnects += 1;
        session.connect(Instant::now());
        if !opened {
            session.open(&mut reg, DOC, Instant::now()).unwrap();
            opened = true;
        }
        shared.reports[i].lock().unwrap().connected = true;
        'conn: loop {
            if shared.stop.load(Ordering::Acquire) {
                break;
            }
            let now = Instant::now();
            if shared.writing.load(Ordering::Acquire) && session.unacknowledged(DOC) < 64 {
                reg.open(DOC)
                    .unwrap()
                    .edit(format!("w{i}e{edits};").as_bytes());
                edits += 1;
                if let Ok(Some(seq)) = session.flush_local(&mut reg, DOC, now) {
                    sent.push((seq, edits));
                }
            }
            while let Some(frame) = session.poll_transmit() {
                if stream.write_all(&frame).is_err() {
                    break 'conn;
                }
            }
            match stream.read(&mut buf) {
                Ok(0) => break 'conn,
                Ok(n) => session.handle_input(Instant::now(), &buf[..n], &mut reg),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break 'conn,
            }
            let mut closed = false;
            while let Some(e) = session.poll_event() {
                match e {
                    ClientEvent::Acknowledged { durable, .. } => {
                        let covered = sent
                            .iter()
                            .take_while(|(s, _)| *s <= durable)
                            .map(|(_, e)| *e)
                            .max()
                            .unwrap_or(0);
                        durable_edits = durable_edits.max(covered);
                    }
                    ClientEvent::Closed { .. } => closed = true,
                    _ => {}
                }
            }
            if session.poll_timeout().is_some_and(|t| t <= Instant::now()) {
                session.handle_timeout(Instant::now());
            }
            {
                let mut r = shared.reports[i].lock().unwrap();
                r.edits = edits;
                r.durable_edits = durable_edits;
                r.unacked = session.unacknowledged(DOC);
                r.version = reg.get(DOC).map(|d| d.version()).unwrap_or_default();
                r.reconnects = reconnects;
            }
            if closed {
                break;
            }
        }
        session.transport_lost(Instant::now());
        while session.poll_event().is_some() {}
        shared.reports[i].lock().unwrap().connected = false;
    }
}

/// The server binary: `CSS_CRASH_SERVER`, or the example next to this test.
fn server_binary() -> PathBuf {
    crash_kit::example_binary("CSS_CRASH_SERVER", "durable_tcp_server", "sqlite")
}

fn start_server(bin: &Path, data: &Path) -> (Child, SocketAddr) {
    let mut child = Command::new(bin)
        .args(["--data", data.to_str().unwrap(), "--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the server starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("unexpected server output {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

/// The document as the data file holds it (the server is down).
fn stored_version(data: &Path) -> Vec<u8> {
    let mut reg = SqliteRegistry::open(data, |_: &str| OpLog::new(0))
        .unwrap_or_else(|e| panic!("the data file reopens after a crash: {e}"));
    reg.open(DOC).unwrap().version()
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    f()
}

#[test]
fn durable_acks_survive_kill_9() {
    let (kills, seed) = crash_kit::settings("crash test");
    let mut rng = Rng(seed);
    let bin = server_binary();
    let dir = crash_kit::scratch_dir("css-crash");
    let data = dir.join("docs.sqlite");

    let (mut server, addr) = start_server(&bin, &data);
    let shared = Arc::new(Shared {
        addr: Mutex::new(Some(addr)),
        writing: AtomicBool::new(true),
        stop: AtomicBool::new(false),
        reports: (0..CLIENTS)
            .map(|_| Mutex::new(Report::default()))
            .collect(),
    });
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let s = Arc::clone(&shared);
            thread::spawn(move || client_thread(i, s))
        })
        .collect();
    let reports = |s: &Shared| -> Vec<Report> {
        s.reports
            .iter()
            .map(|r| r.lock().unwrap().clone())
            .collect()
    };

    let mut checked_total = 0u64;
    let mut durable_max = 0u64;
    for kill in 0..kills {
        thread::sleep(Duration::from_millis(50 + rng.next() % 350));
        // Clients must not reach the restarted server before the check.
        *shared.addr.lock().unwrap() = None;
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
        // Acks already in the clients' socket buffers count: they were sent
        // before the kill. Wait until every client saw its connection end.
        assert!(
            wait_until(Duration::from_secs(10), || reports(&shared)
                .iter()
                .all(|r| !r.connected)),
            "clients notice the crash"
        );
        let before = reports(&shared);
        let stored = stored_version(&data);
        for (i, r) in before.iter().enumerate() {
            let have = ops_of(&stored, i as u32 + 1);
            assert!(
                have >= r.durable_edits,
                "kill {kill}: client {i} had {} edits acked durable, the file holds {have}",
                r.durable_edits
            );
            checked_total += u64::from(r.durable_edits);
        }
        durable_max = before.iter().map(|r| u64::from(r.durable_edits)).sum();
        let (s, a) = start_server(&bin, &data);
        server = s;
        *shared.addr.lock().unwrap() = Some(a);
    }

    // Stop writing; everyone must converge and be acknowledged durable.
    shared.writing.store(false, Ordering::Release);
    let converged = wait_until(Duration::from_secs(30), || {
        let r = reports(&shared);
        r.iter()
            .all(|r| r.connected && r.unacked == 0 && r.durable_edits == r.edits)
            && r.windows(2)
                .all(|w| clock(&w[0].version) == clock(&w[1].version))
            && r.iter()
                .enumerate()
                .all(|(i, x)| ops_of(&x.version, i as u32 + 1) == x.edits)
    });
    let last = reports(&shared);
    shared.stop.store(true, Ordering::Release);
    *shared.addr.lock().unwrap() = None;
    for t in threads {
        t.join().unwrap();
    }
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(converged, "clients converge after the last restart");
    let stored = stored_version(&data);
    assert_eq!(
        clock(&stored),
        clock(&last[0].version),
        "the file holds everything"
    );
    let edits: u32 = last.iter().map(|r| r.edits).sum();
    let reconnects: u32 = last.iter().map(|r| r.reconnects).sum();
    eprintln!(
        "crash test: survived {kills} kills; {edits} edits by {CLIENTS} clients, \
         {checked_total} durable-acked edits checked across kills \
         ({durable_max} at the last kill), {reconnects} connections; all converged"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
