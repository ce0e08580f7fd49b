//! The tokio WebSocket server and client (feature `tokio`; `wss://` with
//! feature `tls`).
//!
//! With `tls`, the server terminates TLS itself when
//! `ServerOptions::tls` holds a `rustls::ServerConfig` (or leave it `None`
//! and put the server behind a TLS proxy), and the client trusts the roots
//! of `ClientOptions::tls` (default: the webpki roots):
//!
//! ```no_run
//! # #[cfg(all(feature = "yrs", feature = "tls"))]
//! # async fn example(
//! #     server_tls: std::sync::Arc<rustls::ServerConfig>,
//! #     client_tls: std::sync::Arc<rustls::ClientConfig>,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use crdt_socket_sync::adapters::yrs::YrsDocument;
//! use crdt_socket_sync::registry::MemoryRegistry;
//! use crdt_socket_sync::server::AllowAll;
//! use crdt_socket_sync::transport::tokio::{connect, WebSocketServer};
//! use crdt_socket_sync::transport::{ClientOptions, ServerOptions};
//!
//! let registry = MemoryRegistry::new(|_: &str| YrsDocument::server(0));
//! let options = ServerOptions { tls: Some(server_tls), ..ServerOptions::default() };
//! let server = WebSocketServer::start("127.0.0.1:8443", registry, AllowAll, options).await?;
//! let docs = MemoryRegistry::new(|_: &str| YrsDocument::new(1));
//! let options = ClientOptions { tls: Some(client_tls), ..ClientOptions::default() };
//! let (client, _events) = connect("wss://localhost:8443", docs, options).await?;
//! # Ok(()) }
//! ```
//!
//! A server and a client in ten lines:
//!
//! ```no_run
//! # #[cfg(feature = "yrs")]
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use crdt_socket_sync::adapters::yrs::YrsDocument;
//! use crdt_socket_sync::registry::MemoryRegistry;
//! use crdt_socket_sync::server::AllowAll;
//! use crdt_socket_sync::transport::tokio::{connect, WebSocketServer};
//! use crdt_socket_sync::transport::{ClientOptions, ServerOptions};
//! use yrs::{Text, Transact};
//!
//! let registry = MemoryRegistry::new(|_: &str| YrsDocument::server(0));
//! let server = WebSocketServer::start("127.0.0.1:8080", registry, AllowAll, ServerOptions::default()).await?;
//!
//! let docs = MemoryRegistry::new(|_: &str| YrsDocument::new(1));
//! let options = ClientOptions { documents: vec!["notes".into()], ..ClientOptions::default() };
//! let (client, _events) = connect(&format!("ws://{}", server.local_addr()), docs, options).await?;
//! client.with_doc("notes", |doc| {
//!     doc.get_or_insert_text("body").push(&mut doc.transact_mut(), "hi");
//! }).await?;
//! let _registry = server.stop().await?;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::registry::Registry;
use crate::server::Authorizer;

use super::client::{BoxFuture, Runtime, build, first_connection};
use super::hibernate::{HibernatingWebSocket, Watched, server_ws_config};
use super::hub_task::{ConnTask, HubHandle, HubService, RefuseReason, ServerEvents, ServerOptions};
use super::{
    CLOSE_TRY_AGAIN_LATER, ClientError, ClientEvents, ClientOptions, ServerError, WebSocketClient,
};
use super::{DialError, DialSettings};

const LOG: &str = "crdt_socket_sync::transport::server";

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
/// let registry = MemoryRegistry::new(|_: &str| YrsDocument::server(0));
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
    /// the server terminates TLS ([`ServerOptions::tls`]), `ws://`
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

async fn accept_loop(listener: TcpListener, handle: HubHandle, mut stop: oneshot::Receiver<()>) {
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, addr)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve_tcp(tcp, addr, handle.clone()));
            }
            Err(e) => {
                tracing::warn!(target: LOG, error = %e, "accept failed");
                // E.g. out of file descriptors: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn ws_config(handle: &HubHandle) -> WebSocketConfig {
    server_ws_config(max_message(handle))
}

fn max_message(handle: &HubHandle) -> usize {
    super::max_ws_message(&handle.options().hub.limits)
}

