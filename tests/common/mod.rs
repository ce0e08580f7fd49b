//! Shared test helpers: a tiny deterministic CRDT with causal dependencies,
//! an in-memory network between one hub and several clients, and short
//! transcript strings for golden tests.
#![allow(dead_code)]

pub mod client_rig;
pub mod trace;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crdt_socket_sync::client::{ClientConfig, ClientEvent, ClientSession};
use crdt_socket_sync::registry::MemoryRegistry;
use crdt_socket_sync::server::{Authorizer, ConnId, Hub, ServerConfig, ServerEvent};
pub use crdt_socket_sync::testing::OpLog;
use crdt_socket_sync::wire::{Bytes, Compression, Encoder, Message, MessageDecoder, PeerLimits};
use crdt_socket_sync::{Limits, Output};

pub type Reg = MemoryRegistry<OpLog>;

pub fn server_registry() -> Reg {
    MemoryRegistry::new(|_| OpLog::new(0))
}

/// A client registry whose documents edit as `client`.
pub fn client_registry(client: u32) -> Reg {
    MemoryRegistry::new(move |_| OpLog::new(client))
}

/// A short, stable description of a message for transcripts.
pub fn describe(m: &Message) -> String {
    match m {
        Message::Hello { versions, peer, .. } => format!("Hello{versions:?} {peer}"),
        Message::Welcome {
            version,
            compression,
            durable,
            ..
        } => {
            let durable = if *durable { " durable" } else { "" };
            format!("Welcome v{version} {compression:?}{durable}")
        }
        Message::Reject { code, .. } => format!("Reject {code:?}"),
        Message::Open { name, .. } => format!("Open {name}"),
        Message::Opened { name, doc, access } => format!("Opened {name}#{} {access:?}", doc.0),
        Message::OpenRefused { name, code, .. } => format!("OpenRefused {name} {code:?}"),
        Message::SyncChunk {
            doc, kind, total, ..
        } => format!("SyncChunk #{} {kind:?} {total}B", doc.0),
        Message::SyncDone { doc, .. } => format!("SyncDone #{}", doc.0),
        Message::SyncRequest { doc, .. } => format!("SyncRequest #{}", doc.0),
        Message::VersionReport { doc, .. } => format!("VersionReport #{}", doc.0),
        Message::Update { doc, seq, data } => format!("Update #{} s{seq} {}B", doc.0, data.len()),
        Message::UpdateBatch {
            doc,
            first_seq,
            data,
            ..
        } => format!("UpdateBatch #{} s{first_seq} x{}", doc.0, data.len()),
        Message::Broadcast { doc, data } => format!("Broadcast #{} {}B", doc.0, data.len()),
        Message::Ack {
            doc,
            applied,
            durable,
        } => format!("Ack #{} {applied}/{durable}", doc.0),
        Message::Error { doc, seq, code, .. } => {
            format!("Error {:?} {seq:?} {code:?}", doc.map(|d| d.0))
        }
        Message::Close { reason, .. } => format!("Close {reason:?}"),
        Message::CloseDoc { doc } => format!("CloseDoc #{}", doc.0),
        other => other.name().to_string(),
    }
}

/// Decodes one frame, with no frame length limit.
pub fn decode_frame(frame: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    MessageDecoder::new(Limits {
        max_frame_len: u32::MAX,
        ..Limits::default()
    })
    .decode(frame, &mut out)
    .expect("frames we produce decode");
    out
}

/// Decodes one frame into descriptions.
pub fn frame_text(frame: &[u8]) -> Vec<String> {
    decode_frame(frame).iter().map(describe).collect()
}

/// Everything the hub queued for `conn`, decoded without limits.
pub fn read_hub_output<A: Authorizer>(hub: &mut Hub<A>, conn: ConnId) -> Vec<Message> {
    let mut out = Vec::new();
    let mut decoder = MessageDecoder::new(Limits {
        max_frame_len: u32::MAX,
        max_decompressed_len: u32::MAX,
        max_messages_per_frame: u32::MAX,
        ..Limits::default()
    });
    while let Some(f) = hub.poll_transmit_for(conn) {
        decoder.decode(&f, &mut out).unwrap();
    }
    out
}

/// One hub and several clients over in-memory message pipes, with a virtual
/// clock. Every frame crossing the network is recorded as a transcript line.
pub struct Net<A> {
    pub now: Instant,
    pub hub: Hub<A>,
    pub server_reg: Reg,
    pub clients: Vec<Client>,
    pub transcript: Vec<String>,
    pub server_events: Vec<ServerEvent>,
    pub record: bool,
}

pub struct Client {
    pub session: ClientSession,
    pub reg: Reg,
    pub conn: Option<ConnId>,
    pub events: Vec<ClientEvent>,
    /// Frames from the server not yet delivered (a stalled reader).
    pub inbox: VecDeque<Vec<u8>>,
    pub stalled: bool,
    /// The network is down for this client: its dials fail.
    pub offline: bool,
}

