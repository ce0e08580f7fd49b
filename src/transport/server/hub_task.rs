//! The hub task: owns the [`Hub`] and the registry, drains the inputs the
//! connection tasks send, commits once per batch, hands each connection the
//! frames the hub queued for it, forwards events (under the log limits) and
//! keeps the hub's timer armed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use tokio::sync::{Notify, mpsc, oneshot};

use super::log_limit::{LineKind, LogLimiter, Suppressed, write_suppressed};
use super::{ConnStats, HubStats, LOG, RefuseReason, ServerOptions, TransportEvent};
use crate::registry::Registry;
use crate::server::{Authorizer, ConnId, Hub, ServerEvent};

/// Spawns the hub task for `hub` and `registry` on the current runtime: it
/// reads `rx`, reports to `events`, and hands the registry back when it
/// ends.
pub(super) fn spawn<R, A>(
    hub: Hub<A>,
    mut registry: R,
    events: mpsc::Sender<TransportEvent>,
    options: Arc<ServerOptions>,
    rx: mpsc::Receiver<HubInput>,
) -> tokio::task::JoinHandle<R>
where
    R: Registry + Send + 'static,
    A: Authorizer + Send + 'static,
{
    // The registry's committer wakes the task when a commit is on disk.
    let committed = Arc::new(Notify::new());
    let waker = Arc::clone(&committed);
    registry.set_commit_waker(Arc::new(move || waker.notify_one()));
    let task = HubTask {
        hub,
        registry,
        conns: BTreeMap::new(),
        events,
        stats: HubStats::default(),
        logs: LogLimiter::new(options.log_limits),
        options,
        closing: false,
        dirty: BTreeSet::new(),
        visit: Vec::new(),
        suppressed: Vec::new(),
    };
    tokio::spawn(task.run(rx, committed))
}

/// What the hub task hands one connection task to write.
#[derive(Default)]
pub(super) struct Outgoing {
    /// Frames, at most [`ServerOptions::outgoing_capacity`] (the hub task
    /// checks before pushing). Taken whole by the connection task, so an
    /// idle connection holds no allocation here.
    pub(super) frames: VecDeque<Vec<u8>>,
    /// Their bytes (at most [`ServerOptions::outgoing_bytes`] plus one frame).
    pub(super) bytes: usize,
    /// The WebSocket close to send after the frames (boxed: it is sent once,
    /// and every idle connection would carry its room).
    pub(super) close: Option<Box<(u16, String)>>,
    /// The hub task dropped the connection (or ended).
    pub(super) hub_gone: bool,
}

/// State shared between the hub task and one connection task. Smaller than
/// a channel (tokio's bounded channel allocates 1.5 KiB up front), which
/// matters for idle connections.
#[derive(Default)]
pub(crate) struct ConnShared {
    /// Stop reading the socket.
    pub(super) paused: AtomicBool,
    /// Wakes the connection task: frames to write, a close, or reading
    /// resumed. The task registers before it looks at this state, so no
    /// wake-up is lost (a `Notify` is larger, and so is the future waiting
    /// on it).
    pub(super) wake: AtomicWaker,
    /// The hub found the outgoing queue full: report when it drained.
    pub(super) want_writable: AtomicBool,
    pub(super) out: Mutex<Outgoing>,
}

impl ConnShared {
    pub(super) fn outgoing(&self) -> std::sync::MutexGuard<'_, Outgoing> {
        // Nothing panics while holding it; recover the data regardless.
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) enum HubInput {
    Accept {
        shared: Arc<ConnShared>,
        addr: Option<SocketAddr>,
        reply: oneshot::Sender<ConnId>,
    },
    Frame(ConnId, Vec<u8>),
    Writable(ConnId),
    Lost(ConnId),
    Refused(Option<SocketAddr>, RefuseReason),
    Stats(oneshot::Sender<HubStats>),
    Close(ConnId, crate::wire::CloseReason),
    Stop,
}

enum Wake {
    Input(Option<HubInput>),
    Timer,
    Committed,
}

/// When the hub task wakes up for the hub's deadlines. The hub is asked
/// ([`Hub::poll_timeout`], a few lookups whatever the number of
/// connections) after every batch, so a deadline an input moved earlier is
/// armed at once; the sleep is re-armed only when the wake-up moved.
#[derive(Default)]
struct Timer {
    /// The hub's deadline when it was last asked.
    hub: Option<Instant>,
    /// What the sleep is armed for (`None`: not armed, or it fired).
    armed: Option<Instant>,
}

