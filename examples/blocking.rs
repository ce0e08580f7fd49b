//! A server and two clients over `std::net` TCP on loopback, driven with
//! nothing but the standard library: threads and blocking (client) or
//! non-blocking (server) sockets. No async runtime.
//!
//! * The server runs on one thread that owns the [`Hub`], the registry and
//!   every socket. Sockets are non-blocking; when a pass over them moved
//!   nothing, the thread sleeps briefly (never past the hub's next deadline).
//! * Each client runs on its own thread with a blocking socket whose read
//!   timeout is derived from [`ClientSession::poll_timeout`].
//! * Both sides use [`Framing::Stream`]: TCP is a byte stream and frames may
//!   arrive split or merged.
//!
//! Every mutation is followed by the driving contract: drain `poll_transmit`,
//! then `poll_event`, then read `poll_timeout`. Every loop is bounded in time.
//!
//! Run it with `cargo run --example blocking`; `cargo test --examples` (and
//! `cargo test --all-targets`) runs the `#[test]` at the bottom.

#[path = "support/nonblocking.rs"]
mod nonblocking;

use std::collections::BTreeMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crdt_socket_sync::Framing;
use crdt_socket_sync::client::{ClientConfig, ClientEvent, ClientSession, Status};
use crdt_socket_sync::document::{ApplyOutcome, Document, DocumentError};
use crdt_socket_sync::registry::{MemoryRegistry, Registry};
use crdt_socket_sync::server::{AllowAll, ConnId, Hub, ServerConfig, ServerEvent};
use nonblocking::{Conn, flush_all, flush_nonblocking};

/// The shared document's name.
const DOC: &str = "notes";
/// Clients in the demo.
const CLIENTS: u32 = 2;
/// Edits each client makes.
const EDITS: u32 = 3;
/// Nothing in the demo may take longer than this.
const RUN_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// A tiny CRDT: a grow-only set of ops `(client, counter) -> payload`.
// ---------------------------------------------------------------------------

/// Each op is identified by `(client, counter)`; ops never conflict, so any
/// order of application converges. The version is, per client, the highest
/// counter below which no op is missing.
/// One op: its id `(client, counter)` and its payload.
type Op = ((u32, u32), Vec<u8>);

#[derive(Debug, Default)]
struct OpSet {
    client: u32,
    ops: BTreeMap<(u32, u32), Vec<u8>>,
    /// Counter of this client's last op handed to `take_local_update`.
    sent: u32,
}

impl OpSet {
    fn new(client: u32) -> Self {
        OpSet {
            client,
            ..OpSet::default()
        }
    }

    /// A local edit.
    fn edit(&mut self, payload: &str) {
        let next = self.contiguous(self.client) + 1;
        self.ops
            .insert((self.client, next), payload.as_bytes().to_vec());
    }

    /// Highest `n` such that ops `1..=n` of `client` are all present.
    fn contiguous(&self, client: u32) -> u32 {
        let mut n = 0;
        for (&(_, c), _) in self.ops.range((client, 1)..=(client, u32::MAX)) {
            if c != n + 1 {
                break;
            }
            n = c;
        }
        n
    }

    /// The replica's state as text: payloads in op-id order.
    fn text(&self) -> String {
        self.ops
            .values()
            .map(|p| String::from_utf8_lossy(p))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn encode<'a>(ops: impl Iterator<Item = (&'a (u32, u32), &'a Vec<u8>)>) -> Vec<u8> {
        let mut out = Vec::new();
        for (&(client, counter), payload) in ops {
            out.extend_from_slice(&client.to_le_bytes());
            out.extend_from_slice(&counter.to_le_bytes());
            out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
            out.extend_from_slice(payload);
        }
        out
    }

    fn decode(mut bytes: &[u8]) -> Result<Vec<Op>, DocumentError> {
        let bad = || DocumentError::Invalid("not an op set update".into());
        let mut ops = Vec::new();
        while !bytes.is_empty() {
            let (head, rest) = bytes.split_at_checked(10).ok_or_else(bad)?;
            let client = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            let counter = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            let len = u16::from_le_bytes([head[8], head[9]]) as usize;
            let (payload, rest) = rest.split_at_checked(len).ok_or_else(bad)?;
            if counter == 0 {
                return Err(bad());
            }
            ops.push(((client, counter), payload.to_vec()));
            bytes = rest;
        }
        Ok(ops)
    }
}

