//! One command, the whole story: a sync server and several clients on
//! loopback replay part of a real editing trace (the automerge paper) into
//! one shared yrs text at the same time; one client's network is cut, it
//! keeps editing offline, reconnects by itself and sends what it typed;
//! then every replica (and the server) is checked to hold the same text.
//!
//! ```text
//! cargo run --release --example demo --features tokio,yrs
//! ```

#[path = "../tests/common/trace.rs"]
mod trace;

use std::time::{Duration, Instant};

use crdt_socket_sync::adapters::yrs::YrsDocument;
use crdt_socket_sync::client::{Backoff, ClientConfig, ClientEvent, Status};
use crdt_socket_sync::registry::{MemoryRegistry, Registry};
use crdt_socket_sync::server::{AllowAll, ServerEvent};
use crdt_socket_sync::transport::tokio::{WebSocketServer, connect};
use crdt_socket_sync::transport::{ClientOptions, ServerOptions, TransportEvent, WebSocketClient};
use yrs::{GetString, Text, Transact};

type Reg = MemoryRegistry<YrsDocument>;
type Client = WebSocketClient<Reg>;

const DOC: &str = "paper";
const CLIENTS: usize = 4;
/// Trace patches replayed (of ~260,000).
const PATCHES: usize = 20_000;
/// Patches applied per local transaction (one update sent each).
const PER_TXN: usize = 20;
/// Patches the cut-off client types while offline.
const OFFLINE: usize = 500;
/// The whole demo must finish within this.
const LIMIT: Duration = Duration::from_secs(30);

#[derive(Clone)]
struct Patch {
    pos: usize,
    del: usize,
    ins: String,
}

fn registry() -> Reg {
    MemoryRegistry::new(move |_: &str| YrsDocument::new())
}

fn text_of(doc: &mut YrsDocument) -> String {
    doc.get_or_insert_text("body").get_string(&doc.transact())
}

/// Applies trace patches to the shared text. Positions are clamped to the
/// current length: clients edit concurrently, so the text each one sees is
/// not the original author's.
fn apply(doc: &mut YrsDocument, patches: &[Patch]) {
    let body = doc.get_or_insert_text("body");
    let mut txn = doc.transact_mut();
    for p in patches {
        let len = body.len(&txn);
        let pos = (p.pos as u32).min(len);
        let del = (p.del as u32).min(len - pos);
        if del > 0 {
            body.remove_range(&mut txn, pos, del);
        }
        if !p.ins.is_empty() {
            body.insert(&mut txn, pos, &p.ins);
        }
    }
}

/// The first `n` patches of the trace, with non-ASCII characters replaced
/// (the adapter counts offsets in bytes, the trace in characters).
fn load(n: usize) -> Result<Vec<Patch>, String> {
    let trace = trace::try_load("automerge-paper")?;
    Ok(trace
        .txns
        .iter()
        .flat_map(|t| t.patches.iter())
        .take(n)
        .map(|p| Patch {
            pos: p.pos,
            del: p.del,
            ins: p
                .ins
                .chars()
                .map(|c| if c.is_ascii() { c } else { '?' })
                .collect(),
        })
        .collect())
}

fn options(i: usize) -> ClientOptions {
    ClientOptions {
        session: ClientConfig {
            peer: format!("client-{i}"),
            seed: i as u64,
            reconnect: Some(Backoff {
                min: Duration::from_millis(300),
                max: Duration::from_secs(1),
                ..Backoff::default()
            }),
            ..ClientConfig::default()
        },
        documents: vec![DOC.into()],
        ..ClientOptions::default()
    }
}