impl<A: Authorizer> Net<A> {
    pub fn new(config: ServerConfig, auth: A) -> Self {
        Net {
            now: Instant::now(),
            hub: Hub::new(config, auth),
            server_reg: server_registry(),
            clients: Vec::new(),
            transcript: Vec::new(),
            server_events: Vec::new(),
            record: true,
        }
    }

    /// Adds a client (not connected yet). Its documents edit as client id
    /// `index + 1`.
    pub fn add_client(&mut self, config: ClientConfig) -> usize {
        let i = self.clients.len();
        self.clients.push(Client {
            session: ClientSession::new(config, self.now),
            reg: client_registry(i as u32 + 1),
            conn: None,
            events: Vec::new(),
            inbox: VecDeque::new(),
            stalled: false,
            offline: false,
        });
        i
    }

    /// Opens a transport for client `i` and starts its handshake.
    pub fn connect(&mut self, i: usize) {
        if self.clients[i].conn.is_some() {
            self.cut(i);
        }
        let conn = self.hub.accept(self.now);
        let c = &mut self.clients[i];
        c.conn = Some(conn);
        c.session.connect(self.now);
        self.run();
    }

    /// Cuts client `i`'s transport without a Close on either side.
    pub fn cut(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if let Some(conn) = c.conn.take() {
            c.session.transport_lost(self.now);
            c.inbox.clear();
            self.hub.connection_lost(conn, self.now);
        }
        self.run();
    }

    /// Moves the clock and fires timers. Clients asking to dial get a new
    /// transport, unless they are offline (then the dial fails).
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        for c in &mut self.clients {
            c.session.handle_timeout(self.now);
        }
        self.hub.handle_timeout(self.now, &mut self.server_reg);
        self.run();
        for i in 0..self.clients.len() {
            let dial = self.clients[i]
                .events
                .iter()
                .any(|e| matches!(e, ClientEvent::Dial { .. }));
            if !dial {
                continue;
            }
            self.clients[i]
                .events
                .retain(|e| !matches!(e, ClientEvent::Dial { .. }));
            if self.clients[i].offline {
                self.clients[i].session.dial_failed(self.now);
            } else {
                self.connect(i);
            }
        }
        self.run();
    }

    /// Moves frames until nothing is left to move.
    pub fn run(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            for i in 0..self.clients.len() {
                while let Some(frame) = self.clients[i].session.poll_transmit() {
                    moved = true;
                    if self.record {
                        for line in frame_text(&frame) {
                            self.transcript.push(format!("c{i}> {line}"));
                        }
                    }
                    if let Some(conn) = self.clients[i].conn {
                        self.hub
                            .handle_input(conn, self.now, &frame, &mut self.server_reg);
                    }
                }
                while let Some(e) = self.clients[i].session.poll_event() {
                    self.clients[i].events.push(e);
                }
            }
            // A stalled client's frames stay in the hub, as they would when
            // its socket buffer is full and the adapter stops writing.
            for i in 0..self.clients.len() {
                let Some(conn) = self.clients[i].conn else {
                    continue;
                };
                if self.clients[i].stalled {
                    continue;
                }
                while let Some(frame) = self.hub.poll_transmit_for(conn) {
                    moved = true;
                    if self.record {
                        for line in frame_text(&frame) {
                            self.transcript.push(format!("s>{i} {line}"));
                        }
                    }
                    self.clients[i].inbox.push_back(frame);
                }
            }
            while let Some(e) = self.hub.poll_event() {
                self.server_events.push(e);
            }
            for c in &mut self.clients {
                if c.stalled {
                    continue;
                }
                while let Some(frame) = c.inbox.pop_front() {
                    moved = true;
                    c.session.handle_input(self.now, &frame, &mut c.reg);
                }
            }
            // Deadlines that are already due (e.g. a drained subscriber's
            // catch-up) fire now, as an adapter's timer would.
            if self.hub.poll_timeout().is_some_and(|t| t <= self.now) {
                self.hub.handle_timeout(self.now, &mut self.server_reg);
                moved |=
                    self.hub.poll_timeout().is_none_or(|t| t > self.now) || self.hub_has_output();
            }
            if !moved {
                return;
            }
        }
        let tail = &self.transcript[self.transcript.len().saturating_sub(30)..];
        panic!("network did not quiesce; last lines: {tail:#?}");
    }

    fn hub_has_output(&self) -> bool {
        self.clients.iter().any(|c| {
            !c.stalled
                && c.conn
                    .and_then(|conn| self.hub.session(conn))
                    .is_some_and(|s| s.queued_messages() > 0)
        })
    }

    /// Delivers up to `n` frames from the hub to stalled client `i`.
    pub fn deliver(&mut self, i: usize, n: usize) -> usize {
        let conn = self.clients[i].conn.unwrap();
        let mut bytes = 0;
        for _ in 0..n {
            let Some(frame) = self.hub.poll_transmit_for(conn) else {
                break;
            };
            bytes += frame.len();
            let c = &mut self.clients[i];
            c.session.handle_input(self.now, &frame, &mut c.reg);
        }
        bytes
    }

    pub fn take_transcript(&mut self) -> Vec<String> {
        std::mem::take(&mut self.transcript)
    }

    pub fn take_server_events(&mut self) -> Vec<ServerEvent> {
        while let Some(e) = self.hub.poll_event() {
            self.server_events.push(e);
        }
        std::mem::take(&mut self.server_events)
    }

    pub fn take_events(&mut self, i: usize) -> Vec<ClientEvent> {
        std::mem::take(&mut self.clients[i].events)
    }

    /// Client `i` edits `doc` locally and flushes the edit to its session.
    pub fn edit(&mut self, i: usize, doc: &str, text: &str) -> Option<u64> {
        let c = &mut self.clients[i];
        c.reg.open(doc).unwrap().edit(text.as_bytes());
        let seq = c.session.flush_local(&mut c.reg, doc, self.now).unwrap();
        self.run();
        seq
    }

    pub fn open(&mut self, i: usize, doc: &str) {
        let c = &mut self.clients[i];
        c.session.open(&mut c.reg, doc, self.now).unwrap();
        self.run();
    }

    pub fn text(&mut self, i: usize, doc: &str) -> String {
        self.clients[i]
            .reg
            .get(doc)
            .map(|d| d.text())
            .unwrap_or_default()
    }

    pub fn server_text(&mut self, doc: &str) -> String {
        self.server_reg
            .get(doc)
            .map(|d| d.text())
            .unwrap_or_default()
    }
}

