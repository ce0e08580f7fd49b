//! Process crash test against the WebSocket server: `examples/server.rs`
//! (tokio, SQLite storage in a temporary data directory, yrs documents) runs
//! as a separate process while WebSocket clients (the crate's tokio
//! [`WebSocketClient`]) write continuously. The test `kill -9`s the server
//! at random, seeded moments, checks that every update acknowledged as
//! `durable` before the kill is in the data file, restarts the server on the
//! same directory and port (the clients reconnect by themselves), and at
//! the end checks that every client converged and that the file holds every
//! edit.
//!
//! Each client appends numbers to its own yrs array (`w0`, `w1`...): edit
//! `n` of client `i` is element `n` of array `wi`, so "the first `k` edits
//! are stored" is "array `wi` has at least `k` elements".
//!
//! Environment (shared with `tests/crash.rs`):
//! - `CSS_CRASH_KILLS`: number of kills (default 20; a long run uses more).
//! - `CSS_CRASH_SEED`: seed of the kill schedule (printed on every run).
//! - `CSS_CRASH_WS_SERVER`: the server binary (default: the `server`
//!   example, built by `cargo build --example server` with this test's
//!   features first, a no-op when it is up to date). It must accept
//!   `--addr HOST:PORT --data-dir DIR --storage sqlite --crdt yrs`, print a
//!   line starting with `crdt-socket-sync server:` once it serves, and
//!   store documents in `DIR/yrs.sqlite`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crdt_socket_sync::adapters::yrs::YrsDocument;
use crdt_socket_sync::client::{Backoff, ClientConfig, ClientEvent, Status};
use crdt_socket_sync::registry::{MemoryRegistry, Registry};
use crdt_socket_sync::store::SqliteRegistry;
use crdt_socket_sync::transport::tokio::connect;
use crdt_socket_sync::transport::{ClientEvents, ClientOptions, WebSocketClient};
use yrs::{Array, ReadTxn, Transact};

#[path = "common/crash.rs"]
mod crash_kit;
use crash_kit::Rng;

type Reg = MemoryRegistry<YrsDocument>;
type Client = WebSocketClient<Reg>;

const DOC: &str = "crash";
const CLIENTS: usize = 4;
/// Updates a client keeps unacknowledged before it waits.
const WINDOW: usize = 64;

/// What one client's tasks record.
#[derive(Default)]
struct Tally {
    /// `(seq, edits made when it was sent)`: a `durable` ack of `seq`
    /// covers that many edits.
    sent: Vec<(u64, u32)>,
    edits: u32,
    /// Edits covered by a `durable` acknowledgement.
    durable_edits: u32,
}

/// Array lengths (`w0`, `w1`...) of a document: the edits each client's
/// stored or replicated copy holds.
fn lengths(doc: &YrsDocument) -> Vec<u32> {
    let txn = doc.transact();
    (0..CLIENTS)
        .map(|i| {
            txn.get_array(format!("w{i}").as_str())
                .map_or(0, |a| a.len(&txn))
        })
        .collect()
}

fn server_binary() -> PathBuf {
    crash_kit::example_binary("CSS_CRASH_WS_SERVER", "server", &crash_kit::test_features())
}