async fn wait_until<F, Fut>(what: &str, started: Instant, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        if check().await {
            return Ok(());
        }
        if started.elapsed() > LIMIT {
            return Err(format!("timed out: {what}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn state(c: &Client) -> (String, usize) {
    let text = c.read_doc(DOC, text_of).await.unwrap_or_default();
    let unacked = c.unacknowledged(DOC).await.unwrap_or(usize::MAX);
    (text, unacked)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let patches = match load(PATCHES + OFFLINE) {
        Ok(patches) => patches,
        Err(e) => {
            // One line, no backtrace: the usual cause is a partial checkout.
            eprintln!("demo: {e}");
            std::process::exit(1);
        }
    };
    let (online, offline) = patches.split_at(PATCHES);
    println!(
        "loaded {} patches of the automerge-paper trace in {:.0?}",
        patches.len(),
        started.elapsed()
    );

    let mut server = WebSocketServer::start(
        "127.0.0.1:0",
        registry(),
        AllowAll,
        ServerOptions::default(),
    )
    .await?;
    let mut server_events = server.take_events().expect("events");
    println!("server listening on {}", server.url());

    let mut clients = Vec::new();
    let mut client_events = Vec::new();
    for i in 0..CLIENTS {
        let (c, e) = connect(&server.url(), registry(), options(i)).await?;
        clients.push(c);
        client_events.push(e);
    }
    println!("{CLIENTS} clients connected in {:.0?}", started.elapsed());

    // Replay: client i takes chunks i, i + CLIENTS, ... all at once.
    let replay_started = Instant::now();
    let chunks: Vec<Vec<Patch>> = online.chunks(PER_TXN).map(|c| c.to_vec()).collect();
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let c = c.clone();
        let mine: Vec<Vec<Patch>> = chunks.iter().skip(i).step_by(CLIENTS).cloned().collect();
        tasks.push(tokio::spawn(async move {
            let n = mine.len();
            for chunk in mine {
                c.with_doc(DOC, move |d| apply(d, &chunk)).await?;
            }
            Ok::<usize, crdt_socket_sync::transport::ClientError>(n)
        }));
    }
    let mut updates = 0;
    for t in tasks {
        updates += t.await??;
    }
    println!(
        "replayed {} patches as {updates} updates from {CLIENTS} clients concurrently in {:.0?}",
        online.len(),
        replay_started.elapsed()
    );

    // Cut client 0's network, edit offline, let it come back by itself.
    let cut = &clients[0];
    cut.cut_transport().await?;
    wait_until("client 0 notices the cut", started, || async {
        cut.status() == Status::Reconnecting
    })
    .await?;
    let cut_at = Instant::now();
    let offline_chunks: Vec<Vec<Patch>> = offline.chunks(PER_TXN).map(|c| c.to_vec()).collect();
    let offline_updates = offline_chunks.len();
    for chunk in offline_chunks {
        cut.with_doc(DOC, move |d| apply(d, &chunk)).await?;
    }
    let waiting = cut.unacknowledged(DOC).await?;
    println!(
        "client 0 cut off; typed {} patches offline ({waiting} updates waiting in its outbox, status {:?})",
        offline.len(),
        cut.status()
    );
    wait_until("client 0 reconnects", started, || async {
        cut.status() == Status::Connected
    })
    .await?;
    println!(
        "client 0 reconnected by itself after {:.0?}",
        cut_at.elapsed()
    );

    // Convergence: same text everywhere, nothing unacknowledged.
    let converge_started = Instant::now();
    wait_until("all replicas converge", started, || async {
        let mut first: Option<String> = None;
        for c in &clients {
            let (text, unacked) = state(c).await;
            if unacked != 0 || first.as_ref().is_some_and(|f| *f != text) {
                return false;
            }
            first.get_or_insert(text);
        }
        true
    })
    .await?;
    let (text, _) = state(&clients[0]).await;
    let converge_time = converge_started.elapsed();

    let mut remote = 0u64;
    let mut acks = 0u64;
    let mut reconnects = 0u64;
    for e in &mut client_events {
        while let Some(ev) = e.try_recv() {
            match ev {
                ClientEvent::RemoteUpdate { .. } => remote += 1,
                ClientEvent::Acknowledged { .. } => acks += 1,
                ClientEvent::Dial { attempt } if attempt > 0 => reconnects += 1,
                _ => {}
            }
        }
    }
    let (mut applied, mut duplicates, mut pending) = (0u64, 0u64, 0u64);
    while let Some(e) = server_events.try_recv() {
        if let TransportEvent::Hub(ServerEvent::UpdatesApplied {
            applied: a,
            duplicates: d,
            pending: p,
            ..
        }) = e
        {
            applied += u64::from(a);
            duplicates += u64::from(d);
            pending += u64::from(p);
        }
    }
    for c in &clients {
        c.close().await?;
    }
    let mut reg = server.stop().await?;
    let server_text = reg.get(DOC).map(text_of).unwrap_or_default();
    let same = server_text == text;

    println!("---");
    println!(
        "converged: {} replicas (server + {CLIENTS} clients) {} on {} bytes of text ({} lines)",
        CLIENTS + 1,
        if same { "agree" } else { "DISAGREE" },
        text.len(),
        text.lines().count()
    );
    println!(
        "updates: {} sent ({} online, {offline_updates} offline), server: {applied} applied, {duplicates} duplicate, {pending} held for dependencies (from its UpdatesApplied events); {remote} remote updates applied by clients, {acks} acknowledgements, {reconnects} reconnect dial(s)",
        updates + offline_updates,
        updates
    );
    println!(
        "timings: convergence after reconnect {:.0?}, total {:.1?}",
        converge_time,
        started.elapsed()
    );
    if !same {
        return Err("server and clients disagree".into());
    }
    if started.elapsed() > LIMIT {
        return Err("the demo took too long".into());
    }
    Ok(())
}
