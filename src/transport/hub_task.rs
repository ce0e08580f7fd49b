//! The hub task (owns the [`Hub`] and the registry) and the per-connection
//! tasks, shared by the tokio server and the axum integration.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::Stream;
use futures_util::task::AtomicWaker;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::Framing;
use crate::registry::Registry;
use crate::server::{Authorizer, ConnId, Hub, ServerConfig, ServerEvent};

use super::ServerError;
use super::log_limit::{LineKind, LogLimiter, LogLimits, Suppressed, write_suppressed};

mod connection;
pub(crate) use connection::{ConnTask, Connection};

const LOG: &str = "crdt_socket_sync::transport::server";

/// Options of the WebSocket server (and of the axum endpoint).
///
/// ```
/// use crdt_socket_sync::transport::ServerOptions;
/// let options = ServerOptions {
///     path: Some("/sync".into()),
///     allowed_origins: Some(vec!["https://app.example".into()]),
///     max_connections: 500,
///     ..ServerOptions::default()
/// };
/// assert_eq!(options.hub.framing, crdt_socket_sync::Framing::Message);
/// ```
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The hub's configuration (limits, timeouts, heartbeat, compression).
    /// Its `framing` is forced to [`Framing::Message`]. A `seed` of 0 (the
    /// default) is replaced by one from OS entropy each time the server
    /// starts, so session ids are unpredictable and transfer ids do not
    /// repeat across restarts (a client resuming an interrupted sync after
    /// a restart is never served another payload under its old id); any
    /// other value is used as is (reproducible ids, for tests).
    pub hub: ServerConfig,
    /// Only WebSocket upgrades on this URL path are accepted (others get
    /// HTTP 404); `None` accepts any path.
    pub path: Option<String>,
    /// Serve y-websocket clients (feature `yrs`) under this URL path:
    /// `new WebsocketProvider("ws://host/yjs", "notes", ydoc, { params: { token } })`
    /// with `Some("/yjs")` opens document `notes` of the same registry,
    /// shared with native clients. The room is the path after this prefix
    /// (percent-decoded), the token the `token` query parameter. Each such
    /// connection is a hub session like any other (limits, queues,
    /// deadlines, presence), translated by a
    /// [`YjsSession`](crate::ywebsocket::YjsSession). `None` (the default):
    /// no y-websocket endpoint.
    #[cfg(feature = "yrs")]
    pub yjs_path: Option<String>,
    /// When set, upgrades whose `Origin` header is present and not in this
    /// list get HTTP 403. Requests without `Origin` (non-browser clients)
    /// are accepted.
    pub allowed_origins: Option<Vec<String>>,
    /// Connections served at once; extra ones are upgraded and immediately
    /// closed with WebSocket code 1013 ("try again later"). Default 10,000.
    pub max_connections: usize,
    /// Frames in the channel from the connection tasks to the hub task.
    /// Default 1024.
    pub input_capacity: usize,
    /// Frames in each connection's outgoing queue; beyond it frames stay in
    /// the hub's bounded queue. The connection task takes the whole queue
    /// and writes it, so at most twice this many frames are on their way
    /// out of a connection. Default 32.
    pub outgoing_capacity: usize,
    /// Bytes in each connection's outgoing queue (frames of up to
    /// `max_frame_len` each); one frame is always let through. As with
    /// [`ServerOptions::outgoing_capacity`], at most twice this is on its way
    /// out of a connection. Default 1 MiB.
    pub outgoing_bytes: usize,
    /// Events buffered for the application; when full, events are dropped
    /// and counted ([`HubStats::dropped_events`]). Default 4096.
    pub event_capacity: usize,
    /// Inputs the hub task drains before one [`Hub::commit`] (group commit;
    /// with a registry that commits in the background, such as the SQLite
    /// one, the hub task does not wait for the disk: `durable` acks follow
    /// when the registry's commit waker fires). Default 256.
    pub max_batch: usize,
    /// How long `stop` waits for close frames to leave. Default 2 s.
    pub shutdown_grace: Duration,
    /// Run the tokio [`WebSocketServer`](super::tokio::WebSocketServer)
    /// (accept loop, hub task, connection tasks) on a thread of its own with
    /// a current-thread runtime, instead of on the runtime that calls
    /// `start`. The server's tasks wake each other for every update; on a
    /// multi-threaded runtime those wake-ups cross threads (futex, idle
    /// workers parking and unparking), which cost 1.5 to 2 times the CPU per
    /// delivered update in the comparison's workload A
    /// (`benches/results/profile.md`). The server then uses one core at most.
    /// Dropping the server without [`stop`](super::tokio::WebSocketServer::stop)
    /// ends the thread and drops its connections. Default `false`; the axum
    /// integration ignores it.
    pub own_thread: bool,
    /// TLS termination (feature `tls`): when set, the tokio
    /// [`WebSocketServer`](super::tokio::WebSocketServer) runs a rustls
    /// handshake on every accepted TCP connection before the WebSocket
    /// upgrade, so clients dial `wss://`. The TLS handshake counts against
    /// the hub's `handshake_timeout`. `None` (the default) serves plain
    /// `ws://`, e.g. behind a TLS-terminating proxy. The axum integration
    /// ignores it (TLS is the axum server's business there).
    #[cfg(feature = "tls")]
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How many log lines the hub task writes about what peers do
    /// (connections, documents opened, errors...): per connection and kind
    /// of line, and in total, per window, with a count of the lines left
    /// out. No peer can make the server's log grow faster than
    /// [`LogLimits::total`] lines per [`LogLimits::window`].
    pub log_limits: LogLimits,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            hub: ServerConfig::default(),
            path: None,
            #[cfg(feature = "yrs")]
            yjs_path: None,
            allowed_origins: None,
            max_connections: 10_000,
            input_capacity: 1024,
            outgoing_capacity: 32,
            outgoing_bytes: 1 << 20,
            event_capacity: 4096,
            max_batch: 256,
            shutdown_grace: super::DEFAULT_SHUTDOWN_GRACE,
            own_thread: false,
            #[cfg(feature = "tls")]
            tls: None,
            log_limits: LogLimits::default(),
        }
    }
}

