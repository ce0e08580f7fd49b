//! Bounded logging for the hub task: the lines peers can cause are
//! rate-limited per connection and kind of line, and in total, with a count
//! of what was left out.
//!
//! Every log line the hub task writes about what a peer did (connected,
//! opened a document, sent a bad update...) first asks a [`LogLimiter`].
//! Within one window ([`LogLimits::window`]) a connection gets at most
//! [`LogLimits::per_connection`] lines of each kind, and the server at most
//! [`LogLimits::total`] lines in all. Lines left out are counted; the counts
//! are written as one line per connection and kind when the connection
//! closes or the window ends (within the same total, the overflow folded
//! into a single line). So the log grows by at most `total + 1` lines per
//! window whatever peers send, and the state kept for it is at most one
//! entry per line written in the window.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::server::ConnId;

/// How many log lines the server writes about what peers do
/// ([`ServerOptions::log_limits`](super::ServerOptions::log_limits)).
///
/// ```
/// use crdt_socket_sync::transport::{LogLimits, ServerOptions};
/// use std::time::Duration;
/// let options = ServerOptions {
///     log_limits: LogLimits { per_connection: 3, ..LogLimits::default() },
///     ..ServerOptions::default()
/// };
/// assert_eq!(options.log_limits.window, Duration::from_secs(10));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLimits {
    /// The rate window. Default 10 s.
    pub window: Duration,
    /// Lines of one kind (document error, document opened, handshake
    /// rejected...) about one connection per window. Default 10.
    pub per_connection: u32,
    /// Lines per window in all, the counts of left-out lines included
    /// (plus at most one line folding the counts that did not fit).
    /// Default 1,000.
    pub total: u32,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            window: Duration::from_secs(10),
            per_connection: 10,
            total: 1000,
        }
    }
}

/// What a log line is about; lines are limited per connection and kind.
/// `Connected` stays first and `Other` last: [`LogLimiter::closed`] takes a
/// connection's counts as the key range between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum LineKind {
    Connected,
    Refused,
    HandshakeCompleted,
    HandshakeRejected,
    DocumentOpened,
    DocumentSynced,
    UpdatesApplied,
    DocumentError,
    SubscriberLagging,
    StorageError,
    DocumentFailed,
    Disconnected,
    Other,
}

impl LineKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            LineKind::Connected => "client connected",
            LineKind::Refused => "connection refused",
            LineKind::HandshakeCompleted => "handshake completed",
            LineKind::HandshakeRejected => "handshake rejected",
            LineKind::DocumentOpened => "document opened",
            LineKind::DocumentSynced => "document synced",
            LineKind::UpdatesApplied => "updates applied",
            LineKind::DocumentError => "document error",
            LineKind::SubscriberLagging => "subscriber lagging",
            LineKind::StorageError => "storage error",
            LineKind::DocumentFailed => "document failed",
            LineKind::Disconnected => "client disconnected",
            LineKind::Other => "hub event",
        }
    }
}

/// Lines that were not written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Suppressed {
    /// `lines` lines of `kind` about `conn` (`None`: about no connection).
    Kind {
        conn: Option<ConnId>,
        kind: LineKind,
        lines: u64,
    },
    /// Lines whose counts did not fit in the window's total, all kinds and
    /// connections together.
    Rest { lines: u64 },
}

#[derive(Clone, Copy, Debug, Default)]
struct Count {
    written: u32,
    suppressed: u64,
}

/// The rate limiter of [`LogLimits`]; time comes from the caller.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    limits: LogLimits,
    /// When the current window ends (`None`: no line yet).
    window_end: Option<Instant>,
    /// Lines written in the current window.
    written: u32,
    /// Per connection and kind, for lines written in this window. An entry
    /// is made only when a line is written, so there are at most `total`.
    counts: BTreeMap<(Option<ConnId>, LineKind), Count>,
    /// Left-out lines not attributed to an entry.
    rest: u64,
}

impl LogLimiter {
    pub(crate) fn new(limits: LogLimits) -> Self {
        LogLimiter {
            limits,
            window_end: None,
            written: 0,
            counts: BTreeMap::new(),
            rest: 0,
        }
    }

    /// Whether to write a line of `kind` about `conn` at `now`. Call
    /// [`LogLimiter::tick`] first, so a window that ended is summarised.
    pub(crate) fn admit(&mut self, now: Instant, conn: Option<ConnId>, kind: LineKind) -> bool {
        if self.window_end.is_none() {
            self.window_end = Some(now.checked_add(self.limits.window).unwrap_or(now));
        }
        let global_ok = self.written < self.limits.total;
        match self.counts.get_mut(&(conn, kind)) {
            Some(c) if global_ok && c.written < self.limits.per_connection => {
                c.written += 1;
                self.written += 1;
                true
            }
            Some(c) => {
                c.suppressed = c.suppressed.saturating_add(1);
                false
            }
            None if global_ok && self.limits.per_connection > 0 => {
                self.counts.insert(
                    (conn, kind),
                    Count {
                        written: 1,
                        suppressed: 0,
                    },
                );
                self.written += 1;
                true
            }
            None => {
                self.rest = self.rest.saturating_add(1);
                false
            }
        }
    }

