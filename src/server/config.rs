//! Server configuration.

use std::time::Duration;

use crate::Limits;
use crate::inbound::Framing;
use crate::wire::{Compression, DEFAULT_COMPRESS_THRESHOLD};

/// Configuration of a [`Hub`](super::Hub) and its sessions.
///
/// ```
/// use crdt_socket_sync::server::ServerConfig;
/// use std::time::Duration;
/// let config = ServerConfig { idle_timeout: Duration::from_secs(30), ..ServerConfig::default() };
/// assert_eq!(config.handshake_timeout, Duration::from_secs(5));
/// ```
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Size limits for frames, messages and queues.
    pub limits: Limits,
    /// How the transport delimits frames.
    pub framing: Framing,
    /// Compression the server accepts (used when the client offers it).
    pub compression: Compression,
    /// Frame bodies from this size are compressed, when negotiated.
    pub compress_threshold: usize,
    /// A connection that has not completed the handshake by then is closed.
    pub handshake_timeout: Duration,
    /// The ping interval announced to clients.
    pub heartbeat: Duration,
    /// A session that sent no whole valid frame for this long is closed
    /// (bytes of a frame that never completes do not count).
    pub idle_timeout: Duration,
    /// A session holding an incomplete input this long after its first
    /// byte arrived is closed with
    /// [`CloseCause::IncompleteInput`](crate::CloseCause::IncompleteInput)
    /// (`IdleTimeout` on the wire): a fragmented message, or a frame begun
    /// on a stream. A peer must send any one message within this time (at
    /// the default 64 MiB `max_message_len`, about 2.2 MB/s for the
    /// largest). A stream's partial frame is also bounded by
    /// `idle_timeout`, since only whole frames count as traffic. Default
    /// 30 s.
    pub incomplete_input_timeout: Duration,
    /// Updates still missing dependencies this long after the last
    /// `SyncRequest` trigger another one.
    pub resync_after: Duration,
    /// A presence state not renewed for this long is removed. Default 30 s
    /// (clients renew every 10 s by default).
    pub presence_ttl: Duration,
    /// How often to prune history (where the document supports it) down
    /// to the version every subscriber confirmed. `None` (the default)
    /// never prunes, so clients that are offline but will come back can
    /// always be served a delta.
    pub prune_interval: Option<Duration>,
    /// How long a document nobody has open stays loaded before it leaves
    /// the hub's directory and the registry is told to unload it
    /// ([`Registry::unload`](crate::registry::Registry::unload)): a client
    /// that reconnects or reopens it within this time finds it loaded.
    /// `None`: documents stay loaded until the application unloads them.
    /// Default 1 s: long enough for a reconnect after a blip.
    ///
    /// Lingering documents are charged to the connection whose leaving
    /// started their linger, at most
    /// [`Limits::max_docs_per_connection`](crate::Limits::max_docs_per_connection)
    /// each: past that, the one that would leave first leaves at once, so
    /// a client cycling through documents keeps at most that many loaded
    /// besides those it has open.
    ///
    /// ```
    /// use crdt_socket_sync::server::ServerConfig;
    /// use std::time::Duration;
    /// // Unload as soon as the last subscriber leaves (at the next
    /// // `handle_timeout`, which `poll_timeout` asks for at once).
    /// let config = ServerConfig { unload_after: Some(Duration::ZERO), ..ServerConfig::default() };
    /// # let _ = config;
    /// ```
    pub unload_after: Option<Duration>,
    /// Seed for session and transfer ids. The hub uses it as given
    /// (deterministic); the WebSocket transports replace 0, the default,
    /// with a seed from the OS on every start.
    pub seed: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: Limits::default(),
            framing: Framing::Datagram,
            compression: Compression::Deflate,
            compress_threshold: DEFAULT_COMPRESS_THRESHOLD,
            handshake_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            incomplete_input_timeout: Duration::from_secs(30),
            resync_after: Duration::from_secs(5),
            presence_ttl: Duration::from_secs(30),
            prune_interval: None,
            unload_after: Some(Duration::from_secs(1)),
            seed: 0,
        }
    }
}