/// Why the server refused a connection before it reached the hub.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefuseReason {
    /// The server is at [`ServerOptions::max_connections`].
    ConnectionLimit {
        /// The limit.
        limit: usize,
    },
    /// The upgrade asked for another URL path.
    Path(String),
    /// The `Origin` header is not allowed.
    Origin(String),
    /// The HTTP/WebSocket upgrade failed or timed out.
    Handshake(String),
    /// The TLS handshake failed or timed out (server with
    /// [`ServerOptions::tls`]), e.g. the client does not trust the
    /// certificate or spoke plain `ws://`.
    Tls(String),
    /// The server is stopping.
    ShuttingDown,
}

/// What the server reports: the hub's [`ServerEvent`]s plus transport
/// events.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportEvent {
    /// A WebSocket was accepted and handed to the hub as `conn`.
    Accepted {
        /// The hub's connection id.
        conn: ConnId,
        /// The peer's address, when known.
        addr: Option<SocketAddr>,
    },
    /// A connection was refused before reaching the hub.
    Refused {
        /// The peer's address, when known.
        addr: Option<SocketAddr>,
        /// Why.
        reason: RefuseReason,
    },
    /// An event of the hub.
    Hub(ServerEvent),
}

/// The server's event stream. Bounded: when the application does not read
/// it, events are dropped (and counted) instead of stalling the hub.
#[derive(Debug)]
pub struct ServerEvents {
    rx: mpsc::Receiver<TransportEvent>,
}

