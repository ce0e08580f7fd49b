//! Speak y-websocket's protocol (feature `yrs`): existing Yjs applications
//! (`y-websocket`'s `WebsocketProvider`) change their server URL and share
//! documents with this crate's native clients.
//!
//! - [`YMessage`], [`AwarenessEntries`]: the y-protocols messages (sync
//!   step 1 / step 2 / update, awareness, auth, query-awareness), decoded
//!   without allocation, every length checked against the bytes.
//! - [`YjsSession`]: one Yjs connection translated, sans-IO, into this
//!   crate's messages for the [`Hub`](crate::server::Hub): to the hub it is
//!   one more session in the document's room, so a Yjs client and a native
//!   [`ClientSession`](crate::client::ClientSession) edit the same yrs
//!   document, and every hub limit applies to it.
//!
//! The tokio server serves it on `transport::ServerOptions::yjs_path`
//! (feature `tokio`): `new WebsocketProvider("ws://host/yjs", "room", doc)`
//! opens document `room`.

mod json;
mod protocol;
mod session;

pub use protocol::{AwarenessEntries, AwarenessEntry, YDecodeError, YMessage, encode_awareness};
pub use session::{YJS_PEER, YjsConfig, YjsError, YjsSession, yjs_client_id};
