//! The WebSocket server's public face (feature `tokio`): its options,
//! [`WebSocketServer`], the hub service and handle the axum endpoint shares,
//! events, statistics and errors. How it works is private, under
//! `server/`: the hub task (`hub_task`), the connection tasks
//! (`connection`), the TCP listener and upgrade (`listener`), idle
//! connections dropping their WebSocket state (`hibernate`) and the log
//! limits (`log_limit`). The architecture is described in the
//! [module docs of `transport`](super).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::Stream;
use thiserror::Error;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};

use crate::Framing;
use crate::registry::Registry;
use crate::server::{Authorizer, ConnId, Hub, ServerConfig, ServerEvent};

mod connection;
mod hibernate;
mod hub_task;
mod listener;
mod log_limit;

#[cfg(feature = "axum")]
pub(crate) use connection::Incoming;
pub(crate) use connection::{Connection, WsFrame};
use hub_task::HubInput;
use listener::accept_loop;
pub use log_limit::LogLimits;

const LOG: &str = "crdt_socket_sync::transport::server";

/// How long [`WebSocketServer::stop`] waits for close frames to leave by
/// default.
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Read buffer of every server-side WebSocket: allocated each time an idle
/// plain-TCP connection wakes (and for the life of a TLS or axum one), and
/// zeroed before each read. Updates and acks are a few dozen bytes; a large
/// frame (an upload) just takes one read per 512 bytes.
pub(crate) const WS_SERVER_READ_BUFFER: usize = 512;

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
/// assert_eq!(options.hub.framing, crdt_socket_sync::Framing::Datagram);
/// ```
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The hub's configuration (limits, timeouts, heartbeat, compression).
    /// Its `framing` is forced to [`Framing::Datagram`]. A `seed` of 0 (the
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
    /// no y-websocket endpoint. The tokio server only (not the axum route).
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
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
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
    /// `ServerOptions::tls`, feature `tls`), e.g. the client does not trust the
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
        options.hub.framing = Framing::Datagram;
        options.hub.seed = super::transport_seed(options.hub.seed);
        let (to_hub, rx) = mpsc::channel(options.input_capacity.max(1));
        let (ev_tx, ev_rx) = mpsc::channel(options.event_capacity.max(1));
        let hub = Hub::new(options.hub.clone(), authorizer);
        let options = Arc::new(options);
        let task = hub_task::spawn(hub, registry, ev_tx, Arc::clone(&options), rx);
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

/// Errors of the WebSocket server.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Binding the listening socket failed.
    #[error("could not bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The hub task has ended (or panicked).
    #[error("the hub task has stopped")]
    Stopped,
}

/// A sync server: a TCP listener upgrading to WebSockets, a hub task and a
/// task per connection (see the [module docs](super)).
///
/// ```no_run
/// # #[cfg(feature = "yrs")]
/// # async fn example() -> Result<(), crdt_socket_sync::transport::ServerError> {
/// use crdt_socket_sync::adapters::yrs::YrsDocument;
/// use crdt_socket_sync::registry::MemoryRegistry;
/// use crdt_socket_sync::server::StaticTokens;
/// use crdt_socket_sync::transport::{tokio::WebSocketServer, ServerOptions, TransportEvent};
/// use crdt_socket_sync::wire::Access;
///
/// let auth = StaticTokens::default().with("s3cret", "alice", Access::ReadWrite);
/// let registry = MemoryRegistry::new(|_: &str| YrsDocument::server());
/// let options = ServerOptions { path: Some("/sync".into()), ..ServerOptions::default() };
/// let mut server = WebSocketServer::start("127.0.0.1:0", registry, auth, options).await?;
/// println!("listening on ws://{}/sync", server.local_addr());
/// let mut events = server.take_events().unwrap();
/// while let Some(event) = events.recv().await {
///     if let TransportEvent::Hub(e) = event { println!("{e:?}"); }
/// #   break;
/// }
/// let registry = server.stop().await?; // hand it to the next server
/// # Ok(()) }
/// ```
pub struct WebSocketServer<R> {
    service: HubService<R>,
    addr: SocketAddr,
    events: Option<ServerEvents>,
    stop_accept: Option<oneshot::Sender<()>>,
    accept_task: tokio::task::JoinHandle<()>,
    /// With [`ServerOptions::own_thread`]: ends the server's thread when
    /// sent or dropped.
    exit_thread: Option<oneshot::Sender<()>>,
}