    /// When the window has ended at `now`: the counts of the lines it left
    /// out, into `out` (charged to the new window), and a new window.
    pub(crate) fn tick(&mut self, now: Instant, out: &mut Vec<Suppressed>) {
        let Some(end) = self.window_end else {
            return;
        };
        if now < end {
            return;
        }
        self.window_end = None;
        self.written = 0;
        let counts = std::mem::take(&mut self.counts);
        for ((conn, kind), c) in counts {
            self.report(conn, kind, c.suppressed, out);
        }
        self.flush_rest(out);
    }

    /// `conn` closed: the counts of its left-out lines, into `out`.
    pub(crate) fn closed(&mut self, conn: ConnId, out: &mut Vec<Suppressed>) {
        let keys: Vec<(Option<ConnId>, LineKind)> = self
            .counts
            .range((Some(conn), LineKind::Connected)..=(Some(conn), LineKind::Other))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            if let Some(c) = self.counts.remove(&key) {
                self.report(key.0, key.1, c.suppressed, out);
            }
        }
    }

    fn report(
        &mut self,
        conn: Option<ConnId>,
        kind: LineKind,
        lines: u64,
        out: &mut Vec<Suppressed>,
    ) {
        if lines == 0 {
            return;
        }
        if self.written < self.limits.total {
            self.written += 1;
            out.push(Suppressed::Kind { conn, kind, lines });
        } else {
            self.rest = self.rest.saturating_add(lines);
        }
    }

    fn flush_rest(&mut self, out: &mut Vec<Suppressed>) {
        if self.rest > 0 {
            out.push(Suppressed::Rest {
                lines: std::mem::take(&mut self.rest),
            });
        }
    }
}

const LOG: &str = "crdt_socket_sync::transport::server";