impl Document for OpSet {
    fn version(&self) -> Vec<u8> {
        let clients: std::collections::BTreeSet<u32> = self.ops.keys().map(|k| k.0).collect();
        let mut out = Vec::new();
        for c in clients {
            out.extend_from_slice(&c.to_le_bytes());
            out.extend_from_slice(&self.contiguous(c).to_le_bytes());
        }
        out
    }

    fn delta_since(&self, version: &[u8]) -> Result<Vec<u8>, DocumentError> {
        if !version.len().is_multiple_of(8) {
            return Err(DocumentError::Invalid("bad version".into()));
        }
        let seen: BTreeMap<u32, u32> = version
            .chunks_exact(8)
            .map(|c| {
                (
                    u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                    u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                )
            })
            .collect();
        Ok(Self::encode(self.ops.iter().filter(
            |((client, counter), _)| *counter > seen.get(client).copied().unwrap_or(0),
        )))
    }

    fn apply(&mut self, update: &[u8]) -> ApplyOutcome {
        let ops = match Self::decode(update) {
            Ok(ops) => ops,
            Err(e) => return ApplyOutcome::Invalid(e),
        };
        let mut new = false;
        for (id, payload) in ops {
            new |= self.ops.insert(id, payload).is_none();
        }
        if new {
            ApplyOutcome::Applied
        } else {
            ApplyOutcome::Duplicate
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        Self::encode(self.ops.iter())
    }

    fn load_snapshot(&mut self, snapshot: &[u8]) -> Result<(), DocumentError> {
        match self.apply(snapshot) {
            ApplyOutcome::Invalid(e) => Err(e),
            _ => Ok(()),
        }
    }

    fn take_local_update(&mut self) -> Option<Vec<u8>> {
        let now = self.contiguous(self.client);
        if now == self.sent {
            return None;
        }
        let from = self.sent;
        self.sent = now;
        let me = self.client;
        Some(Self::encode(self.ops.range((me, from + 1)..=(me, now))))
    }
}

// ---------------------------------------------------------------------------
// Server: one thread, one Hub, non-blocking sockets.
// ---------------------------------------------------------------------------

/// The hub's outputs after a mutation: transmits, then events; returns the
/// next deadline.
fn drain_hub(
    hub: &mut Hub<AllowAll>,
    conns: &mut BTreeMap<ConnId, Conn>,
    log: &mut Vec<String>,
) -> Option<Instant> {
    // Frames go into one scratch buffer (no allocation per frame), then
    // onto their connection's unsent bytes.
    let mut frame = Vec::new();
    while let Some(conn) = hub.poll_transmit_into(&mut frame) {
        if let Some(c) = conns.get_mut(&conn) {
            c.unsent.extend_from_slice(&frame);
        }
        frame.clear();
    }
    while let Some(event) = hub.poll_event() {
        match &event {
            ServerEvent::DocumentSynced { conn, name } => {
                log.push(format!("server: conn {} synced {name:?}", conn.0));
            }
            ServerEvent::ClientDisconnected { conn, cause } => {
                log.push(format!("server: conn {} gone ({cause})", conn.0));
            }
            _ => {}
        }
    }
    hub.poll_timeout()
}

/// Runs the hub until `stop` is set (or [`RUN_LIMIT`] passes); returns the
/// server replica's text and a log of notable events.
fn serve(listener: TcpListener, stop: Arc<AtomicBool>) -> io::Result<(String, Vec<String>)> {
    listener.set_nonblocking(true)?;
    let config = ServerConfig {
        framing: Framing::Stream,
        ..ServerConfig::default()
    };
    let mut hub = Hub::new(config, AllowAll);
    let mut registry = MemoryRegistry::new(|_: &str| OpSet::new(0));
    let mut conns: BTreeMap<ConnId, Conn> = BTreeMap::new();
    let mut log = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let started = Instant::now();
    let mut deadline: Option<Instant> = None;

    while !stop.load(Ordering::Acquire) && started.elapsed() < RUN_LIMIT {
        let mut progressed = false;

        // New connections.
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(true)?;
                    stream.set_nodelay(true)?;
                    let conn = hub.accept(Instant::now());
                    conns.insert(
                        conn,
                        Conn {
                            stream,
                            unsent: Vec::new(),
                        },
                    );
                    deadline = drain_hub(&mut hub, &mut conns, &mut log);
                    progressed = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }

        // Input from every connection that wants it.
        let ids: Vec<ConnId> = conns.keys().copied().collect();
        for id in ids {
            // A bounded number of reads per pass, so one busy peer cannot
            // starve the others.
            for _ in 0..16 {
                if !hub.wants_input(id) {
                    break;
                }
                let Some(c) = conns.get_mut(&id) else { break };
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        hub.connection_lost(id, Instant::now());
                        conns.remove(&id);
                        deadline = drain_hub(&mut hub, &mut conns, &mut log);
                        progressed = true;
                        break;
                    }
                    Ok(n) => {
                        hub.handle_input(id, Instant::now(), &buf[..n], &mut registry);
                        hub.commit(&mut registry);
                        deadline = drain_hub(&mut hub, &mut conns, &mut log);
                        progressed = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        hub.connection_lost(id, Instant::now());
                        conns.remove(&id);
                        deadline = drain_hub(&mut hub, &mut conns, &mut log);
                        break;
                    }
                }
            }
        }

        // Timers.
        if deadline.is_some_and(|d| Instant::now() >= d) {
            hub.handle_timeout(Instant::now(), &mut registry);
            deadline = drain_hub(&mut hub, &mut conns, &mut log);
        }

        // Output; a closed session whose Close frame is out is dropped.
        let dead = flush_all(&mut conns, |id| hub.is_closed(id), &mut progressed);
        for id in dead {
            conns.remove(&id);
            hub.connection_lost(id, Instant::now());
            deadline = drain_hub(&mut hub, &mut conns, &mut log);
        }

        if !progressed {
            // Idle: sleep a little, never past the next deadline.
            let nap = deadline
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::MAX)
                .min(Duration::from_millis(2));
            thread::sleep(nap);
        }
    }

    // Shut down: tell every client, push the Close frames out (bounded).
    hub.shutdown(Instant::now());
    drain_hub(&mut hub, &mut conns, &mut log);
    let until = Instant::now() + Duration::from_millis(200);
    while conns.values().any(|c| !c.unsent.is_empty()) && Instant::now() < until {
        for c in conns.values_mut() {
            let _ = flush_nonblocking(c);
        }
        thread::sleep(Duration::from_millis(1));
    }
    let text = registry.get(DOC).map(|d| d.text()).unwrap_or_default();
    Ok((text, log))
}

