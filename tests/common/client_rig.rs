//! A client session driven by hand: the test plays the server, writing its
//! frames and reading what the client sends back.

use std::time::Instant;

use crdt_socket_sync::Limits;
use crdt_socket_sync::client::{ClientConfig, ClientEvent, ClientSession};
use crdt_socket_sync::wire::{Compression, Message, MessageDecoder, PeerLimits, SessionId};

use super::{Reg, client_registry, frame};

/// The server's `Welcome` (session 1, no compression) with the given frame
/// limit.
pub fn welcome(max_frame_len: u32) -> Message {
    Message::Welcome {
        version: 2,
        session: SessionId(1),
        compression: Compression::None,
        limits: PeerLimits {
            max_frame_len,
            max_decompressed_len: 4 << 20,
        },
        heartbeat_ms: 2000,
        durable: false,
    }
}

/// One client session and its registry, fed frames the test writes as the
/// server.
pub struct Driven {
    pub c: ClientSession,
    pub reg: Reg,
    pub now: Instant,
}

impl Driven {
    pub fn new(config: ClientConfig) -> Self {
        let now = Instant::now();
        Driven {
            c: ClientSession::new(config, now),
            reg: client_registry(1),
            now,
        }
    }

    /// Connects and answers the `Hello` with a `Welcome`; returns what the
    /// client sent after it (its `Open`s).
    pub fn connect(&mut self) -> Vec<Message> {
        self.c.connect(self.now);
        let hello = self.sent();
        assert!(matches!(hello[..], [Message::Hello { .. }]), "{hello:?}");
        self.feed(&[welcome(1 << 20)]);
        self.sent()
    }

    pub fn feed(&mut self, msgs: &[Message]) {
        let f = frame(msgs);
        self.c.handle_input(self.now, &f, &mut self.reg);
    }

    /// Every message the client queued, decoded.
    pub fn sent(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        let mut dec = MessageDecoder::new(Limits {
            max_frame_len: u32::MAX,
            ..Limits::default()
        });
        while let Some(f) = self.c.poll_transmit() {
            dec.decode(&f, &mut out).unwrap();
        }
        out
    }

    pub fn events(&mut self) -> Vec<ClientEvent> {
        std::iter::from_fn(|| self.c.poll_event()).collect()
    }

    /// Waits out the reconnect delay and takes the `Dial`.
    pub fn redial(&mut self) {
        let at = self.c.poll_timeout().expect("a reconnect is scheduled");
        self.now = self.now.max(at);
        self.c.handle_timeout(self.now);
        let ev = self.events();
        assert!(
            ev.iter().any(|e| matches!(e, ClientEvent::Dial { .. })),
            "{ev:?}"
        );
    }
}