/// Serves one accepted TCP connection: TLS (when configured), the WebSocket
/// upgrade, then the connection until it closes.
///
/// The task lives as long as the connection, so its size is memory per idle
/// connection: the handshakes run boxed (their state is large and
/// short-lived), then the task holds the [`Connection`](super::hub_task::Connection)
/// alone, a future written by hand, whose WebSocket holds the TCP stream
/// alone while idle ([`HibernatingWebSocket`]).
fn serve_tcp(
    tcp: TcpStream,
    addr: SocketAddr,
    handle: HubHandle,
) -> ConnTask<HibernatingWebSocket, tungstenite::Message> {
    let deadline = tokio::time::Instant::now() + handle.options().hub.handshake_timeout;
    #[cfg(feature = "tls")]
    if let Some(config) = handle.options().tls.clone() {
        return ConnTask::Boxed(Box::pin(serve_tls(tcp, addr, handle, deadline, config)));
    }
    ConnTask::Opening(Box::pin(async move {
        let (ws, admission, yjs) =
            upgrade(Watched::upgrading(tcp), addr, &handle, deadline).await?;
        let ws = HibernatingWebSocket::new(ws, max_message(&handle));
        #[cfg(feature = "yrs")]
        if let Some(target) = yjs {
            // A y-websocket client: its own task, translated.
            let socket = super::yjs::YjsSocket::new(ws, target, handle.options());
            let conn = handle.connection::<_, tungstenite::Message>(socket, Some(addr), admission);
            tokio::spawn(conn);
            return None;
        }
        #[cfg(not(feature = "yrs"))]
        let NoYjs = yjs;
        Some(handle.connection(ws, Some(addr), admission))
    }))
}

/// [`serve_tcp`] after a TLS handshake.
#[cfg(feature = "tls")]
async fn serve_tls(
    tcp: TcpStream,
    addr: SocketAddr,
    handle: HubHandle,
    deadline: tokio::time::Instant,
    config: std::sync::Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            let Some((ws, admission, yjs)) = Box::pin(upgrade(tls, addr, &handle, deadline)).await
            else {
                return;
            };
            #[cfg(feature = "yrs")]
            if let Some(target) = yjs {
                let socket = super::yjs::YjsSocket::new(ws, target, handle.options());
                let conn =
                    handle.connection::<_, tungstenite::Message>(socket, Some(addr), admission);
                return conn.await;
            }
            #[cfg(not(feature = "yrs"))]
            let NoYjs = yjs;
            handle.connection(ws, Some(addr), admission).await;
        }
        Ok(Err(e)) => {
            tracing::debug!(target: LOG, %addr, error = %e, "TLS handshake failed");
            handle
                .refused(Some(addr), RefuseReason::Tls(e.to_string()))
                .await;
        }
        Err(_) => {
            handle
                .refused(Some(addr), RefuseReason::Tls("timed out".into()))
                .await;
        }
    }
}

/// The WebSocket upgrade of an accepted stream, with its slot under the
/// connection limit; `None` when it was refused (and reported).
// The callback's signature is tungstenite's `Callback`.
#[allow(clippy::result_large_err)]
async fn upgrade<S>(
    stream: S,
    addr: SocketAddr,
    handle: &HubHandle,
    deadline: tokio::time::Instant,
) -> Option<(WebSocketStream<S>, super::hub_task::Admission, Yjs)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let admission = handle.try_admit();
    let mut refused: Option<RefuseReason> = None;
    #[cfg_attr(not(feature = "yrs"), allow(unused_mut))]
    let mut yjs: Yjs = Default::default();
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let path = req.uri().path();
        #[cfg(feature = "yrs")]
        {
            yjs = super::yjs::yjs_target(handle.options(), path, req.uri().query());
        }
        if !yjs_present(&yjs) && !handle.path_ok(path) {
            refused = Some(RefuseReason::Path(path.to_string()));
            return Err(error_response(
                StatusCode::NOT_FOUND,
                "no sync endpoint here",
            ));
        }
        let origin = req.headers().get("origin").and_then(|o| o.to_str().ok());
        if !handle.origin_ok(origin) {
            refused = Some(RefuseReason::Origin(origin.unwrap_or_default().to_string()));
            return Err(error_response(StatusCode::FORBIDDEN, "origin not allowed"));
        }
        Ok(resp)
    };
    let upgrade = tokio::time::timeout_at(
        deadline,
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config(handle))),
    )
    .await;
    let ws = match upgrade {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            let reason = refused.unwrap_or_else(|| RefuseReason::Handshake(e.to_string()));
            handle.refused(Some(addr), reason).await;
            return None;
        }
        Err(_) => {
            handle
                .refused(Some(addr), RefuseReason::Handshake("timed out".into()))
                .await;
            return None;
        }
    };
    match admission {
        Some(admission) => Some((ws, admission, yjs)),
        None => {
            let limit = handle.options().max_connections;
            refuse_at_limit(ws, limit).await;
            handle
                .refused(Some(addr), RefuseReason::ConnectionLimit { limit })
                .await;
            None
        }
    }
}

