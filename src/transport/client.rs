//! The WebSocket client task and its handle, shared by the tokio and smol
//! adapters (they differ only in how they dial, sleep and spawn).

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tungstenite::Message as WsMessage;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::client::{
    AppTarget, ClientConfig, ClientEvent, ClientSession, ClientStats, CommandError, Peer, Status,
};
use crate::close::CloseCause;
use crate::registry::Registry;
use crate::wire::SessionId;

use super::ClientError;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a runtime adapter provides to the client task.
pub(crate) trait Runtime: 'static {
    /// The WebSocket.
    type Socket: Stream<Item = Result<WsMessage, tungstenite::Error>>
        + Sink<WsMessage, Error = tungstenite::Error>
        + Unpin
        + Send
        + 'static;
    /// Opens a WebSocket to `url` (TCP, TLS for `wss://`, upgrade).
    fn dial(url: String, settings: &DialSettings) -> BoxFuture<Result<Self::Socket, DialError>>;
    /// Completes at `at`.
    fn sleep_until(at: Instant) -> BoxFuture<()>;
}

/// What every dial of one client uses.
#[derive(Clone, Debug)]
pub(crate) struct DialSettings {
    /// Upper bound of a WebSocket message and frame.
    pub(crate) max_message: usize,
    /// The rustls configuration for `wss://` (the caller's or the default
    /// one with the webpki roots); `None` for `ws://` URLs.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// Why a dial failed.
#[derive(Debug)]
pub(crate) enum DialError {
    /// The dial timeout passed.
    Timeout,
    /// The TLS handshake failed (e.g. an untrusted certificate).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Tls(String),
    /// TCP, HTTP or WebSocket upgrade failure.
    Other(String),
}

impl core::fmt::Display for DialError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DialError::Timeout => f.write_str("timed out"),
            DialError::Tls(r) => write!(f, "TLS: {r}"),
            DialError::Other(r) => f.write_str(r),
        }
    }
}

/// Options of a [`WebSocketClient`].
///
/// ```
/// use crdt_socket_sync::client::ClientConfig;
/// use crdt_socket_sync::transport::ClientOptions;
///
/// let options = ClientOptions {
///     session: ClientConfig { peer: "alice".into(), token: b"secret".to_vec(), ..ClientConfig::default() },
///     documents: vec!["notes".into()],
///     ..ClientOptions::default()
/// };
/// assert_eq!(options.documents.len(), 1);
/// ```
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The session's configuration: peer id, token, limits, backoff
    /// (`reconnect`), timeouts, compression. Its `framing` is forced to
    /// [`Framing::Datagram`](crate::Framing::Datagram). A `seed` of 0 (the
    /// default) is replaced by one from OS entropy, so clients that lose
    /// the server together do not reconnect in lockstep; any other value is
    /// used as is (reproducible reconnect jitter, for tests).
    pub session: ClientConfig,
    /// Documents opened before the first connection.
    pub documents: Vec<String>,
    /// Dialing (TCP, TLS and the WebSocket upgrade) must finish within this.
    /// Default 10 s.
    pub dial_timeout: Duration,
    /// Capacity of the event channel; events are dropped (and counted) when
    /// the application does not read them. Default 1024.
    pub event_capacity: usize,
    /// Capacity of the command channel. Default 64.
    pub command_capacity: usize,
    /// The rustls client configuration used for `wss://` URLs (feature
    /// `tls`): custom roots (e.g. a private CA or a self-signed test
    /// certificate), client certificates, ALPN... `None` (the default)
    /// trusts the Mozilla roots of `webpki-roots` with the `ring` provider.
    /// Ignored for `ws://` URLs.
    #[cfg(feature = "tls")]
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            session: ClientConfig::default(),
            documents: Vec::new(),
            dial_timeout: Duration::from_secs(10),
            event_capacity: 1024,
            command_capacity: 64,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

type Job<R> = Box<dyn FnOnce(&mut ClientSession, &mut R, Instant) + Send>;

enum Command<R> {
    Run(Job<R>),
    Disconnect(oneshot::Sender<()>),
    Reconnect,
    Cut,
    Close(oneshot::Sender<()>),
}