impl ServerEvents {
    /// The next event; `None` once the hub task ended.
    pub async fn recv(&mut self) -> Option<TransportEvent> {
        self.rx.recv().await
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<TransportEvent> {
        self.rx.try_recv().ok()
    }
}

impl Stream for ServerEvents {
    type Item = TransportEvent;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<TransportEvent>> {
        self.rx.poll_recv(cx)
    }
}

/// Counters of one connection, from the hub task.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnStats {
    /// The connection.
    pub conn: ConnId,
    /// Bytes queued in the hub for it (bounded by
    /// [`Limits::max_outbound_bytes`](crate::Limits::max_outbound_bytes)).
    pub queued_bytes: usize,
    /// The highest `queued_bytes` seen so far.
    pub peak_queued_bytes: usize,
    /// Messages queued in the hub for it.
    pub queued_messages: usize,
    /// Frames waiting in its outgoing queue (bounded by
    /// [`ServerOptions::outgoing_capacity`]).
    pub channel_frames: usize,
    /// Its socket is not being read (the hub does not want its input).
    pub paused: bool,
}

/// A snapshot of the hub task's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubStats {
    /// Connections held by the hub.
    pub connections: usize,
    /// Per connection.
    pub per_connection: Vec<ConnStats>,
    /// Events dropped because the event channel was full.
    pub dropped_events: u64,
    /// Inputs processed.
    pub inputs: u64,
    /// Group commits handed to the registry ([`Hub::commit`] calls).
    pub flushes: u64,
    /// Documents open in the registry.
    pub documents: usize,
}

/// What the hub task hands one connection task to write.
#[derive(Default)]
struct Outgoing {
    /// Frames, at most [`ServerOptions::outgoing_capacity`] (the hub task
    /// checks before pushing). Taken whole by the connection task, so an
    /// idle connection holds no allocation here.
    frames: VecDeque<Vec<u8>>,
    /// Their bytes (at most [`ServerOptions::outgoing_bytes`] plus one frame).
    bytes: usize,
    /// The WebSocket close to send after the frames (boxed: it is sent once,
    /// and every idle connection would carry its room).
    close: Option<Box<(u16, String)>>,
    /// The hub task dropped the connection (or ended).
    hub_gone: bool,
}

/// State shared between the hub task and one connection task. Smaller than
/// a channel (tokio's bounded channel allocates 1.5 KiB up front), which
/// matters for idle connections.
#[derive(Default)]
pub(crate) struct ConnShared {
    /// Stop reading the socket.
    paused: AtomicBool,
    /// Wakes the connection task: frames to write, a close, or reading
    /// resumed. The task registers before it looks at this state, so no
    /// wake-up is lost (a `Notify` is larger, and so is the future waiting
    /// on it).
    wake: AtomicWaker,
    /// The hub found the outgoing queue full: report when it drained.
    want_writable: AtomicBool,
    out: Mutex<Outgoing>,
}

impl ConnShared {
    fn outgoing(&self) -> std::sync::MutexGuard<'_, Outgoing> {
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

/// A WebSocket message type the connection task can carry (tungstenite's,
/// axum's).
pub(crate) trait WsFrame: Sized + Send + 'static {
    /// The WebSocket frames after the first of a fragmented message.
    type Rest: Iterator<Item = Self> + Send + 'static;
    fn binary(data: Vec<u8>) -> Self;
    /// `data` as one binary message: its first WebSocket frame and, where
    /// the library can write fragmented messages and `data` is large, the
    /// frames after it (boxed: only large messages have them). Default: one
    /// frame.
    fn binary_parts(data: Vec<u8>) -> (Self, Option<Box<Self::Rest>>) {
        (Self::binary(data), None)
    }
    fn close(code: u16, reason: String) -> Self;
    fn classify(self) -> Incoming;
}

pub(crate) enum Incoming {
    Data(Vec<u8>),
    Close,
    Other,
}

