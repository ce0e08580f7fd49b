//! Client configuration.

use std::time::Duration;

use crate::Limits;
use crate::inbound::Framing;
use crate::wire::DEFAULT_COMPRESS_THRESHOLD;

use super::Backoff;

/// Configuration of a [`ClientSession`](super::ClientSession).
///
/// ```
/// use crdt_socket_sync::client::ClientConfig;
/// let config = ClientConfig { peer: "alice-laptop".into(), token: b"secret".to_vec(), ..ClientConfig::default() };
/// assert!(config.offer_deflate);
/// ```
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// This client's peer id (e.g. its CRDT actor id); informational for the
    /// server, which authenticates the token.
    pub peer: String,
    /// Opaque credentials for the server's authorizer.
    pub token: Vec<u8>,
    /// Size limits for frames, messages, queues and the outbox.
    pub limits: Limits,
    /// How the transport delimits frames.
    pub framing: Framing,
    /// Offer deflate compression in the handshake.
    pub offer_deflate: bool,
    /// Frame bodies from this size are compressed, when negotiated.
    pub compress_threshold: usize,
    /// The connection is closed if the server has not answered `Hello` by
    /// then.
    pub handshake_timeout: Duration,
    /// How often to ping; `None` uses the heartbeat the server announces.
    pub ping_interval: Option<Duration>,
    /// The connection is declared dead (closed with
    /// [`CloseReason::DeadConnection`](crate::wire::CloseReason::DeadConnection),
    /// then reconnected) after this long without a whole, valid frame.
    /// Bytes alone do not count: a frame that never completes (a corrupted
    /// length, a peer trickling bytes) cannot keep a connection alive. It
    /// must exceed the time one frame of up to `limits.max_frame_len` takes
    /// to arrive. Default 6 s.
    pub dead_after: Duration,
    /// Presence changes are sent at most this often; the latest change is
    /// always sent (trailing edge). Default 50 ms.
    pub presence_throttle: Duration,
    /// The local presence state is re-sent this often so the server does
    /// not expire it. Default 10 s.
    pub presence_renew: Duration,
    /// A remote update still missing dependencies this long after the last
    /// catch-up request triggers another one.
    pub resync_after: Duration,
    /// Reconnect policy after a lost connection; `None` disables automatic
    /// reconnection.
    pub reconnect: Option<Backoff>,
    /// Seed for the session's randomness (reconnect jitter, the first delay
    /// included). Clients that share a seed reconnect in lock step after
    /// losing the same server. The session uses it as given (deterministic);
    /// the WebSocket transports replace 0, the default, with a seed from the
    /// OS.
    pub seed: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            peer: String::new(),
            token: Vec::new(),
            limits: Limits::default(),
            framing: Framing::Datagram,
            offer_deflate: true,
            compress_threshold: DEFAULT_COMPRESS_THRESHOLD,
            handshake_timeout: Duration::from_secs(5),
            ping_interval: None,
            dead_after: Duration::from_secs(6),
            presence_throttle: Duration::from_millis(50),
            presence_renew: Duration::from_secs(10),
            resync_after: Duration::from_secs(5),
            reconnect: Some(Backoff::default()),
            seed: 0,
        }
    }
}
