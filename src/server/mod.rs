//! The server side: a [`ServerSession`] per connection (its own state
//! machine: handshake checks, limits, queue, document handles, deadlines),
//! the [`Hub`] routing between sessions and documents, acknowledgement
//! tracking (`acks`), configuration, events and authorization.

mod acks;
mod auth;
mod config;
mod event;
mod hub;
mod marks;
mod room;
mod session;
pub(crate) mod sessions;
mod transfer_cache;

pub use auth::{AllowAll, Authorizer, Identity, StaticTokens};
pub use config::ServerConfig;
pub use event::{ConnId, ServerEvent};
pub use hub::{AppHook, AppMessage, AppVerdict, Hub};
pub use session::{Phase, ServerSession, SessionStats};
