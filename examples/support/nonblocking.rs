//! A non-blocking TCP connection with the bytes the kernel did not take
//! yet; shared by the std-only examples (`blocking`, `durable_tcp_server`).

use std::io::{self, ErrorKind, Write};
use std::net::TcpStream;

pub struct Conn {
    pub stream: TcpStream,
    /// Bytes the kernel did not take yet.
    pub unsent: Vec<u8>,
}

/// Writes as much of `unsent` as the non-blocking socket takes; returns
/// whether anything was written.
pub fn flush_nonblocking(conn: &mut Conn) -> io::Result<bool> {
    let mut progressed = false;
    while !conn.unsent.is_empty() {
        match conn.stream.write(&conn.unsent) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                conn.unsent.drain(..n);
                progressed = true;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(progressed)
}

/// Flushes every connection; returns those to drop: write errors, and
/// closed sessions whose last bytes (the Close frame) are out. Sets
/// `progressed` when anything was written.
pub fn flush_all<K: Copy + Ord>(
    conns: &mut std::collections::BTreeMap<K, Conn>,
    is_closed: impl Fn(K) -> bool,
    progressed: &mut bool,
) -> Vec<K> {
    let mut dead = Vec::new();
    for (id, c) in conns.iter_mut() {
        match flush_nonblocking(c) {
            Ok(p) => *progressed |= p,
            Err(_) => dead.push(*id),
        }
        if c.unsent.is_empty() && is_closed(*id) {
            dead.push(*id);
        }
    }
    dead
}
