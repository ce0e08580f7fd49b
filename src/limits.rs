//! Every size limit of the library, in one place.
//!
//! Peers declare lengths; we check each against these limits *before*
//! allocating, so a hostile or broken peer cannot make us reserve memory.

/// Size limits for frames and messages.
///
/// The defaults suit interactive editing with large initial syncs: a frame is
/// at most 1 MiB on the wire and 4 MiB once inflated, and larger payloads
/// (snapshots, long offline backlogs) travel in several frames.
///
/// ```
/// use crdt_socket_sync::Limits;
/// let limits = Limits { max_frame_len: 64 * 1024, ..Limits::default() };
/// assert_eq!(limits.max_messages_per_frame, 1024);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame accepted or produced, in bytes on the wire (header, body
    /// and checksum). Default 1 MiB.
    pub max_frame_len: u32,
    /// Largest frame body after inflating a compressed frame. Default 4 MiB.
    pub max_decompressed_len: u32,
    /// Most messages batched in one frame. Default 1024.
    pub max_messages_per_frame: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_len: 1 << 20,
            max_decompressed_len: 4 << 20,
            max_messages_per_frame: 1024,
        }
    }
}

impl Limits {
    /// The part of these limits announced to the peer in the handshake.
    pub fn peer_limits(&self) -> crate::wire::PeerLimits {
        crate::wire::PeerLimits {
            max_frame_len: self.max_frame_len,
            max_decompressed_len: self.max_decompressed_len,
        }
    }
}