/// A handle to a WebSocket client task. Cloneable; every method talks to the
/// task over a bounded channel. The task owns the
/// [`ClientSession`] and the client's documents (`R`).
///
/// Create one with `transport::tokio::connect` (feature `tokio`) or
/// `transport::smol::connect` (feature `smol`).
///
/// ```no_run
/// # #[cfg(all(feature = "tokio", feature = "yrs"))]
/// # async fn example() -> Result<(), crdt_socket_sync::transport::ClientError> {
/// use crdt_socket_sync::adapters::yrs::YrsDocument;
/// use crdt_socket_sync::registry::MemoryRegistry;
/// use crdt_socket_sync::transport::{tokio::connect, ClientOptions};
/// use yrs::{Text, Transact};
///
/// let docs = MemoryRegistry::new(|_: &str| YrsDocument::new(7));
/// let options = ClientOptions { documents: vec!["notes".into()], ..ClientOptions::default() };
/// let (client, mut events) = connect("ws://127.0.0.1:8080", docs, options).await?;
/// client
///     .with_doc("notes", |doc| {
///         let text = doc.get_or_insert_text("body");
///         text.push(&mut doc.transact_mut(), "hello");
///     })
///     .await?;
/// while let Some(event) = events.recv().await {
///     println!("{event:?}");
/// }
/// # Ok(()) }
/// ```
pub struct WebSocketClient<R> {
    commands: mpsc::Sender<Command<R>>,
    status: watch::Receiver<Status>,
}

impl<R> Clone for WebSocketClient<R> {
    fn clone(&self) -> Self {
        WebSocketClient {
            commands: self.commands.clone(),
            status: self.status.clone(),
        }
    }
}

impl<R> core::fmt::Debug for WebSocketClient<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WebSocketClient")
            .field("status", &*self.status.borrow())
            .finish()
    }
}