// ---------------------------------------------------------------------------
// Client: one thread, one blocking socket.
// ---------------------------------------------------------------------------

/// A client's outputs after a mutation: transmits (written, blocking), then
/// events; returns the next deadline.
fn drain_client(
    session: &mut ClientSession,
    stream: &mut TcpStream,
    events: &mut Vec<ClientEvent>,
) -> io::Result<Option<Instant>> {
    // Every pending frame in one buffer, one write.
    let mut frames = Vec::new();
    while session.poll_transmit_into(&mut frames) {}
    stream.write_all(&frames)?;
    events.extend(std::iter::from_fn(|| session.poll_event()));
    Ok(session.poll_timeout())
}

/// Connects as client `id`, opens [`DOC`], makes [`EDITS`] edits and waits
/// until its replica holds every client's edits and its own are
/// acknowledged. Returns the replica's text.
fn client(addr: SocketAddr, id: u32) -> io::Result<String> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let config = ClientConfig {
        peer: format!("client-{id}"),
        framing: Framing::Stream,
        ..ClientConfig::default()
    };
    let mut registry = MemoryRegistry::new(move |_: &str| OpSet::new(id));
    let mut session = ClientSession::new(config, Instant::now());
    let mut events = Vec::new();

    session.connect(Instant::now());
    session
        .open(&mut registry, DOC, Instant::now())
        .map_err(io::Error::other)?;
    let mut deadline = drain_client(&mut session, &mut stream, &mut events)?;

    let mut buf = vec![0u8; 16 * 1024];
    let mut synced = false;
    let mut edits = 0;
    let mut next_edit = Instant::now();
    let expected_ops = (CLIENTS * EDITS) as usize;
    loop {
        if started.elapsed() > RUN_LIMIT {
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                "client did not converge",
            ));
        }
        for e in events.drain(..) {
            match e {
                ClientEvent::Synced { .. } => synced = true,
                ClientEvent::Closed { cause } => {
                    return Err(io::Error::other(format!("closed: {cause}")));
                }
                _ => {}
            }
        }

        // Local edits, a few milliseconds apart so they interleave.
        if synced && edits < EDITS && Instant::now() >= next_edit {
            edits += 1;
            if let Ok(doc) = registry.open(DOC) {
                doc.edit(&format!("c{id}e{edits}"));
            }
            session
                .flush_local(&mut registry, DOC, Instant::now())
                .map_err(io::Error::other)?;
            deadline = drain_client(&mut session, &mut stream, &mut events)?;
            next_edit = Instant::now() + Duration::from_millis(5);
            continue;
        }

        let ops = registry.get(DOC).map_or(0, |d| d.ops.len());
        if edits == EDITS && ops == expected_ops && session.unacknowledged(DOC) == 0 {
            break;
        }

        // Block on the socket until input, the session's deadline or the
        // next edit, whichever comes first.
        let now = Instant::now();
        let mut wait = deadline.map_or(Duration::from_millis(100), |d| {
            d.saturating_duration_since(now)
        });
        if synced && edits < EDITS {
            wait = wait.min(next_edit.saturating_duration_since(now));
        }
        // A zero read timeout is an error; keep it within [1 ms, 100 ms].
        let wait = wait.clamp(Duration::from_millis(1), Duration::from_millis(100));
        stream.set_read_timeout(Some(wait))?;
        match stream.read(&mut buf) {
            Ok(0) => {
                session.transport_lost(Instant::now());
                drain_client(&mut session, &mut stream, &mut events)?;
                return Err(ErrorKind::UnexpectedEof.into());
            }
            Ok(n) => {
                session.handle_input(Instant::now(), &buf[..n], &mut registry);
                deadline = drain_client(&mut session, &mut stream, &mut events)?;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            session.handle_timeout(Instant::now());
            deadline = drain_client(&mut session, &mut stream, &mut events)?;
        }
    }

    // Leave politely: the Close frame goes out, `Closed` is reported once.
    session.close(Instant::now());
    drain_client(&mut session, &mut stream, &mut events)?;
    debug_assert_eq!(session.status(), Status::Closed);
    Ok(registry.get(DOC).map(|d| d.text()).unwrap_or_default())
}