impl WsFrame for tungstenite::Message {
    type Rest = super::Fragments;
    fn binary(data: Vec<u8>) -> Self {
        tungstenite::Message::Binary(data.into())
    }
    fn binary_parts(data: Vec<u8>) -> (Self, Option<Box<Self::Rest>>) {
        let (first, rest) = super::Fragments::split(data);
        (first, rest.map(Box::new))
    }
    fn close(code: u16, reason: String) -> Self {
        tungstenite::Message::Close(Some(tungstenite::protocol::CloseFrame {
            code: code.into(),
            reason: reason.into(),
        }))
    }
    fn classify(self) -> Incoming {
        match self {
            tungstenite::Message::Binary(b) => Incoming::Data(b.into()),
            // Not our protocol: the core reports it as bad input.
            tungstenite::Message::Text(t) => Incoming::Data(t.as_bytes().to_vec()),
            tungstenite::Message::Close(_) => Incoming::Close,
            _ => Incoming::Other,
        }
    }
}

/// A cloneable handle to a running hub task: hands it sockets, asks for
/// stats. Used by [`WebSocketServer`](super::tokio::WebSocketServer) and by
/// the axum endpoint.
#[derive(Clone)]
pub struct HubHandle {
    to_hub: mpsc::Sender<HubInput>,
    active: Arc<AtomicUsize>,
    options: Arc<ServerOptions>,
}

impl core::fmt::Debug for HubHandle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HubHandle")
            .field("active", &self.active.load(Ordering::Relaxed))
            .finish()
    }
}

/// A slot under the connection limit, released on drop.
pub(crate) struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HubHandle {
    /// The options the hub task runs with.
    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// WebSocket connections being served right now.
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// A snapshot of the hub's state (connections, queued bytes...).
    pub async fn stats(&self) -> Result<HubStats, ServerError> {
        let (tx, rx) = oneshot::channel();
        self.to_hub
            .send(HubInput::Stats(tx))
            .await
            .map_err(|_| ServerError::Stopped)?;
        rx.await.map_err(|_| ServerError::Stopped)
    }

    /// Closes one connection with `reason` (a `Close` goes to the client).
    pub async fn close_connection(
        &self,
        conn: ConnId,
        reason: crate::wire::CloseReason,
    ) -> Result<(), ServerError> {
        self.to_hub
            .send(HubInput::Close(conn, reason))
            .await
            .map_err(|_| ServerError::Stopped)
    }

    pub(crate) fn try_admit(&self) -> Option<Admission> {
        let limit = self.options.max_connections;
        let mut n = self.active.load(Ordering::Acquire);
        loop {
            if n >= limit {
                return None;
            }
            match self
                .active
                .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(Admission(Arc::clone(&self.active))),
                Err(now) => n = now,
            }
        }
    }

    pub(crate) async fn refused(&self, addr: Option<SocketAddr>, reason: RefuseReason) {
        // Logged by the hub task, under its log limits.
        let _ = self.to_hub.send(HubInput::Refused(addr, reason)).await;
    }

    /// Whether `path` is the configured endpoint path.
    pub(crate) fn path_ok(&self, path: &str) -> bool {
        self.options.path.as_deref().is_none_or(|p| p == path)
    }

    /// Whether an `Origin` header value is allowed.
    pub(crate) fn origin_ok(&self, origin: Option<&str>) -> bool {
        match (&self.options.allowed_origins, origin) {
            (None, _) | (_, None) => true,
            (Some(list), Some(o)) => list.iter().any(|a| a == o),
        }
    }

    /// The task serving one upgraded WebSocket until it closes (see
    /// [`Connection`]); `admission` holds its slot under the connection
    /// limit.
    pub(crate) fn connection<S, M>(
        &self,
        ws: S,
        addr: Option<SocketAddr>,
        admission: Admission,
    ) -> Connection<S, M>
    where
        M: WsFrame,
    {
        Connection::new(ws, self.to_hub.clone(), addr, admission)
    }
}

/// A running hub task and the handle to it; owns the task, so
/// [`HubService::stop`] can hand the registry back.
pub struct HubService<R> {
    handle: HubHandle,
    task: tokio::task::JoinHandle<R>,
}