impl Timer {
    /// Whether the hub's deadline has come (`fired`: the instant the sleep
    /// that just completed was armed for).
    fn due(&self, now: Instant, fired: Option<Instant>) -> bool {
        self.hub.is_some_and(|d| now >= d || fired == Some(d))
    }

    /// Records the hub's deadline (`hub`) and the end of a shutdown
    /// (`until`); returns the instant to re-arm the sleep for when the
    /// wake-up moved (or the sleep fired), `None` when the armed sleep
    /// stands or nothing is due.
    fn update(&mut self, hub: Option<Instant>, until: Option<Instant>) -> Option<Instant> {
        self.hub = hub;
        let next = match (hub, until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if next == self.armed {
            return None;
        }
        self.armed = next;
        next
    }
}

struct ConnState {
    shared: Arc<ConnShared>,
    /// The outgoing channel was full; wait for `Writable`.
    blocked: bool,
    /// The WebSocket close was handed to the connection task.
    close_sent: bool,
    /// The close code and reason the hub reported (boxed, as in
    /// [`Outgoing::close`]).
    close: Option<Box<(u16, String)>>,
    paused: bool,
    /// The highest number of bytes seen queued in the hub for it (kept here
    /// rather than in a map of its own: one map node less per connection).
    peak_queued: usize,
}

impl Drop for ConnState {
    fn drop(&mut self) {
        // The connection task sends a close frame and ends.
        self.shared.outgoing().hub_gone = true;
        self.shared.wake.wake();
    }
}

struct HubTask<R, A> {
    hub: Hub<A>,
    registry: R,
    conns: BTreeMap<ConnId, ConnState>,
    events: mpsc::Sender<TransportEvent>,
    stats: HubStats,
    options: Arc<ServerOptions>,
    /// `stop` was asked: new connections are refused.
    closing: bool,
    /// Connections to visit after this batch: those the hub touched and
    /// those whose outgoing channel drained. Visiting only these keeps the
    /// work per batch independent of the number of idle connections.
    dirty: BTreeSet<ConnId>,
    visit: Vec<ConnId>,
    /// Caps the log lines peers cause.
    logs: LogLimiter,
    /// Scratch for the counts of left-out log lines.
    suppressed: Vec<Suppressed>,
}

impl<R: Registry, A: Authorizer> HubTask<R, A> {
    async fn run(mut self, mut rx: mpsc::Receiver<HubInput>, committed: Arc<Notify>) -> R {
        let mut timer = Timer::default();
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        let mut stopping: Option<Instant> = None;
        loop {
            let first = tokio::select! {
                biased;
                input = rx.recv() => Wake::Input(input),
                () = &mut sleep, if timer.armed.is_some() => Wake::Timer,
                () = committed.notified() => Wake::Committed,
            };
            let now = Instant::now();
            let mut had_input = false;
            // The sleep completed: it must be re-armed even if the deadline
            // stays the same.
            let mut fired = None;
            match first {
                Wake::Input(None) => break,
                Wake::Input(Some(input)) => had_input |= self.process(input, now),
                Wake::Timer => fired = timer.armed.take(),
                // Polled below.
                Wake::Committed => {}
            }
            for _ in 1..self.options.max_batch {
                match rx.try_recv() {
                    Ok(input) => had_input |= self.process(input, now),
                    Err(_) => break,
                }
            }
            if had_input {
                self.hub.commit(&mut self.registry);
                self.stats.flushes += 1;
            }
            self.hub.poll_commits(&mut self.registry);
            if timer.due(now, fired) {
                self.hub.handle_timeout(now, &mut self.registry);
            }
            if self.closing && stopping.is_none() {
                tracing::info!(target: LOG, connections = self.conns.len(), "shutting down");
                // The last `durable` acks leave before the close frames.
                self.hub.flush(&mut self.registry);
                self.hub.shutdown(now);
                stopping = Some(now + self.options.shutdown_grace);
            }
            // The driving contract: transmits, then events (which tell the
            // close reasons), then the WebSocket closes.
            self.hub.take_touched(&mut self.visit);
            self.dirty.extend(self.visit.drain(..));
            self.visit.extend(std::mem::take(&mut self.dirty));
            if stopping.is_some() {
                // Shutting down: every connection needs its close frame.
                self.visit = self.conns.keys().copied().collect();
            }
            self.pump(false);
            self.forward_events(now);
            self.pump(true);
            self.visit.clear();
            if let Some(until) = stopping
                && (self.conns.is_empty() || now >= until)
            {
                break;
            }
            if let Some(at) = timer.update(self.hub.poll_timeout(), stopping) {
                sleep.as_mut().reset(at.into());
            }
        }
        // Whatever is left: the connection tasks see their channels close
        // and send a close frame themselves.
        self.conns.clear();
        match self.registry.flush() {
            Ok(_) => {}
            Err(e) => tracing::error!(target: LOG, error = %e, "registry flush failed at shutdown"),
        }
        self.registry
    }