/// The y-websocket room and token an upgrade asked for (feature `yrs`).
#[cfg(feature = "yrs")]
type Yjs = Option<super::yjs::YjsTarget>;
#[cfg(not(feature = "yrs"))]
type Yjs = NoYjs;
/// Without `yrs` there is no y-websocket endpoint.
#[cfg(not(feature = "yrs"))]
#[derive(Default)]
struct NoYjs;

#[cfg(feature = "yrs")]
fn yjs_present(yjs: &Yjs) -> bool {
    yjs.is_some()
}
#[cfg(not(feature = "yrs"))]
fn yjs_present(_: &Yjs) -> bool {
    false
}

async fn refuse_at_limit<S>(mut ws: WebSocketStream<S>, limit: usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::SinkExt;
    let frame = tungstenite::protocol::CloseFrame {
        code: CLOSE_TRY_AGAIN_LATER.into(),
        reason: format!("server at its connection limit ({limit})").into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        ws.send(tungstenite::Message::Close(Some(frame))),
    )
    .await;
}

fn error_response(status: StatusCode, text: &str) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(text.to_string()));
    *resp.status_mut() = status;
    resp
}

/// The tokio runtime for the client task.
pub(crate) struct Tokio;

impl Runtime for Tokio {
    type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

    fn dial(url: String, settings: &DialSettings) -> BoxFuture<Result<Self::Socket, DialError>> {
        let max_message = settings.max_message;
        #[cfg(feature = "tls")]
        let connector = settings
            .tls
            .clone()
            .map(tokio_tungstenite::Connector::Rustls);
        Box::pin(async move {
            let config = WebSocketConfig::default()
                .max_message_size(Some(max_message))
                .max_frame_size(Some(max_message))
                .read_buffer_size(super::WS_READ_BUFFER)
                .write_buffer_size(0);
            #[cfg(feature = "tls")]
            let (ws, _resp) = tokio_tungstenite::connect_async_tls_with_config(
                url,
                Some(config),
                true,
                connector,
            )
            .await
            .map_err(super::dial_error)?;
            #[cfg(not(feature = "tls"))]
            let (ws, _resp) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
                .await
                .map_err(super::dial_error)?;
            Ok(ws)
        })
    }

    fn sleep_until(at: Instant) -> BoxFuture<()> {
        Box::pin(tokio::time::sleep_until(at.into()))
    }
}

