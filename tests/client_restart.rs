//! A client killed while offline loses nothing: `examples/client.rs` with
//! `--db` (a SQLite registry on the client) takes lines while no server
//! runs, is killed (SIGKILL, no shutdown), and restarted on the same file
//! once the server is up; the lines typed before the kill reach the server.

#[path = "common/crash.rs"]
#[allow(dead_code)] // shared with the crash tests; this one builds an example only
mod crash_kit;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crdt_socket_sync::adapters::yrs::YrsDocument;
use crdt_socket_sync::registry::MemoryRegistry;
use crdt_socket_sync::server::AllowAll;
use crdt_socket_sync::transport::tokio::{WebSocketServer, connect};
use crdt_socket_sync::transport::{ClientOptions, ServerOptions};
use yrs::{GetString, Transact};

const DOC: &str = "notes";
const WAIT: Duration = Duration::from_secs(30);

/// Starts the client example; its stdout lines arrive on the receiver.
fn start_client(bin: &Path, url: &str, db: &Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(bin)
        .args(["--url", url, "--doc", DOC, "--name", "restarted"])
        .args(["--db", db.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the client starts");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_for_line(rx: &mpsc::Receiver<String>, what: impl Fn(&str) -> bool) -> String {
    let until = Instant::now() + WAIT;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if what(&line) => return line,
            Ok(_) => {}
            Err(e) => panic!("client output ended or timed out: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_made_offline_survive_a_client_kill_and_reach_the_server() {
    let bin = crash_kit::example_binary("CSS_CLIENT_BIN", "client", "tokio,yrs,sqlite");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("client-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("client.sqlite");
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let url = format!("ws://{addr}");

    // No server: the client starts offline and takes two lines.
    let (mut offline, out) = start_client(&bin, &url, &db);
    wait_for_line(&out, |l| l.starts_with("joined"));
    let mut stdin = offline.stdin.take().unwrap();
    stdin
        .write_all(b"typed offline\nbefore the kill\n")
        .unwrap();
    stdin.flush().unwrap();
    wait_for_line(&out, |l| l.starts_with("[edit 2 saved]"));
    offline.kill().unwrap(); // SIGKILL: no shutdown, no flush on exit
    offline.wait().unwrap();
    drop(stdin);

    // The server comes up; the client is restarted on the same file.
    let server = WebSocketServer::start(
        addr.clone(),
        MemoryRegistry::new(|_: &str| YrsDocument::server()),
        AllowAll,
        ServerOptions::default(),
    )
    .await
    .unwrap();
    let (mut restarted, out) = start_client(&bin, &url, &db);
    wait_for_line(&out, |l| l == "[Connected]");

    // Another client sees the lines typed before the kill.
    let observer_docs = MemoryRegistry::new(|_: &str| YrsDocument::new());
    let options = ClientOptions {
        documents: vec![DOC.into()],
        ..ClientOptions::default()
    };
    let (observer, _events) = connect(&url, observer_docs, options).await.unwrap();
    let want = "typed offline\nbefore the kill\n";
    let until = Instant::now() + WAIT;
    loop {
        let text = observer
            .read_doc(DOC, |d| {
                d.get_or_insert_text("body").get_string(&d.transact())
            })
            .await
            .unwrap();
        if text == want {
            break;
        }
        assert!(
            Instant::now() < until,
            "the server never got them: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    restarted.kill().unwrap();
    restarted.wait().unwrap();
    observer.close().await.unwrap();
    server.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
