//! A durable server over `std::net` TCP: one thread, one [`Hub`], a
//! [`SqliteRegistry`] and non-blocking sockets. No async runtime.
//!
//! It is the process the crash test (`tests/crash.rs`) kills with `kill -9`
//! and restarts on the same data file, and a minimal template for a durable
//! server:
//!
//! * Every pass reads what each socket has with
//!   [`Hub::handle_input`], then calls [`Hub::commit`] once: the
//!   pass's updates go to the registry's committer thread and are
//!   acknowledged `applied` at once. The committer writes everything handed
//!   over since its last transaction in one transaction (one fsync; group
//!   commit), and every pass calls [`Hub::poll_commits`], which sends the
//!   `durable` acknowledgements of what reached the disk. The loop never
//!   waits for an fsync.
//! * Documents are [`OpLog`]s (the crate's test CRDT); a real server uses
//!   the yrs, loro or automerge adapter the same way.
//! * Documents nobody subscribes to are unloaded after a minute idle.
//!
//! ```text
//! cargo run --example durable_tcp_server --features sqlite -- --data /tmp/docs.sqlite --addr 127.0.0.1:9000
//! ```
//!
//! It prints `listening <addr>` once the socket is bound and the data file
//! is open, then serves until killed.

#[path = "support/nonblocking.rs"]
mod nonblocking;

use std::collections::BTreeMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use crdt_socket_sync::Framing;
use crdt_socket_sync::server::{AllowAll, ConnId, Hub, ServerConfig, ServerEvent};
use crdt_socket_sync::store::{SqliteConfig, SqliteRegistry};
use crdt_socket_sync::testing::OpLog;
use nonblocking::{Conn, flush_all};

/// Documents nobody subscribes to are unloaded after this long unused.
const IDLE_UNLOAD: Duration = Duration::from_secs(60);

/// Moves the hub's frames to the connections and logs notable events.
fn drain_hub(hub: &mut Hub<AllowAll>, conns: &mut BTreeMap<ConnId, Conn>) -> Option<Instant> {
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
        match event {
            ServerEvent::StorageError { name, message } => {
                eprintln!("storage error ({name:?}): {message}");
            }
            ServerEvent::DocumentError { message, .. } => eprintln!("document error: {message}"),
            _ => {}
        }
    }
    hub.poll_timeout()
}

struct Args {
    data: PathBuf,
    addr: String,
}

fn parse_args() -> Result<Args, String> {
    let mut data = None;
    let mut addr = "127.0.0.1:0".to_string();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--data" => data = it.next().map(PathBuf::from),
            "--addr" => addr = it.next().ok_or("--addr needs a value")?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        data: data.ok_or("usage: durable_tcp_server --data FILE [--addr HOST:PORT]")?,
        addr,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let mut registry =
        SqliteRegistry::open_with(&args.data, SqliteConfig::default(), |_: &str| OpLog::new(0))?;
    let listener = TcpListener::bind(&args.addr)?;
    listener.set_nonblocking(true)?;
    println!("listening {}", listener.local_addr()?);
    io::stdout().flush()?;

    let config = ServerConfig {
        framing: Framing::Stream,
        ..ServerConfig::default()
    };
    let mut hub = Hub::new(config, AllowAll);
    let mut conns: BTreeMap<ConnId, Conn> = BTreeMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut deadline: Option<Instant> = None;
    let mut next_unload = Instant::now() + IDLE_UNLOAD;

    loop {
        let mut progressed = false;
        let now = Instant::now();

        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(true)?;
                    stream.set_nodelay(true)?;
                    let conn = hub.accept(now);
                    conns.insert(
                        conn,
                        Conn {
                            stream,
                            unsent: Vec::new(),
                        },
                    );
                    progressed = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }

        // Read everything available, applying without acknowledging...
        let mut lost = Vec::new();
        let mut received = false;
        for (id, c) in conns.iter_mut() {
            for _ in 0..16 {
                if !hub.wants_input(*id) {
                    break;
                }
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        lost.push(*id);
                        break;
                    }
                    Ok(n) => {
                        hub.handle_input(*id, now, &buf[..n], &mut registry);
                        received = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        lost.push(*id);
                        break;
                    }
                }
            }
        }
        // ...then one commit for all of it (acknowledged `applied` now)...
        if received {
            hub.commit(&mut registry);
            progressed = true;
        }
        // ...and `durable` acknowledgements for what reached the disk.
        let in_flight = hub.commits_in_flight();
        hub.poll_commits(&mut registry);
        progressed |= hub.commits_in_flight() < in_flight;
        for id in lost {
            conns.remove(&id);
            hub.connection_lost(id, now);
        }
        deadline = drain_hub(&mut hub, &mut conns).or(deadline);

        if deadline.is_some_and(|d| now >= d) {
            hub.handle_timeout(now, &mut registry);
            deadline = drain_hub(&mut hub, &mut conns);
        }
        if now >= next_unload {
            next_unload = now + IDLE_UNLOAD;
            registry.unload_idle(now, IDLE_UNLOAD, |name| hub.subscribers(name) > 0);
        }

        let dead = flush_all(&mut conns, |id| hub.is_closed(id), &mut progressed);
        for id in dead {
            conns.remove(&id);
            hub.connection_lost(id, now);
            deadline = drain_hub(&mut hub, &mut conns);
        }

        if !progressed {
            let nap = deadline
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::MAX)
                .min(Duration::from_millis(1));
            thread::sleep(nap);
        }
    }
}
