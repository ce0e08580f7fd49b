use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crdt_socket_sync::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut docs = MemoryRegistry::new(|_: &str| YrsDocument::new());
    let config = ClientConfig {
        framing: Framing::Stream,
        ..Default::default()
    };
    let mut session = ClientSession::new(config, Instant::now());
    session.open(&mut docs, "notes", Instant::now())?;
    let mut tcp = TcpStream::connect("127.0.0.1:9000")?; // a server framing over TCP
    session.connect(Instant::now());
    let mut buf = vec![0; 64 * 1024];
    loop {
        while let Some(frame) = session.poll_transmit() {
            tcp.write_all(&frame)?;
        }
        while let Some(event) = session.poll_event() {
            match event {
                ClientEvent::Synced { name } => println!("{name} is in sync"),
                ClientEvent::Closed { cause } => return Err(cause.to_string().into()),
                _ => {}
            }
        }
        let deadline = session
            .poll_timeout()
            .unwrap_or(Instant::now() + Duration::from_secs(1));
        let wait = deadline.saturating_duration_since(Instant::now());
        tcp.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        match tcp.read(&mut buf) {
            Ok(0) => session.transport_lost(Instant::now()),
            Ok(n) => session.handle_input(Instant::now(), &buf[..n], &mut docs),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.into()),
        }
        session.handle_timeout(Instant::now());
    }
}
