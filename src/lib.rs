//! # crdt-socket-sync
//!
//! A sans-IO protocol that keeps CRDT documents in sync between many clients
//! and a server, in real time and across disconnects.
//!
//! This release contains the wire layer: the [`wire::Message`] enum covering
//! the whole protocol, and a frame codec (postcard bodies, a CRC32 over every
//! frame, optional bounded deflate, batching of several messages per frame)
//! with a byte-stream decoder and a one-message decoder. Every length a peer
//! declares is checked against [`Limits`] before anything is allocated.
//!
//! ```
//! use crdt_socket_sync::wire::{Bytes, DocId, Encoder, Message, StreamDecoder};
//! use crdt_socket_sync::Limits;
//!
//! let limits = Limits::default();
//! let update = Message::Update { doc: DocId(0), seq: 1, data: Bytes::from(vec![0u8; 15]) };
//! let mut wire = Vec::new();
//! Encoder::new(&limits).encode(std::slice::from_ref(&update), &mut wire).unwrap();
//! assert!(wire.len() <= 15 + 12); // header, envelope and CRC add at most 12 bytes
//!
//! let mut decoder = StreamDecoder::new(limits);
//! let mut messages = Vec::new();
//! let mut input = &wire[..];
//! assert!(decoder.decode(&mut input, &mut messages).unwrap());
//! assert_eq!(messages, vec![update]);
//! ```
//!
//! ## Cargo features
//!
//! | feature | what it adds |
//! |---|---|
//! | `arbitrary` | `arbitrary::Arbitrary` for the wire types (fuzzing) |
//! | `yrs` | `adapters::yrs::YrsDocument`, a [`document::Document`] over a yrs `Doc` |
//! | `loro` | `adapters::loro::LoroDocument`, over a `loro::LoroDoc` |
//! | `automerge` | `adapters::automerge::AutomergeDocument`, over an `automerge::Automerge` (Rust ≥ 1.90) |
//! | `conformance` | `conformance`, the suite every `Document` implementation must pass |
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(any(feature = "yrs", feature = "loro", feature = "automerge"))]
pub mod adapters;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod document;
pub mod fuzzing;
mod limits;
pub mod registry;
pub mod wire;

pub use limits::Limits;