// ---------------------------------------------------------------------------
// The demo.
// ---------------------------------------------------------------------------

/// What one run produced.
#[derive(Debug)]
struct Outcome {
    clients: Vec<String>,
    server: String,
    log: Vec<String>,
}

/// Starts the server thread, runs the clients, stops the server.
fn run() -> Result<Outcome, Box<dyn std::error::Error + Send + Sync>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = thread::spawn({
        let stop = Arc::clone(&stop);
        move || serve(listener, stop)
    });

    let handles: Vec<_> = (1..=CLIENTS)
        .map(|id| thread::spawn(move || client(addr, id)))
        .collect();
    let mut clients = Vec::new();
    let mut failure = None;
    for h in handles {
        match h.join().map_err(|_| "client thread panicked")? {
            Ok(text) => clients.push(text),
            Err(e) => failure = Some(e),
        }
    }
    stop.store(true, Ordering::Release);
    let (server, log) = server.join().map_err(|_| "server thread panicked")??;
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok(Outcome {
        clients,
        server,
        log,
    })
}

fn converged(outcome: &Outcome) -> bool {
    outcome.clients.iter().all(|t| *t == outcome.server)
        && outcome.server.split(' ').count() == (CLIENTS * EDITS) as usize
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let started = Instant::now();
    let outcome = run()?;
    for line in &outcome.log {
        println!("{line}");
    }
    for (i, text) in outcome.clients.iter().enumerate() {
        println!("client {}: {text}", i + 1);
    }
    println!("server:   {}", outcome.server);
    if !converged(&outcome) {
        return Err("replicas diverged".into());
    }
    println!(
        "converged: {} replicas agree on {} ops in {:?}",
        outcome.clients.len() + 1,
        CLIENTS * EDITS,
        started.elapsed()
    );
    Ok(())
}

#[test]
fn clients_converge_over_tcp() {
    let started = Instant::now();
    let outcome = run().expect("the demo runs");
    assert!(converged(&outcome), "{outcome:?}");
    assert!(started.elapsed() < RUN_LIMIT);
}