/// Writes the count of left-out lines.
pub(crate) fn write_suppressed(s: &Suppressed) {
    match *s {
        Suppressed::Kind { conn, kind, lines } => tracing::warn!(
            target: LOG,
            conn = conn.map(|c| c.0),
            kind = kind.name(),
            lines,
            "log lines suppressed (rate limit)"
        ),
        Suppressed::Rest { lines } => tracing::warn!(
            target: LOG,
            lines,
            "log lines suppressed (rate limit; the window's total was reached)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures_util::{SinkExt, StreamExt};

    use crate::Limits;
    use crate::registry::MemoryRegistry;
    use crate::server::AllowAll;
    use crate::testing::OpLog;
    use crate::transport::ServerOptions;
    use crate::wire::{Bytes, DocId, Encoder, Message, PeerLimits};

    use super::*;
    use std::time::Instant;

    fn limiter(per_connection: u32, total: u32) -> LogLimiter {
        LogLimiter::new(LogLimits {
            window: Duration::from_secs(10),
            per_connection,
            total,
        })
    }

    #[test]
    fn lines_are_limited_per_connection_and_kind_and_counted() {
        let t0 = Instant::now();
        let mut logs = limiter(3, 100);
        let mut out = Vec::new();
        let a = Some(ConnId(1));
        let written = (0..1000)
            .filter(|_| logs.admit(t0, a, LineKind::DocumentError))
            .count();
        assert_eq!(written, 3);
        // Another kind, and another connection, have their own budgets.
        assert!(logs.admit(t0, a, LineKind::DocumentOpened));
        assert!(logs.admit(t0, Some(ConnId(2)), LineKind::DocumentError));
        // The connection closes: one line counts what it left out.
        logs.closed(ConnId(1), &mut out);
        assert_eq!(
            out,
            vec![Suppressed::Kind {
                conn: a,
                kind: LineKind::DocumentError,
                lines: 997
            }]
        );
        out.clear();
        logs.tick(t0 + Duration::from_secs(9), &mut out);
        assert!(out.is_empty(), "the window has not ended");
    }

    #[test]
    fn a_window_end_reports_and_restores_the_budget() {
        let t0 = Instant::now();
        let mut logs = limiter(2, 100);
        let mut out = Vec::new();
        let a = Some(ConnId(7));
        for _ in 0..5 {
            logs.admit(t0, a, LineKind::HandshakeRejected);
        }
        let end = t0 + Duration::from_secs(10);
        logs.tick(end, &mut out);
        assert_eq!(
            out,
            vec![Suppressed::Kind {
                conn: a,
                kind: LineKind::HandshakeRejected,
                lines: 3
            }]
        );
        assert!(logs.admit(end, a, LineKind::HandshakeRejected));
        assert!(logs.admit(end, a, LineKind::HandshakeRejected));
        assert!(!logs.admit(end, a, LineKind::HandshakeRejected));
    }

    /// Many connections: the total caps the window, counts included; the
    /// counts that do not fit fold into one line; the state kept stays at
    /// most one entry per written line.
    #[test]
    fn the_total_caps_every_window_whatever_the_number_of_connections() {
        let t0 = Instant::now();
        let total = 50;
        let mut logs = limiter(10, total);
        let mut out = Vec::new();
        let mut written = 0u64;
        let mut left_out = 0u64;
        for window in 0..3u64 {
            let now = t0 + Duration::from_secs(10 * window);
            logs.tick(now, &mut out);
            let mut lines = out.len() as u64;
            for s in out.drain(..) {
                match s {
                    Suppressed::Kind { lines, .. } | Suppressed::Rest { lines } => {
                        left_out -= lines
                    }
                }
            }
            for conn in 0..10_000u64 {
                for kind in [LineKind::Connected, LineKind::DocumentError] {
                    if logs.admit(now, Some(ConnId(conn)), kind) {
                        lines += 1;
                        written += 1;
                    } else {
                        left_out += 1;
                    }
                }
                if conn % 2 == 0 {
                    logs.closed(ConnId(conn), &mut out);
                }
            }
            lines += out.len() as u64;
            for s in out.drain(..) {
                match s {
                    Suppressed::Kind { lines, .. } | Suppressed::Rest { lines } => {
                        left_out -= lines
                    }
                }
            }
            assert!(
                lines <= u64::from(total) + 1,
                "window {window}: {lines} lines"
            );
            assert!(logs.counts.len() <= total as usize);
        }
        logs.tick(t0 + Duration::from_secs(30), &mut out);
        for s in out.drain(..) {
            match s {
                Suppressed::Kind { lines, .. } | Suppressed::Rest { lines } => left_out -= lines,
            }
        }
        assert_eq!(left_out, 0, "every left-out line is counted");
        assert!(written >= 3 * 40);
    }

    #[test]
    fn a_zero_budget_writes_nothing_but_counts() {
        let t0 = Instant::now();
        let mut logs = limiter(0, 100);
        let mut out = Vec::new();
        assert!(!logs.admit(t0, None, LineKind::StorageError));
        logs.tick(t0 + Duration::from_secs(10), &mut out);
        assert_eq!(out, vec![Suppressed::Rest { lines: 1 }]);
    }

    /// A `tracing` writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// One peer sends thousands of updates, one frame each, to a document
    /// handle it never opened: every update is a document error. The
    /// server's log (at `info`, as the example server runs) stays within a
    /// few lines whatever the number of errors.
    #[test]
    fn a_flood_of_document_errors_writes_a_bounded_number_of_log_lines() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let frames = 3_000u64;
        let errors = runtime.block_on(async {
            let registry = MemoryRegistry::new(|_: &str| OpLog::new(0));
            let server = crate::transport::tokio::WebSocketServer::start(
                "127.0.0.1:0",
                registry,
                AllowAll,
                ServerOptions::default(),
            )
            .await
            .unwrap();
            let (mut ws, _) = tokio_tungstenite::connect_async(server.url())
                .await
                .unwrap();
            let mut encoder = Encoder::new(&Limits::default());
            let mut frame = Vec::new();
            let hello = Message::Hello {
                versions: crate::wire::PROTOCOL_VERSIONS.to_vec(),
                peer: "flood".into(),
                token: Bytes(Vec::new()),
                compression: Vec::new(),
                limits: PeerLimits {
                    max_frame_len: 1 << 20,
                    max_decompressed_len: 4 << 20,
                },
            };
            encoder.encode(&[hello], &mut frame).unwrap();
            ws.send(tungstenite::Message::Binary(frame.clone().into()))
                .await
                .unwrap();
            let (mut sink, mut stream) = ws.split();
            // Read what comes back (errors), so the server keeps reading.
            let reader = tokio::spawn(async move {
                let until = tokio::time::Instant::now() + Duration::from_secs(20);
                while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, stream.next()).await {
                    if m.is_close() {
                        break;
                    }
                }
            });
            let mut sent = 0u64;
            for seq in 1..=frames {
                let update = Message::Update {
                    doc: DocId(77),
                    seq,
                    data: Bytes(vec![1]),
                };
                frame.clear();
                encoder.encode(&[update], &mut frame).unwrap();
                if sink
                    .send(tungstenite::Message::Binary(frame.clone().into()))
                    .await
                    .is_err()
                {
                    break;
                }
                sent += 1;
            }
            let _ = sink.close().await;
            let _ = reader.await;
            server.stop().await.unwrap();
            sent
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines = text.lines().count();
        let errors_logged = text
            .lines()
            .filter(|l| l.contains("document error"))
            .count();
        eprintln!("{errors} bad updates sent: {lines} log lines, {errors_logged} document errors");
        assert!(errors >= 1000, "the flood was sent");
        // What was left out is counted, once the connection closed.
        let left_out = format!("lines={}", errors - errors_logged as u64 + 1);
        assert!(
            text.lines()
                .any(|l| l.contains("log lines suppressed") && l.contains(&left_out)),
            "no count of the {left_out} left-out lines:\n{text}"
        );
        assert!(
            lines <= 40,
            "{lines} log lines for one peer's flood; first ones:\n{}",
            text.lines().take(5).collect::<Vec<_>>().join("\n")
        );
    }
}