    /// Handles one input; returns whether it was data for the hub.
    fn process(&mut self, input: HubInput, now: Instant) -> bool {
        self.stats.inputs += 1;
        match input {
            HubInput::Accept {
                shared,
                addr,
                reply,
            } => {
                if self.closing {
                    // Dropping `reply` makes the connection task close the
                    // socket with 1001.
                    return false;
                }
                let conn = self.hub.accept(now);
                if self.logs.admit(now, Some(conn), LineKind::Connected) {
                    tracing::info!(target: LOG, conn = conn.0, ?addr, "client connected");
                }
                self.conns.insert(
                    conn,
                    ConnState {
                        shared,
                        blocked: false,
                        close_sent: false,
                        close: None,
                        paused: false,
                        peak_queued: 0,
                    },
                );
                let _ = reply.send(conn);
                self.emit(TransportEvent::Accepted { conn, addr });
                false
            }
            HubInput::Frame(conn, bytes) => {
                self.hub
                    .handle_input_deferred(conn, now, &bytes, &mut self.registry);
                true
            }
            HubInput::Writable(conn) => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.blocked = false;
                    self.dirty.insert(conn);
                }
                false
            }
            HubInput::Lost(conn) => {
                self.hub.connection_lost(conn, now);
                self.conns.remove(&conn);
                false
            }
            HubInput::Refused(addr, reason) => {
                if self.logs.admit(now, None, LineKind::Refused) {
                    tracing::info!(target: LOG, ?addr, ?reason, "connection refused");
                }
                self.emit(TransportEvent::Refused { addr, reason });
                false
            }
            HubInput::Stats(reply) => {
                let _ = reply.send(self.snapshot());
                false
            }
            HubInput::Close(conn, reason) => {
                self.hub.close(conn, now, reason);
                false
            }
            HubInput::Stop => {
                self.closing = true;
                false
            }
        }
    }

    fn snapshot(&mut self) -> HubStats {
        let mut stats = self.stats.clone();
        stats.connections = self.hub.connections();
        stats.documents = self.registry.list().len();
        stats.per_connection = self
            .conns
            .iter()
            .map(|(conn, c)| {
                let (queued_bytes, queued_messages) = self
                    .hub
                    .session(*conn)
                    .map_or((0, 0), |s| (s.queued_bytes(), s.queued_messages()));
                ConnStats {
                    conn: *conn,
                    queued_bytes,
                    peak_queued_bytes: c.peak_queued,
                    queued_messages,
                    channel_frames: c.shared.outgoing().frames.len(),
                    paused: c.paused,
                }
            })
            .collect();
        stats
    }

    fn emit(&mut self, event: TransportEvent) {
        if self.events.try_send(event).is_err() {
            self.stats.dropped_events += 1;
        }
    }

    /// Moves frames from the hub into each connection's channel, sends the
    /// WebSocket close after a closed session's last frame, and pauses or
    /// resumes reading.
    /// Moves the frames (and, with `send_close`, the close) of the
    /// connections in `self.visit` into their outgoing channels.
    fn pump(&mut self, send_close: bool) {
        for conn in &self.visit {
            let Some(c) = self.conns.get_mut(conn) else {
                continue;
            };
            if let Some(s) = self.hub.session(*conn) {
                c.peak_queued = c.peak_queued.max(s.queued_bytes());
            }
            let capacity = self.options.outgoing_capacity.max(1);
            let max_bytes = self.options.outgoing_bytes;
            let mut wake = false;
            if !c.blocked {
                let mut out = c.shared.outgoing();
                loop {
                    if out.frames.len() >= capacity || (out.bytes >= max_bytes && out.bytes > 0) {
                        // The connection task reports `Writable` after it
                        // took the frames (it checks under the same lock).
                        c.blocked = true;
                        c.shared.want_writable.store(true, Ordering::Release);
                        break;
                    }
                    let Some(frame) = self.hub.poll_transmit_for(*conn) else {
                        break;
                    };
                    out.bytes += frame.len();
                    out.frames.push_back(frame);
                    wake = true;
                }
            }
            if send_close && !c.blocked && !c.close_sent && self.hub.is_closed(*conn) {
                let close = c
                    .close
                    .take()
                    .unwrap_or_else(|| Box::new((1000, "session closed".to_string())));
                c.shared.outgoing().close = Some(close);
                c.close_sent = true;
                wake = true;
            }
            let paused = !self.hub.wants_input(*conn);
            if paused != c.paused {
                c.paused = paused;
                c.shared.paused.store(paused, Ordering::Release);
                wake |= !paused;
            }
            if wake {
                c.shared.wake.wake();
            }
        }
    }

    fn forward_events(&mut self, now: Instant) {
        self.logs.tick(now, &mut self.suppressed);
        while let Some(event) = self.hub.poll_event() {
            if let Some((conn, kind)) = log_line(&event)
                && self.logs.admit(now, conn, kind)
            {
                log_event(&event);
            }
            if let ServerEvent::ClientDisconnected { conn, cause } = &event {
                self.logs.closed(*conn, &mut self.suppressed);
                if let Some(c) = self.conns.get_mut(conn) {
                    c.close = Some(Box::new(crate::transport::close_for(cause)));
                }
            }
            self.emit(TransportEvent::Hub(event));
        }
        for s in self.suppressed.drain(..) {
            write_suppressed(&s);
        }
    }
}