/// Starts the server and waits until it serves. Its output is drained by a
/// thread (a full pipe would block it).
fn start_server(bin: &Path, dir: &Path, port: u16) -> Child {
    let mut child = Command::new(bin)
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(["--data-dir", dir.to_str().unwrap()])
        .args(["--storage", "sqlite", "--crdt", "yrs"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the server starts");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("crdt-socket-sync server:") {
                let _ = tx.send(());
            } else if line.contains("ERROR") || line.contains("WARN") {
                eprintln!("server: {line}");
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the server reports that it serves");
    child
}

/// The document as the data file holds it (the server is down).
fn stored_lengths(dir: &Path) -> Vec<u32> {
    let mut reg = SqliteRegistry::open(dir.join("yrs.sqlite"), |_: &str| {
        YrsDocument::with_client_id(0)
    })
    .unwrap_or_else(|e| panic!("the data file reopens after a crash: {e}"));
    let doc = reg.open(DOC).expect("the document loads");
    lengths(doc)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes continuously (while `writing`), keeping at most [`WINDOW`]
/// updates unacknowledged; each edit appends the edit's number to the
/// client's array.
async fn writer(i: usize, client: Client, tally: Arc<Mutex<Tally>>, writing: Arc<AtomicBool>) {
    let name = format!("w{i}");
    while writing.load(Ordering::Acquire) {
        let unacked = client.unacknowledged(DOC).await.unwrap_or(WINDOW);
        if unacked >= WINDOW {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let tally = Arc::clone(&tally);
        let name = name.clone();
        let sent = client
            .with_session(move |session, reg| {
                let mut t = tally.lock().unwrap();
                let n = t.edits;
                let doc = reg.open(DOC).expect("the client's document");
                let array = doc.get_or_insert_array(name.as_str());
                array.push_back(&mut doc.transact_mut(), i64::from(n));
                t.edits += 1;
                // Recorded on the client task, before any ack of it.
                if let Ok(Some(seq)) = session.flush_local(reg, DOC, Instant::now()) {
                    let edits = t.edits;
                    t.sent.push((seq, edits));
                }
            })
            .await;
        if sent.is_err() {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// Turns `durable` acknowledgements into acknowledged edits.
async fn acks(mut events: ClientEvents, tally: Arc<Mutex<Tally>>) {
    while let Some(event) = events.recv().await {
        if let ClientEvent::Acknowledged { durable, .. } = event {
            let mut t = tally.lock().unwrap();
            let covered = t
                .sent
                .iter()
                .take_while(|(s, _)| *s <= durable)
                .map(|(_, e)| *e)
                .max()
                .unwrap_or(0);
            t.durable_edits = t.durable_edits.max(covered);
        }
    }
}

async fn wait_until<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_acks_survive_kill_9_of_the_websocket_server() {
    let (kills, seed) = crash_kit::settings("WebSocket crash test");
    let mut rng = Rng(seed);
    let bin = tokio::task::spawn_blocking(server_binary).await.unwrap();
    let dir = crash_kit::scratch_dir("css-crash-ws");
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}");

    let mut server = start_server(&bin, &dir, port);
    let writing = Arc::new(AtomicBool::new(true));
    let mut clients = Vec::new();
    let mut tallies = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let options = ClientOptions {
            session: ClientConfig {
                peer: format!("writer{i}"),
                reconnect: Some(Backoff {
                    min: Duration::from_millis(10),
                    max: Duration::from_millis(100),
                    ..Backoff::default()
                }),
                ..ClientConfig::default()
            },
            documents: vec![DOC.into()],
            ..ClientOptions::default()
        };
        let reg = MemoryRegistry::new(move |_: &str| YrsDocument::with_client_id(i as u64 + 1));
        let (client, events) = connect(&url, reg, options).await.expect("connects");
        let tally = Arc::new(Mutex::new(Tally::default()));
        tasks.push(tokio::spawn(acks(events, Arc::clone(&tally))));
        tasks.push(tokio::spawn(writer(
            i,
            client.clone(),
            Arc::clone(&tally),
            Arc::clone(&writing),
        )));
        clients.push(client);
        tallies.push(tally);
    }
    let durable = |tallies: &[Arc<Mutex<Tally>>]| -> Vec<u32> {
        tallies
            .iter()
            .map(|t| t.lock().unwrap().durable_edits)
            .collect()
    };

    let mut checked = 0u64;
    let mut at_kills = Vec::new();
    for kill in 0..kills {
        tokio::time::sleep(Duration::from_millis(100 + rng.next() % 400)).await;
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
        // Acks the clients read before their connection ended count: they
        // were sent before the kill.
        let all_down = wait_until(Duration::from_secs(10), || async {
            clients.iter().all(|c| c.status() != Status::Connected)
        })
        .await;
        assert!(all_down, "clients notice the crash");
        // Events already produced reach the tallies.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let acked = durable(&tallies);
        let dir2 = dir.clone();
        let stored = tokio::task::spawn_blocking(move || stored_lengths(&dir2))
            .await
            .unwrap();
        for (i, (want, have)) in acked.iter().zip(&stored).enumerate() {
            assert!(
                have >= want,
                "kill {kill}: client {i} had {want} edits acknowledged durable, \
                 the file holds {have}"
            );
        }
        checked += acked.iter().map(|d| u64::from(*d)).sum::<u64>();
        at_kills.push(acked.iter().sum::<u32>());
        let (bin2, dir2) = (bin.clone(), dir.clone());
        server = tokio::task::spawn_blocking(move || start_server(&bin2, &dir2, port))
            .await
            .unwrap();
    }
    // Durability must have been exercised, not just survived.
    let progress = at_kills.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(
        progress >= (kills as usize).saturating_sub(1) / 2,
        "durable acks between kills: {at_kills:?}"
    );

    // Stop writing: everyone must converge, every edit acknowledged durable.
    writing.store(false, Ordering::Release);
    let converged = wait_until(Duration::from_secs(30), || async {
        let mut first: Option<Vec<u32>> = None;
        for (i, c) in clients.iter().enumerate() {
            let (edits, durable_edits) = {
                let t = tallies[i].lock().unwrap();
                (t.edits, t.durable_edits)
            };
            if c.status() != Status::Connected
                || c.unacknowledged(DOC).await.unwrap_or(1) != 0
                || durable_edits != edits
            {
                return false;
            }
            let Ok(lens) = c.read_doc(DOC, |d| lengths(d)).await else {
                return false;
            };
            if lens[i] != edits || first.as_ref().is_some_and(|f| *f != lens) {
                return false;
            }
            first = Some(lens);
        }
        true
    })
    .await;
    let edits: Vec<u32> = tallies.iter().map(|t| t.lock().unwrap().edits).collect();
    server.kill().unwrap();
    server.wait().unwrap();
    for t in &tasks {
        t.abort();
    }
    for c in &clients {
        let _ = c.close().await;
    }
    assert!(converged, "clients converge after the last restart");
    let dir2 = dir.clone();
    let stored = tokio::task::spawn_blocking(move || stored_lengths(&dir2))
        .await
        .unwrap();
    assert_eq!(stored, edits, "the file holds every edit");
    let total: u32 = edits.iter().sum();
    let last = at_kills.last().copied().unwrap_or(0);
    eprintln!(
        "WebSocket crash test: survived {kills} kills; {total} edits by {CLIENTS} clients, \
         {checked} durable-acked edits checked across kills ({last} at the last kill); \
         all converged"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