impl<R> core::fmt::Debug for WebSocketServer<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WebSocketServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl<R: Registry + Send + 'static> WebSocketServer<R> {
    /// Binds `addr` (port 0 picks a free port, see
    /// [`WebSocketServer::local_addr`]) and starts serving `registry` with
    /// `authorizer`.
    pub async fn start<A>(
        addr: impl ToSocketAddrs + core::fmt::Debug,
        registry: R,
        authorizer: A,
        options: ServerOptions,
    ) -> Result<Self, ServerError>
    where
        A: Authorizer + Send + 'static,
    {
        let shown = format!("{addr:?}");
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: shown.clone(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: shown.clone(),
            source,
        })?;
        if !options.own_thread {
            return Ok(Self::launch(
                listener, local, registry, authorizer, options, None,
            ));
        }
        // Hand the listener to a thread running a current-thread runtime;
        // everything the server spawns runs there.
        let bind_error = |source| ServerError::Bind {
            addr: shown.clone(),
            source,
        };
        let listener = listener.into_std().map_err(bind_error)?;
        let (ready_tx, ready_rx) = oneshot::channel();
        let (exit_tx, exit_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("crdt-socket-sync-server".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let launched = TcpListener::from_std(listener).map(|listener| {
                        Self::launch(
                            listener,
                            local,
                            registry,
                            authorizer,
                            options,
                            Some(exit_tx),
                        )
                    });
                    if ready_tx.send(launched).is_ok() {
                        // Until `stop` finished, or the server was dropped.
                        let _ = exit_rx.await;
                    }
                });
            });
        if let Err(e) = thread {
            return Err(bind_error(e));
        }
        match ready_rx.await {
            Ok(Ok(server)) => Ok(server),
            Ok(Err(e)) => Err(bind_error(e)),
            Err(_) => Err(ServerError::Stopped),
        }
    }

    /// Spawns the hub task and the accept loop on the current runtime.
    fn launch<A>(
        listener: TcpListener,
        local: SocketAddr,
        registry: R,
        authorizer: A,
        options: ServerOptions,
        exit_thread: Option<oneshot::Sender<()>>,
    ) -> Self
    where
        A: Authorizer + Send + 'static,
    {
        let (service, events) = HubService::spawn(registry, authorizer, options);
        let (stop_tx, stop_rx) = oneshot::channel();
        let handle = service.handle().clone();
        let accept_task = tokio::spawn(accept_loop(listener, handle, stop_rx));
        tracing::info!(target: LOG, addr = %local, "listening");
        WebSocketServer {
            service,
            addr: local,
            events: Some(events),
            stop_accept: Some(stop_tx),
            accept_task,
            exit_thread,
        }
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of the endpoint (with the configured path): `wss://` when
    /// the server terminates TLS (`ServerOptions::tls`, feature `tls`), `ws://`
    /// otherwise. The host is the bound IP address; a certificate issued
    /// for a DNS name needs that name in the URL instead.
    pub fn url(&self) -> String {
        let options = self.handle().options();
        let path = options.path.clone().unwrap_or_default();
        #[cfg(feature = "tls")]
        let scheme = if options.tls.is_some() { "wss" } else { "ws" };
        #[cfg(not(feature = "tls"))]
        let scheme = "ws";
        format!("{scheme}://{}{}", self.addr, path)
    }

    /// The server's events (once; `None` afterwards).
    pub fn take_events(&mut self) -> Option<ServerEvents> {
        self.events.take()
    }

    /// The hub handle (stats, closing a connection).
    pub fn handle(&self) -> &HubHandle {
        self.service.handle()
    }

    /// A snapshot of the hub's state.
    pub async fn stats(&self) -> Result<super::HubStats, ServerError> {
        self.service.handle().stats().await
    }

    /// Graceful stop: stops accepting, closes every session with
    /// `ServerShutdown` (protocol `Close`, then WebSocket close 1001),
    /// flushes the registry and returns it.
    pub async fn stop(mut self) -> Result<R, ServerError> {
        if let Some(tx) = self.stop_accept.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.accept_task).await;
        let registry = self.service.stop().await?;
        if let Some(exit) = self.exit_thread.take() {
            let _ = exit.send(());
        }
        tracing::info!(target: LOG, addr = %self.addr, "stopped");
        Ok(registry)
    }
}