/// The client's events ([`ClientEvent`]): status changes, remote updates,
/// acknowledgements, presence, errors. Bounded; when it is full, newer
/// events are dropped and counted in [`ClientEvents::dropped`].
#[derive(Debug)]
pub struct ClientEvents {
    rx: mpsc::Receiver<ClientEvent>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl ClientEvents {
    /// The next event; `None` once the client task ended.
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        self.rx.recv().await
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<ClientEvent> {
        self.rx.try_recv().ok()
    }

    /// Events dropped because the channel was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Stream for ClientEvents {
    type Item = ClientEvent;
    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<ClientEvent>> {
        self.rx.poll_recv(cx)
    }
}

impl<R: Registry + Send + 'static> WebSocketClient<R> {
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut ClientSession, &mut R, Instant) -> T + Send + 'static,
    ) -> Result<T, ClientError> {
        let (tx, rx) = oneshot::channel();
        let job: Job<R> = Box::new(move |s, r, now| {
            let _ = tx.send(f(s, r, now));
        });
        self.commands
            .send(Command::Run(job))
            .await
            .map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    /// Edits document `name` with the CRDT's native API, then sends the
    /// edit ([`ClientSession::flush_local`]). The document is opened (and
    /// starts syncing) if it was not. Offline, the edit waits in the outbox
    /// and goes out after reconnecting.
    pub async fn with_doc<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce(&mut R::Doc) -> T + Send + 'static,
    ) -> Result<T, ClientError> {
        self.on_doc(name, f, true).await
    }

    /// Reads document `name` (opened if it was not) without sending
    /// anything.
    pub async fn read_doc<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce(&mut R::Doc) -> T + Send + 'static,
    ) -> Result<T, ClientError> {
        self.on_doc(name, f, false).await
    }

    /// Runs `f` on document `name` (opened if it was not) on the client
    /// task, then, with `flush`, sends what it changed.
    async fn on_doc<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce(&mut R::Doc) -> T + Send + 'static,
        flush: bool,
    ) -> Result<T, ClientError> {
        let name = name.to_string();
        self.run(move |session, registry, now| {
            session.open(registry, &name, now)?;
            let doc = registry.open(&name).map_err(CommandError::from)?;
            let out = f(doc);
            if flush {
                session.flush_local(registry, &name, now)?;
            }
            Ok::<T, CommandError>(out)
        })
        .await?
        .map_err(ClientError::from)
    }

    /// Runs `f` on the client task with the session and the documents (for
    /// anything the other methods do not cover). Drive nothing yourself:
    /// the task drains the session's outputs after `f` returns.
    pub async fn with_session<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut ClientSession, &mut R) -> T + Send + 'static,
    ) -> Result<T, ClientError> {
        self.run(move |s, r, _| f(s, r)).await
    }

    /// Starts syncing document `name`.
    pub async fn open(&self, name: &str) -> Result<(), ClientError> {
        let name = name.to_string();
        self.run(move |s, r, now| s.open(r, &name, now)).await??;
        Ok(())
    }

    /// Asks the server for everything `name` lacks.
    pub async fn request_sync(&self, name: &str) -> Result<(), ClientError> {
        let name = name.to_string();
        self.run(move |s, r, _| s.request_sync(r, &name)).await??;
        Ok(())
    }

    /// Sets (or clears) this client's presence state in `name`.
    pub async fn set_presence(
        &self,
        name: &str,
        state: Option<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let name = name.to_string();
        self.run(move |s, _, now| s.set_presence(&name, state, now))
            .await??;
        Ok(())
    }

    /// Everyone else's presence in `name`.
    pub async fn presence(&self, name: &str) -> Result<Vec<(SessionId, Peer)>, ClientError> {
        let name = name.to_string();
        self.run(move |s, _, _| s.presence(&name)).await
    }

    /// Sends an application message (needs a live connection).
    pub async fn send_app(
        &self,
        target: AppTarget,
        kind: u32,
        data: Vec<u8>,
    ) -> Result<(), ClientError> {
        self.run(move |s, _, _| s.send_app(target, kind, data))
            .await??;
        Ok(())
    }

    /// Local updates of `name` not yet acknowledged by the server.
    pub async fn unacknowledged(&self, name: &str) -> Result<usize, ClientError> {
        let name = name.to_string();
        self.run(move |s, _, _| s.unacknowledged(&name)).await
    }

    /// The session's counters.
    pub async fn stats(&self) -> Result<ClientStats, ClientError> {
        self.run(|s, _, _| s.stats()).await
    }

    /// The current status.
    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// A receiver of status changes (connecting, connected, reconnecting,
    /// disconnected, closed).
    pub fn status_stream(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Waits until the status is `want`; returns `false` if the client
    /// task ended first. Wrap it in your runtime's timeout.
    pub async fn wait_for_status(&self, want: Status) -> bool {
        let mut rx = self.status.clone();
        loop {
            if *rx.borrow_and_update() == want {
                return true;
            }
            if rx.changed().await.is_err() {
                return *rx.borrow() == want;
            }
        }
    }

    /// Closes the connection (a `Close` goes to the server) and cancels
    /// automatic reconnection; [`WebSocketClient::reconnect`] starts again.
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Disconnect(tx))
            .await
            .map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    /// Dials again after [`WebSocketClient::disconnect`].
    pub async fn reconnect(&self) -> Result<(), ClientError> {
        self.commands
            .send(Command::Reconnect)
            .await
            .map_err(|_| ClientError::Stopped)
    }

    /// Drops the transport abruptly, without a `Close`, as a network failure
    /// would; the client then reconnects by itself with its backoff. For
    /// tests and demos of offline editing.
    pub async fn cut_transport(&self) -> Result<(), ClientError> {
        self.commands
            .send(Command::Cut)
            .await
            .map_err(|_| ClientError::Stopped)
    }

    /// Closes the session for good and ends the client task.
    pub async fn close(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Close(tx))
            .await
            .map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)
    }
}

/// Spawnable parts of a new client: the handle, its events, the task and
/// the receiver of the first connection's outcome.
pub(crate) struct Parts<R> {
    pub(crate) client: WebSocketClient<R>,
    pub(crate) events: ClientEvents,
    pub(crate) task: BoxFuture<()>,
    pub(crate) first: oneshot::Receiver<Result<(), ClientError>>,
}