pub fn client_config(peer: &str) -> ClientConfig {
    ClientConfig {
        peer: peer.into(),
        token: peer.as_bytes().to_vec(),
        offer_deflate: false,
        ..ClientConfig::default()
    }
}

/// Drives `output` loops the way an adapter would, to check `poll_output`.
pub fn drain_client(c: &mut ClientSession) -> (Vec<Vec<u8>>, Vec<ClientEvent>, Option<Instant>) {
    let (mut tx, mut ev) = (Vec::new(), Vec::new());
    loop {
        match c.poll_output() {
            Some(Output::Transmit(t)) => tx.push(t),
            Some(Output::Event(e)) => ev.push(e),
            Some(Output::Timeout(t)) => return (tx, ev, Some(t)),
            None => return (tx, ev, None),
        }
    }
}

use crdt_socket_sync::registry::Registry as _;

/// Client `i` (peer `c{i}`, client id `i + 1`) accepted by `hub`, with its
/// handshake and the opening of `doc` queued (nothing delivered yet).
pub fn joining_client<A: Authorizer>(
    hub: &mut Hub<A>,
    i: usize,
    doc: &str,
    now: Instant,
) -> (ClientSession, Reg, ConnId) {
    let mut session = ClientSession::new(client_config(&format!("c{i}")), now);
    let conn = hub.accept(now);
    session.connect(now);
    let mut reg = client_registry(i as u32 + 1);
    session.open(&mut reg, doc, now).unwrap();
    (session, reg, conn)
}

/// `msgs` in one frame, as a peer would send them.
pub fn frame(msgs: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    Encoder::new(&Limits::default())
        .encode(msgs, &mut out)
        .unwrap();
    out
}

/// `msgs` in one frame, deflated when at least 1 KiB.
pub fn deflated(msgs: &[Message]) -> Vec<u8> {
    let mut encoder = Encoder::new(&Limits::default());
    encoder.set_compression(Compression::Deflate, 1024);
    let mut out = Vec::new();
    encoder.encode(msgs, &mut out).unwrap();
    out
}

/// Fragment `k` of a message of `total` bytes, `len` bytes long.
pub fn fragment(id: u32, k: u64, len: usize, total: u64) -> Message {
    Message::Fragment {
        id,
        offset: k * len as u64,
        total,
        data: Bytes(vec![0; len]),
    }
}

/// The `Hello` of a hand-driven ("raw") connection.
pub fn hello(peer: &str, token: &[u8]) -> Message {
    Message::Hello {
        versions: crdt_socket_sync::wire::PROTOCOL_VERSIONS.to_vec(),
        peer: peer.into(),
        token: Bytes(token.to_vec()),
        compression: vec![],
        limits: PeerLimits {
            max_frame_len: 1 << 20,
            max_decompressed_len: 1 << 20,
        },
    }
}

/// Two healthy clients ("good1", "good2") on "doc", plus a raw connection
/// the test drives by hand; the hub's events so far are dropped.
pub fn with_raw_connection<A: Authorizer>(config: ServerConfig, auth: A) -> (Net<A>, ConnId) {
    let mut n = Net::new(config, auth);
    n.record = false;
    for p in ["good1", "good2"] {
        let i = n.add_client(client_config(p));
        n.open(i, "doc");
        n.connect(i);
    }
    let raw = n.hub.accept(n.now);
    n.take_server_events();
    (n, raw)
}