/// What a log line about `event` would be about, or `None` when `tracing`
/// would not write it (its level is off): such lines cost nothing, so they
/// do not use up the limits.
fn log_line(event: &ServerEvent) -> Option<(Option<ConnId>, LineKind)> {
    use tracing::Level;
    let (conn, kind, level) = match event {
        ServerEvent::HandshakeCompleted { conn, .. } => {
            (Some(*conn), LineKind::HandshakeCompleted, Level::INFO)
        }
        ServerEvent::HandshakeRejected { conn, .. } => {
            (Some(*conn), LineKind::HandshakeRejected, Level::WARN)
        }
        ServerEvent::DocumentOpened { conn, .. } => {
            (Some(*conn), LineKind::DocumentOpened, Level::INFO)
        }
        ServerEvent::DocumentSynced { conn, .. } => {
            (Some(*conn), LineKind::DocumentSynced, Level::DEBUG)
        }
        ServerEvent::UpdatesApplied { conn, .. } => {
            (Some(*conn), LineKind::UpdatesApplied, Level::DEBUG)
        }
        ServerEvent::DocumentError { conn, .. } => {
            (Some(*conn), LineKind::DocumentError, Level::WARN)
        }
        ServerEvent::SubscriberLagging { conn, .. } => {
            (Some(*conn), LineKind::SubscriberLagging, Level::WARN)
        }
        ServerEvent::StorageError { .. } => (None, LineKind::StorageError, Level::ERROR),
        ServerEvent::DocumentFailed { .. } => (None, LineKind::DocumentFailed, Level::ERROR),
        ServerEvent::ClientDisconnected { conn, .. } => {
            (Some(*conn), LineKind::Disconnected, Level::INFO)
        }
        _ => (None, LineKind::Other, Level::TRACE),
    };
    let on = match level {
        Level::ERROR => tracing::enabled!(target: LOG, Level::ERROR),
        Level::WARN => tracing::enabled!(target: LOG, Level::WARN),
        Level::INFO => tracing::enabled!(target: LOG, Level::INFO),
        Level::DEBUG => tracing::enabled!(target: LOG, Level::DEBUG),
        _ => tracing::enabled!(target: LOG, Level::TRACE),
    };
    on.then_some((conn, kind))
}

