//! Why a session ended. Reported exactly once per session, in its `Closed`
//! event, after a `Close` frame was queued for the peer where one makes sense.

use crate::inbound::InboundError;
use crate::wire::{CloseReason, RejectCode};

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseCause {
    /// This side closed it: the application asked, or a policy fired
    /// (handshake or idle timeout, dead connection, slow consumer...).
    Local(CloseReason),
    /// The peer sent `Close`.
    Peer {
        /// The peer's reason.
        reason: CloseReason,
        /// The peer's detail text.
        message: String,
    },
    /// The server refused the handshake (client side) or this server refused
    /// it, or a token refresh (server side, with
    /// [`RejectCode::Unauthorized`]).
    Rejected {
        /// Why.
        code: RejectCode,
        /// Detail text.
        message: String,
    },
    /// The peer sent bytes that are not valid frames or messages.
    Inbound(InboundError),
    /// The peer sent a valid message that is not allowed in this state.
    Protocol(String),
    /// The transport went away without a `Close`.
    TransportLost,
    /// Part of a frame or of a fragmented message was held past its
    /// deadline (server:
    /// [`ServerConfig::incomplete_input_timeout`](crate::server::ServerConfig::incomplete_input_timeout),
    /// or the idle timeout, which only whole frames restart). The peer is
    /// sent `Close` with `IdleTimeout`.
    IncompleteInput {
        /// Bytes held for the incomplete input when it was dropped.
        held: usize,
    },
}

impl core::fmt::Display for CloseCause {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CloseCause::Local(r) => write!(f, "closed locally ({r:?})"),
            CloseCause::Peer { reason, message } => {
                write!(f, "closed by peer ({reason:?}: {message})")
            }
            CloseCause::Rejected { code, message } => write!(f, "rejected ({code:?}: {message})"),
            CloseCause::Inbound(e) => write!(f, "bad input: {e}"),
            CloseCause::Protocol(m) => write!(f, "protocol violation: {m}"),
            CloseCause::TransportLost => f.write_str("transport lost"),
            CloseCause::IncompleteInput { held } => {
                write!(f, "input left incomplete too long ({held} bytes held)")
            }
        }
    }
}