impl<R> core::fmt::Debug for HubService<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HubService")
            .field("handle", &self.handle)
            .finish()
    }
}

impl<R: Registry + Send + 'static> HubService<R> {
    /// Spawns the hub task (on the current tokio runtime) with `registry`,
    /// `authorizer` and `options`; returns the service and its events.
    pub fn spawn<A>(registry: R, authorizer: A, options: ServerOptions) -> (Self, ServerEvents)
    where
        A: Authorizer + Send + 'static,
    {
        let mut options = options;
        options.hub.framing = Framing::Message;
        options.hub.seed = super::transport_seed(options.hub.seed);
        let (to_hub, rx) = mpsc::channel(options.input_capacity.max(1));
        let (ev_tx, ev_rx) = mpsc::channel(options.event_capacity.max(1));
        let hub = Hub::new(options.hub.clone(), authorizer);
        let options = Arc::new(options);
        // The registry's committer wakes the task when a commit is on disk.
        let committed = Arc::new(Notify::new());
        let mut registry = registry;
        let waker = Arc::clone(&committed);
        registry.set_commit_waker(Arc::new(move || waker.notify_one()));
        let task = HubTask {
            hub,
            registry,
            conns: BTreeMap::new(),
            events: ev_tx,
            stats: HubStats::default(),
            options: Arc::clone(&options),
            closing: false,
            dirty: BTreeSet::new(),
            visit: Vec::new(),
            logs: LogLimiter::new(options.log_limits),
            suppressed: Vec::new(),
        };
        let task = tokio::spawn(task.run(rx, committed));
        let handle = HubHandle {
            to_hub,
            active: Arc::new(AtomicUsize::new(0)),
            options,
        };
        (HubService { handle, task }, ServerEvents { rx: ev_rx })
    }

    /// The handle (cloneable) to give sockets to the hub.
    pub fn handle(&self) -> &HubHandle {
        &self.handle
    }

    /// Stops the hub: every session is closed with `ServerShutdown`, close
    /// frames are flushed (waiting at most
    /// [`ServerOptions::shutdown_grace`]), the registry is flushed and
    /// returned.
    pub async fn stop(self) -> Result<R, ServerError> {
        let _ = self.handle.to_hub.send(HubInput::Stop).await;
        self.task.await.map_err(|_| ServerError::Stopped)
    }
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
                    c.close = Some(Box::new(super::close_for(cause)));
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

    fn reassemble(frames: impl Iterator<Item = tungstenite::Message>) -> (usize, Vec<u8>) {
        let mut n = 0;
        let mut out = Vec::new();
        for m in frames {
            n += 1;
            match m {
                tungstenite::Message::Binary(b) => {
                    assert_eq!(n, 1, "a whole message comes alone");
                    out.extend_from_slice(&b);
                }
                tungstenite::Message::Frame(f) => {
                    assert!(f.len() <= crate::transport::WS_FRAGMENT + 14);
                    out.extend_from_slice(f.payload());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        (n, out)
    }

    #[test]
    fn large_messages_are_written_in_fragments() {
        use crate::transport::WS_FRAGMENT;
        for len in [0, 1, WS_FRAGMENT, WS_FRAGMENT + 1, 3 * WS_FRAGMENT, 1 << 20] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let (first, rest) = <tungstenite::Message as WsFrame>::binary_parts(data.clone());
            assert_eq!(rest.is_some(), len > WS_FRAGMENT, "{len} bytes");
            let (n, out) = reassemble(std::iter::once(first).chain(rest.into_iter().flatten()));
            assert_eq!(out, data, "{len} bytes");
            assert_eq!(n, len.div_ceil(WS_FRAGMENT).max(1), "{len} bytes");
        }
    }

    /// Every connection holds one `ConnShared` (in an `Arc`) and one
    /// `ConnState` (in the hub task's map) for its whole life: memory per
    /// idle connection. They were 128 and 56 bytes with the close reason
    /// inline, and `ConnShared` 104 with a `Notify`.
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