/// Readable `tracing` output for the hub's events (levels as in
/// [`log_line`]).
fn log_event(event: &ServerEvent) {
    match event {
        ServerEvent::HandshakeCompleted {
            conn,
            session,
            identity,
        } => {
            tracing::info!(target: LOG, conn = conn.0, session = session.0, identity = %identity.name(), "handshake completed")
        }
        ServerEvent::HandshakeRejected {
            conn,
            code,
            message,
        } => tracing::warn!(target: LOG, conn = conn.0, ?code, %message, "handshake rejected"),
        ServerEvent::DocumentOpened { conn, name, access } => {
            tracing::info!(target: LOG, conn = conn.0, doc = %name, ?access, "document opened")
        }
        ServerEvent::DocumentSynced { conn, name } => {
            tracing::debug!(target: LOG, conn = conn.0, doc = %name, "document synced")
        }
        ServerEvent::UpdatesApplied {
            conn,
            name,
            applied,
            duplicates,
            pending,
            ..
        } => {
            tracing::debug!(target: LOG, conn = conn.0, doc = %name, applied, duplicates, pending, "updates applied")
        }
        ServerEvent::DocumentError {
            conn,
            name,
            code,
            message,
            ..
        } => {
            tracing::warn!(target: LOG, conn = conn.0, doc = ?name, ?code, %message, "document error")
        }
        ServerEvent::SubscriberLagging { conn, name, queued } => {
            tracing::warn!(target: LOG, conn = conn.0, doc = %name, queued, "subscriber lagging")
        }
        ServerEvent::StorageError { name, message } => {
            tracing::error!(target: LOG, doc = ?name, %message, "storage error")
        }
        ServerEvent::DocumentFailed { name } => {
            tracing::error!(target: LOG, doc = %name, "document failed: its CRDT panicked")
        }
        ServerEvent::ClientDisconnected { conn, cause } => {
            tracing::info!(target: LOG, conn = conn.0, %cause, "client disconnected")
        }
        other => tracing::trace!(target: LOG, event = ?other, "hub event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A document whose CRDT panicked is logged at `error`, whatever else
    /// is off (not as a trace-level "hub event").
    #[test]
    fn a_failed_document_is_logged_at_error_level() {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::ERROR)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let failed = ServerEvent::DocumentFailed { name: "d".into() };
        assert_eq!(log_line(&failed), Some((None, LineKind::DocumentFailed)));
    }

    /// The sleep follows the hub's deadline both ways (an input may move
    /// it earlier), is re-armed after it fired even for the same instant,
    /// and is left alone otherwise.
    #[test]
    fn the_timer_is_rearmed_when_the_deadline_moves() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut timer = Timer::default();
        assert_eq!(timer.update(Some(ms(1000)), None), Some(ms(1000)));
        assert_eq!(timer.update(Some(ms(1000)), None), None, "unchanged");
        assert_eq!(timer.update(Some(ms(40)), None), Some(ms(40)), "earlier");
        assert_eq!(timer.update(Some(ms(90)), None), Some(ms(90)), "later");
        assert!(!timer.due(ms(89), None));
        // The sleep fired: due, and armed again even if the hub still says
        // the same instant.
        let fired = timer.armed.take();
        assert!(timer.due(ms(90), fired));
        assert!(timer.due(ms(91), None));
        assert_eq!(timer.update(Some(ms(90)), None), Some(ms(90)));
        // Shutting down: whichever comes first.
        assert_eq!(timer.update(Some(ms(90)), Some(ms(50))), Some(ms(50)));
        assert_eq!(timer.update(None, Some(ms(50))), None);
        // Nothing due: the armed instant is dropped (the select ignores the
        // sleep), and nothing is due.
        assert_eq!(timer.update(None, None), None);
        assert_eq!(timer.armed, None);
        assert!(!timer.due(ms(10_000), None));
    }

    /// Every connection holds one `ConnShared` (in an `Arc`) and one
    /// `ConnState` (in the hub task's map) for its whole life: memory per
    /// idle connection. The close reason is boxed and the wake-up is an
    /// `AtomicWaker` (not a `Notify`) to keep them this small.
    #[test]
    fn per_connection_state_stays_small() {
        let shared = std::mem::size_of::<ConnShared>();
        let state = std::mem::size_of::<ConnState>();
        eprintln!("ConnShared {shared}, ConnState {state}");
        // With the `Arc`'s two counters, 128 bytes at most: one allocation
        // of malloc's 128-byte class.
        assert!(shared <= 96, "ConnShared of {shared} bytes");
        assert!(state <= 32, "ConnState of {state} bytes");
    }
}