/// Connects a client to `url` (`ws://` or, with feature `tls`, `wss://`)
/// on the current tokio runtime. Resolves once the handshake succeeded, or
/// with a typed error (dial failure, timeout, rejected token...). From then
/// on the client reconnects by itself, with the core's backoff, until
/// [`WebSocketClient::disconnect`] or [`WebSocketClient::close`].
///
/// `registry` holds the client's documents; `options.documents` are opened
/// before connecting.
///
/// ```no_run
/// # #[cfg(feature = "yrs")]
/// # async fn example() -> Result<(), crdt_socket_sync::transport::ClientError> {
/// use crdt_socket_sync::adapters::yrs::YrsDocument;
/// use crdt_socket_sync::client::ClientEvent;
/// use crdt_socket_sync::registry::MemoryRegistry;
/// use crdt_socket_sync::transport::{tokio::connect, ClientOptions};
///
/// let docs = MemoryRegistry::new(|_: &str| YrsDocument::new(42));
/// let options = ClientOptions { documents: vec!["notes".into()], ..ClientOptions::default() };
/// let (client, mut events) = connect("ws://127.0.0.1:8080", docs, options).await?;
/// while let Some(event) = events.recv().await {
///     match event {
///         ClientEvent::RemoteUpdate { name, .. } => println!("{name} changed"),
///         ClientEvent::Acknowledged { name, applied, .. } => println!("{name}: {applied} acked"),
///         ClientEvent::Status(status) => println!("{status:?}"),
///         _ => {}
///     }
/// }
/// client.disconnect().await?;
/// # Ok(()) }
/// ```
pub async fn connect<R: Registry + Send + 'static>(
    url: &str,
    registry: R,
    options: ClientOptions,
) -> Result<(WebSocketClient<R>, ClientEvents), ClientError> {
    let parts = build::<Tokio, R>(url, registry, options)?;
    tokio::spawn(parts.task);
    first_connection(parts.first).await?;
    Ok((parts.client, parts.events))
}

impl<R: Registry + Send + 'static> WebSocketClient<R> {
    /// [`connect`] on tokio.
    pub async fn connect(
        url: &str,
        registry: R,
        options: ClientOptions,
    ) -> Result<(Self, ClientEvents), ClientError> {
        connect(url, registry, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MemoryRegistry;
    use crate::server::AllowAll;
    use crate::testing::OpLog;

    /// The task of a connection lives as long as the connection: its size is
    /// memory per idle connection (workload C of the comparison). tokio
    /// allocates it with its header and trailer (96 bytes) in a cell aligned
    /// to 128 bytes.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let registry = MemoryRegistry::new(|_: &str| OpLog::new(0));
        let (service, _events) = HubService::spawn(registry, AllowAll, ServerOptions::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        let task = serve_tcp(tcp, peer, service.handle().clone());
        let size = std::mem::size_of_val(&task);
        let ws = std::mem::size_of::<HibernatingWebSocket>();
        // What tokio keeps of it: its `Stage` (the future, or the output).
        #[allow(dead_code)]
        enum Stage<T> {
            Running(T),
            Finished(Result<(), (Option<Box<dyn std::any::Any + Send>>, std::num::NonZeroU64)>),
            Consumed,
        }
        let stage =
            std::mem::size_of::<Stage<ConnTask<HibernatingWebSocket, tungstenite::Message>>>();
        eprintln!("connection task {size} bytes (stage {stage}), its WebSocket {ws}");
        // 144 bytes with tokio-tungstenite 0.30 and every feature (the
        // WebSocket is 48 while asleep: the TCP stream, or a box): with
        // tokio's 96, a 256-byte cell. It was 416 (a 512-byte cell) with the
        // WebSocket inline, 776 (1,024) as an `async fn`, 2,304 before the
        // handshakes were boxed.
        assert!(
            stage <= 160,
            "connection task of {size} bytes (stage {stage})"
        );
        drop(task);
        service.stop().await.unwrap();
    }

    /// Session ids (and transfer ids, from the same generator) come from
    /// the hub's seed: two servers started with the default options must
    /// not hand out the same ones, or a transfer id of the last run could
    /// resume a different payload after a restart.
    #[tokio::test]
    async fn two_default_servers_hand_out_different_session_ids() {
        let mut ids = Vec::new();
        for _ in 0..2 {
            let registry = MemoryRegistry::new(|_: &str| OpLog::new(0));
            let server =
                WebSocketServer::start("127.0.0.1:0", registry, AllowAll, ServerOptions::default())
                    .await
                    .unwrap();
            let docs = MemoryRegistry::new(|_: &str| OpLog::new(1));
            let (client, _events) = connect(&server.url(), docs, ClientOptions::default())
                .await
                .unwrap();
            let id = client.with_session(|s, _| s.session_id()).await.unwrap();
            ids.push(id.expect("connected"));
            client.close().await.unwrap();
            server.stop().await.unwrap();
        }
        assert_ne!(ids[0], ids[1], "both servers assigned {:?}", ids[0]);
    }
}
