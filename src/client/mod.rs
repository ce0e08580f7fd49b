//! The client side: [`ClientSession`], one connection to a server carrying
//! many documents, which outlives its transports.

mod backoff;
mod config;
mod event;
mod presence;
mod session;

pub use backoff::Backoff;
pub use config::ClientConfig;
pub use event::{AppTarget, ClientEvent, CommandError, Status};
pub use presence::Peer;
pub use session::{ClientSession, ClientStats, DocStatus};
