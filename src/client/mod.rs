//! The client side: [`ClientSession`], one connection to a server carrying
//! many documents, which outlives its transports.

mod config;
mod event;
mod session;

pub use config::ClientConfig;
pub use event::{ClientEvent, CommandError, Status};
pub use session::{ClientSession, ClientStats, DocStatus};