/// The configuration the client task gives its [`ClientSession`]: the
/// options' one, with WebSocket framing and, unless a seed was set, a seed
/// from the OS (see [`ClientOptions::session`]).
fn session_config(options: &ClientOptions) -> ClientConfig {
    let mut config = options.session.clone();
    config.framing = crate::Framing::Datagram;
    config.seed = super::transport_seed(config.seed);
    config
}

/// Builds the client task for runtime `RT`.
pub(crate) fn build<RT: Runtime, R: Registry + Send + 'static>(
    url: &str,
    mut registry: R,
    options: ClientOptions,
) -> Result<Parts<R>, ClientError> {
    super::check_url(url)?;
    let config = session_config(&options);
    let dial = DialSettings {
        max_message: super::max_ws_message(&config.limits),
        #[cfg(feature = "tls")]
        tls: if url.starts_with("wss://") {
            match &options.tls {
                Some(tls) => Some(tls.clone()),
                None => Some(super::rustls_config().map_err(|reason| ClientError::Tls {
                    url: url.to_string(),
                    reason,
                })?),
            }
        } else {
            None
        },
    };
    let now = Instant::now();
    let mut session = ClientSession::new(config, now);
    for name in &options.documents {
        session.open(&mut registry, name, now)?;
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(options.command_capacity.max(1));
    let (status_tx, status_rx) = watch::channel(Status::Idle);
    let (ev_tx, ev_rx) = mpsc::channel(options.event_capacity.max(1));
    let (first_tx, first_rx) = oneshot::channel();
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let task = Driver::<RT, R> {
        url: url.to_string(),
        dial_settings: dial,
        dial_timeout: options.dial_timeout,
        session,
        registry,
        commands: cmd_rx,
        status: status_tx,
        events: ev_tx,
        dropped: dropped.clone(),
        first: Some(first_tx),
        socket: None,
        dial: None,
        timer: None,
        done: Vec::new(),
        last_close: None,
    };
    Ok(Parts {
        client: WebSocketClient {
            commands: cmd_tx,
            status: status_rx,
        },
        events: ClientEvents { rx: ev_rx, dropped },
        task: Box::pin(task.run()),
        first: first_rx,
    })
}

/// Awaits the first connection's outcome (used by both `connect`s).
pub(crate) async fn first_connection(
    first: oneshot::Receiver<Result<(), ClientError>>,
) -> Result<(), ClientError> {
    first.await.unwrap_or(Err(ClientError::Stopped))
}

enum Step<R> {
    Command(Option<Command<R>>),
    Dialed(Result<(), DialError>),
    Input(Option<Result<WsMessage, tungstenite::Error>>),
    Timer,
}

struct Driver<RT: Runtime, R> {
    url: String,
    dial_settings: DialSettings,
    dial_timeout: Duration,
    session: ClientSession,
    registry: R,
    commands: mpsc::Receiver<Command<R>>,
    status: watch::Sender<Status>,
    events: mpsc::Sender<ClientEvent>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Where to report the first connection's outcome.
    first: Option<oneshot::Sender<Result<(), ClientError>>>,
    socket: Option<RT::Socket>,
    dial: Option<BoxFuture<Result<RT::Socket, DialError>>>,
    timer: Option<(Instant, BoxFuture<()>)>,
    /// Callers waiting for the end of a `disconnect`.
    done: Vec<oneshot::Sender<()>>,
    /// The server's WebSocket close code and reason, if it sent one.
    last_close: Option<(u16, String)>,
}

impl<RT: Runtime, R: Registry + Send + 'static> Driver<RT, R> {
    fn start_dial(&mut self) {
        let url = self.url.clone();
        tracing::debug!(target: "crdt_socket_sync::transport::client", %url, "dialing");
        let dial = RT::dial(url, &self.dial_settings);
        let timeout = RT::sleep_until(Instant::now() + self.dial_timeout);
        self.dial = Some(Box::pin(async move {
            let mut dial = dial;
            let mut timeout = timeout;
            poll_fn(|cx| {
                if let Poll::Ready(r) = dial.as_mut().poll(cx) {
                    return Poll::Ready(r);
                }
                if timeout.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(DialError::Timeout));
                }
                Poll::Pending
            })
            .await
        }));
    }

    async fn run(mut self) {
        self.start_dial();
        loop {
            let step = self.next_step().await;
            let now = Instant::now();
            match step {
                Step::Command(None) => {
                    // Every handle is gone: leave politely.
                    self.session.close(now);
                    self.drain().await;
                    break;
                }
                Step::Command(Some(Command::Run(job))) => {
                    job(&mut self.session, &mut self.registry, now)
                }
                Step::Command(Some(Command::Disconnect(tx))) => {
                    self.dial = None;
                    self.session.disconnect(now);
                    self.done.push(tx);
                }
                Step::Command(Some(Command::Reconnect)) => {
                    if self.socket.is_none() && self.dial.is_none() {
                        self.start_dial();
                    }
                }
                Step::Command(Some(Command::Cut)) => {
                    if self.socket.take().is_some() {
                        tracing::info!(target: "crdt_socket_sync::transport::client", "transport cut");
                        self.session.transport_lost(now);
                    }
                }
                Step::Command(Some(Command::Close(tx))) => {
                    self.dial = None;
                    self.session.close(now);
                    self.drain().await;
                    self.close_socket(1000, "client closed").await;
                    let _ = tx.send(());
                    break;
                }
                Step::Dialed(Ok(())) => {
                    self.last_close = None;
                    tracing::info!(target: "crdt_socket_sync::transport::client", url = %self.url, "transport up");
                    self.session.connect(now);
                }
                Step::Dialed(Err(reason)) => {
                    tracing::warn!(target: "crdt_socket_sync::transport::client", url = %self.url, %reason, "dial failed");
                    if let Some(first) = self.first.take() {
                        let url = self.url.clone();
                        let err = match reason {
                            DialError::Timeout => ClientError::Timeout(url),
                            DialError::Tls(reason) => ClientError::Tls { url, reason },
                            DialError::Other(reason) => ClientError::Dial { url, reason },
                        };
                        let _ = first.send(Err(err));
                        break;
                    }
                    self.session.dial_failed(now);
                }
                Step::Input(Some(Ok(msg))) => match msg {
                    WsMessage::Binary(bytes) => {
                        self.session.handle_input(now, &bytes, &mut self.registry)
                    }
                    WsMessage::Text(text) => {
                        // Not our protocol: the core reports it as bad input.
                        self.session
                            .handle_input(now, text.as_bytes(), &mut self.registry)
                    }
                    WsMessage::Close(frame) => {
                        tracing::debug!(target: "crdt_socket_sync::transport::client", ?frame, "server closed the WebSocket");
                        self.last_close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                        self.socket = None;
                        self.session.transport_lost(now);
                    }
                    _ => {} // ping/pong: tungstenite answers pings itself
                },
                Step::Input(Some(Err(e))) => {
                    tracing::debug!(target: "crdt_socket_sync::transport::client", error = %e, "socket error");
                    self.socket = None;
                    self.session.transport_lost(now);
                }
                Step::Input(None) => {
                    self.socket = None;
                    self.session.transport_lost(now);
                }
                Step::Timer => {
                    self.timer = None;
                    self.session.handle_timeout(now);
                }
            }
            if !self.drain().await {
                break;
            }
        }
        let _ = self.status.send(self.session.status());
        for tx in self.done.drain(..) {
            let _ = tx.send(());
        }
    }

    async fn next_step(&mut self) -> Step<R> {
        let wants_input = self.session.wants_input();
        poll_fn(|cx| {
            if let Poll::Ready(c) = self.commands.poll_recv(cx) {
                return Poll::Ready(Step::Command(c));
            }
            if let Some(d) = self.dial.as_mut()
                && let Poll::Ready(r) = d.as_mut().poll(cx)
            {
                self.dial = None;
                return Poll::Ready(Step::Dialed(r.map(|s| self.socket = Some(s))));
            }
            if wants_input
                && let Some(s) = self.socket.as_mut()
                && let Poll::Ready(m) = s.poll_next_unpin(cx)
            {
                return Poll::Ready(Step::Input(m));
            }
            if let Some((_, t)) = self.timer.as_mut()
                && t.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Step::Timer);
            }
            Poll::Pending
        })
        .await
    }

    async fn close_socket(&mut self, code: u16, reason: &str) {
        if let Some(mut s) = self.socket.take() {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.to_string().into(),
            };
            let _ = s.send(WsMessage::Close(Some(frame))).await;
        }
    }

    /// The driving contract: transmits, then events, then the timer.
    /// Returns `false` when the task should end.
    async fn drain(&mut self) -> bool {
        let mut wrote = false;
        while let Some(frame) = self.session.poll_transmit() {
            if let Some(s) = self.socket.as_mut() {
                let mut ok = true;
                for part in super::Fragments::new(frame) {
                    ok = ok && s.feed(part).await.is_ok();
                }
                if ok {
                    wrote = true;
                } else {
                    self.socket = None;
                    self.session.transport_lost(Instant::now());
                }
            }
        }
        if wrote
            && let Some(s) = self.socket.as_mut()
            && s.flush().await.is_err()
        {
            self.socket = None;
            self.session.transport_lost(Instant::now());
            // Frames queued by the loss (none today) are dropped with it.
            while self.session.poll_transmit().is_some() {}
        }
        let mut keep_going = true;
        while let Some(event) = self.session.poll_event() {
            match &event {
                ClientEvent::Status(s) => {
                    tracing::debug!(target: "crdt_socket_sync::transport::client", status = ?s, "status");
                    let _ = self.status.send(*s);
                    if matches!(s, Status::Disconnected | Status::Closed) {
                        for tx in self.done.drain(..) {
                            let _ = tx.send(());
                        }
                    }
                }
                ClientEvent::Connected { session, .. } => {
                    tracing::info!(target: "crdt_socket_sync::transport::client", session = session.0, "connected");
                    if let Some(first) = self.first.take() {
                        let _ = first.send(Ok(()));
                    }
                }
                ClientEvent::Dial { attempt } => {
                    tracing::info!(target: "crdt_socket_sync::transport::client", attempt, "reconnecting");
                    self.start_dial();
                }
                ClientEvent::Closed { cause } => {
                    tracing::info!(target: "crdt_socket_sync::transport::client", %cause, "connection closed");
                    let (code, text) = super::close_for(cause);
                    self.close_socket(code, &text).await;
                    if let Some(first) = self.first.take() {
                        let err = match cause {
                            CloseCause::Rejected { code, message } => ClientError::Rejected {
                                code: *code,
                                message: message.clone(),
                            },
                            CloseCause::TransportLost if self.last_close.is_some() => {
                                let (code, reason) = self.last_close.take().unwrap_or_default();
                                ClientError::ServerClosed { code, reason }
                            }
                            other => ClientError::Closed(other.clone()),
                        };
                        let _ = first.send(Err(err));
                        keep_going = false;
                    }
                }
                ClientEvent::GaveUp { attempts } => {
                    tracing::warn!(target: "crdt_socket_sync::transport::client", attempts, "gave up reconnecting");
                }
                _ => {}
            }
            if self.events.try_send(event).is_err() {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let next = self.session.poll_timeout();
        if next != self.timer.as_ref().map(|(at, _)| *at) {
            self.timer = next.map(|at| (at, RT::sleep_until(at)));
        }
        keep_going
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two default clients that lose the server together must not retry
    /// in lockstep: their reconnect jitter comes from the session's seed.
    #[test]
    fn default_clients_get_different_seeds_and_a_fixed_seed_is_kept() {
        let a = session_config(&ClientOptions::default());
        let b = session_config(&ClientOptions::default());
        assert_ne!(a.seed, b.seed, "two default clients share seed {}", a.seed);
        let fixed = ClientOptions {
            session: ClientConfig {
                seed: 42,
                ..ClientConfig::default()
            },
            ..ClientOptions::default()
        };
        assert_eq!(session_config(&fixed).seed, 42);
        assert_eq!(session_config(&fixed).framing, crate::Framing::Datagram);
    }
}
