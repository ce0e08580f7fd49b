//! A deterministic simulated network for the sessions: one hub and many
//! clients with real documents, connected by byte pipes that split writes at
//! random boundaries and add latency, with cuts, stalls, offline periods,
//! server restarts and clock jumps. Everything flows from one seed, so any
//! failure replays exactly.
//!
//! Shared by the tests, the fuzz targets and the benches (feature `sim`).
//!
//! ```
//! use crdt_socket_sync::sim::{Sim, SimConfig};
//! use crdt_socket_sync::testing::OpLog;
//!
//! let config = SimConfig { clients: 3, docs: 2, seed: 7, ..SimConfig::default() };
//! let mut sim: Sim<OpLog> = Sim::new(config);
//! for _ in 0..50 {
//!     let op = sim.random_op();
//!     sim.apply(op).unwrap();
//! }
//! sim.heal().unwrap();
//! sim.check_converged().unwrap();
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::client::{ClientConfig, ClientEvent, ClientSession, CommandError};
use crate::close::CloseCause;
use crate::document::Document;
use crate::inbound::Framing;
use crate::registry::{MemoryRegistry, Registry};
use crate::rng::Rng;
use crate::server::{AllowAll, ConnId, Hub, ServerConfig, ServerEvent};
use crate::testing::OpLog;
use crate::{Limits, wire::CloseReason};

/// A document type the simulator can drive.
pub trait SimDoc: Document + Send + 'static {
    /// A fresh, empty replica whose local edits are made as `client`.
    fn replica(client: u32) -> Self;
    /// A random local edit (insert or delete somewhere) made with the native
    /// API; `tag` is unique per edit.
    fn random_edit(&mut self, rng: &mut Rng, tag: u64);
    /// A comparable digest of the visible state.
    fn digest(&self) -> Vec<u8>;
}

impl SimDoc for OpLog {
    fn replica(client: u32) -> Self {
        OpLog::new(client)
    }
    fn random_edit(&mut self, _rng: &mut Rng, tag: u64) {
        self.edit(format!("<{tag}>").as_bytes());
    }
    fn digest(&self) -> Vec<u8> {
        self.text().into_bytes()
    }
}

/// The shape of a simulated world.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of clients.
    pub clients: usize,
    /// Number of documents every client opens.
    pub docs: usize,
    /// One-way latency range.
    pub min_latency: Duration,
    /// One-way latency range.
    pub max_latency: Duration,
    /// Writes are split into at most this many pieces.
    pub max_split: usize,
    /// Limits for every session (small ones exercise backpressure).
    pub limits: Limits,
    /// The seed all randomness flows from.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            clients: 3,
            docs: 1,
            min_latency: Duration::from_millis(1),
            max_latency: Duration::from_millis(40),
            max_split: 4,
            limits: Limits {
                max_outbound_bytes: 64 * 1024,
                max_frame_len: 16 * 1024,
                ..Limits::default()
            },
            seed: 0,
        }
    }
}

/// One step of a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum SimOp {
    /// A client edits a document (and flushes the edit to its session).
    Edit {
        /// Client index (modulo the number of clients).
        client: u8,
        /// Document index (modulo the number of documents).
        doc: u8,
    },
    /// Several edits in a row without delivering anything in between.
    Burst {
        /// Client index.
        client: u8,
        /// Document index.
        doc: u8,
        /// How many edits.
        count: u8,
    },
    /// The client's connection is cut (no `Close` on either side).
    Cut {
        /// Client index.
        client: u8,
    },
    /// The client stops (or resumes) reading.
    Stall {
        /// Client index.
        client: u8,
        /// Stalled or not.
        on: bool,
    },
    /// The client's network goes down (dials fail) or comes back.
    Offline {
        /// Client index.
        client: u8,
        /// Offline or not.
        on: bool,
    },
    /// The server restarts: the hub is rebuilt, its registry kept.
    Restart,
    /// Virtual time passes.
    Advance {
        /// Milliseconds.
        ms: u16,
    },
}

/// A failed scenario: where, and how to replay it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimFailure {
    /// The scenario seed.
    pub seed: u64,
    /// The step at which the check failed.
    pub step: usize,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "scenario {} failed at step {}: {}\nreplay: SIM_SEED={} cargo test --release --all-features --test sim replay -- --nocapture",
            self.seed, self.step, self.message, self.seed
        )
    }
}

impl std::error::Error for SimFailure {}

/// Counters of a scenario.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Steps applied.
    pub steps: usize,
    /// Edits made.
    pub edits: u64,
    /// Edits refused locally with `Backpressure` (kept in the document and
    /// sent with a later flush).
    pub backpressured: u64,
    /// Connection cuts.
    pub cuts: u64,
    /// Server restarts.
    pub restarts: u64,
    /// Connections established.
    pub connects: u64,
    /// Bytes carried by the pipes.
    pub bytes: u64,
}

/// One direction of a connection: chunks in flight with their arrival time.
#[derive(Default)]
struct Pipe {
    chunks: VecDeque<(Instant, Vec<u8>)>,
}

struct SimClient<D> {
    session: ClientSession,
    docs: MemoryRegistry<D>,
    conn: Option<ConnId>,
    up: Pipe,
    down: Pipe,
    stalled: bool,
    offline: bool,
}

/// The simulated world.
pub struct Sim<D: SimDoc> {
    config: SimConfig,
    server_config: ServerConfig,
    now: Instant,
    rng: Rng,
    hub: Hub<AllowAll>,
    server: MemoryRegistry<D>,
    clients: Vec<SimClient<D>>,
    names: Vec<String>,
    stats: SimStats,
    tag: u64,
}

const SLACK: usize = 64 * 1024;

impl<D: SimDoc> Sim<D> {
    /// A world with every client connected and every document open.
    pub fn new(config: SimConfig) -> Self {
        let mut rng = Rng::new(config.seed);
        let now = Instant::now();
        let server_config = ServerConfig {
            limits: config.limits,
            framing: Framing::Stream,
            seed: rng.next_u64(),
            idle_timeout: Duration::from_secs(20),
            ..ServerConfig::default()
        };
        let names: Vec<String> = (0..config.docs.max(1)).map(|d| format!("doc{d}")).collect();
        let mut sim = Sim {
            hub: Hub::new(server_config.clone(), AllowAll),
            server_config,
            server: MemoryRegistry::new(|_| D::replica(0)),
            clients: Vec::new(),
            names,
            stats: SimStats::default(),
            tag: 0,
            now,
            rng,
            config,
        };
        for i in 0..sim.config.clients.max(1) {
            let client_id = i as u32 + 1;
            let seed = sim.rng.next_u64();
            let mut session = ClientSession::new(
                ClientConfig {
                    peer: format!("c{i}"),
                    framing: Framing::Stream,
                    limits: sim.config.limits,
                    seed,
                    ..ClientConfig::default()
                },
                now,
            );
            let mut docs = MemoryRegistry::new(move |_| D::replica(client_id));
            for name in &sim.names {
                // Opening in a fresh memory registry cannot fail.
                let _ = session.open(&mut docs, name, now);
            }
            sim.clients.push(SimClient {
                session,
                docs,
                conn: None,
                up: Pipe::default(),
                down: Pipe::default(),
                stalled: false,
                offline: false,
            });
            sim.connect(i);
        }
        sim
    }

    /// Counters so far.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// The hub, for inspection.
    pub fn hub(&self) -> &Hub<AllowAll> {
        &self.hub
    }

    /// A random step, drawn from the world's RNG.
    pub fn random_op(&mut self) -> SimOp {
        let client = self.rng.below_or_equal(255) as u8;
        let doc = self.rng.below_or_equal(255) as u8;
        match self.rng.below_or_equal(99) {
            0..=44 => SimOp::Edit { client, doc },
            45..=52 => SimOp::Burst {
                client,
                doc,
                count: self.rng.below_or_equal(40) as u8,
            },
            53..=58 => SimOp::Cut { client },
            59..=63 => SimOp::Stall {
                client,
                on: self.rng.below_or_equal(1) == 0,
            },
            64..=67 => SimOp::Offline {
                client,
                on: self.rng.below_or_equal(2) == 0,
            },
            68 => SimOp::Restart,
            _ => SimOp::Advance {
                ms: self.rng.below_or_equal(3000) as u16,
            },
        }
    }

    fn fail(&self, message: impl Into<String>) -> SimFailure {
        SimFailure {
            seed: self.config.seed,
            step: self.stats.steps,
            message: message.into(),
        }
    }

    /// Applies one step, delivers what is due, and checks the invariants.
    pub fn apply(&mut self, op: SimOp) -> Result<(), SimFailure> {
        self.stats.steps += 1;
        let n = self.clients.len();
        match op {
            SimOp::Edit { client, doc } => self.edit(client as usize % n, doc as usize, 1)?,
            SimOp::Burst { client, doc, count } => {
                self.edit(client as usize % n, doc as usize, usize::from(count))?
            }
            SimOp::Cut { client } => self.cut(client as usize % n),
            SimOp::Stall { client, on } => self.clients[client as usize % n].stalled = on,
            SimOp::Offline { client, on } => self.clients[client as usize % n].offline = on,
            SimOp::Restart => self.restart(),
            SimOp::Advance { ms } => {
                return self.advance(Duration::from_millis(u64::from(ms)));
            }
        }
        self.pump()
    }

    fn edit(&mut self, i: usize, doc: usize, count: usize) -> Result<(), SimFailure> {
        let name = self.names[doc % self.names.len()].clone();
        for _ in 0..count {
            self.tag += 1;
            self.stats.edits += 1;
            let c = &mut self.clients[i];
            let Some(d) = c.docs.get(&name) else {
                return Err(self.fail(format!("client {i} lost document {name}")));
            };
            d.random_edit(&mut self.rng, self.tag);
            match c.session.flush_local(&mut c.docs, &name, self.now) {
                Ok(_) => {}
                // The edit stays in the document and goes out later.
                Err(CommandError::Backpressure { .. }) => self.stats.backpressured += 1,
                Err(e) => return Err(self.fail(format!("flush on client {i}: {e}"))),
            }
        }
        Ok(())
    }

    fn connect(&mut self, i: usize) {
        let conn = self.hub.accept(self.now);
        let c = &mut self.clients[i];
        c.conn = Some(conn);
        c.up = Pipe::default();
        c.down = Pipe::default();
        c.session.connect(self.now);
        self.stats.connects += 1;
    }

    /// Forgets client `i`'s transport on both ends, with what was in flight.
    fn drop_transport(&mut self, i: usize) {
        let c = &mut self.clients[i];
        c.up = Pipe::default();
        c.down = Pipe::default();
        if let Some(conn) = c.conn.take() {
            self.hub.connection_lost(conn, self.now);
        }
    }

    fn cut(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if let Some(conn) = c.conn.take() {
            c.up = Pipe::default();
            c.down = Pipe::default();
            c.session.transport_lost(self.now);
            self.hub.connection_lost(conn, self.now);
            self.stats.cuts += 1;
        }
    }

    fn restart(&mut self) {
        for i in 0..self.clients.len() {
            let c = &mut self.clients[i];
            if c.conn.take().is_some() {
                c.up = Pipe::default();
                c.down = Pipe::default();
                c.session.transport_lost(self.now);
            }
        }
        self.server_config.seed = self.rng.next_u64();
        self.hub = Hub::new(self.server_config.clone(), AllowAll);
        self.stats.restarts += 1;
    }

    /// Moves virtual time forward by `d`, stopping at every arrival and
    /// deadline on the way.
    pub fn advance(&mut self, d: Duration) -> Result<(), SimFailure> {
        let target = self.now + d;
        for _ in 0..100_000 {
            self.pump()?;
            let next = self.next_event().filter(|t| *t <= target);
            match next {
                Some(t) => {
                    self.now = self.now.max(t);
                    self.fire_timeouts()?;
                }
                None => {
                    self.now = target;
                    self.fire_timeouts()?;
                    return self.pump();
                }
            }
        }
        Err(self.fail("time did not advance (busy loop)"))
    }

    fn next_event(&self) -> Option<Instant> {
        let mut next = self.hub.poll_timeout();
        for c in &self.clients {
            let candidates = [
                c.session.poll_timeout(),
                c.conn.and(c.up.chunks.front().map(|x| x.0)),
                (!c.stalled)
                    .then(|| c.down.chunks.front().map(|x| x.0))
                    .flatten(),
            ];
            for t in candidates.into_iter().flatten() {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        }
        next
    }

    /// Fires due timers and checks that none of them leaves a busy loop.
    fn fire_timeouts(&mut self) -> Result<(), SimFailure> {
        let now = self.now;
        for i in 0..self.clients.len() {
            let c = &mut self.clients[i];
            if c.session.poll_timeout().is_some_and(|t| t <= now) {
                c.session.handle_timeout(now);
                let spins = c.session.poll_timeout().is_some_and(|t| t <= now);
                if spins && c.session.queued_bytes() == 0 {
                    return Err(self.fail(format!("client {i} busy loop")));
                }
            }
        }
        if self.hub.poll_timeout().is_some_and(|t| t <= now) {
            self.hub.handle_timeout(now, &mut self.server);
            if self.hub.poll_timeout().is_some_and(|t| t <= now) {
                return Err(self.fail("hub busy loop"));
            }
        }
        Ok(())
    }

    fn latency(&mut self) -> Duration {
        let (lo, hi) = (
            self.config.min_latency,
            self.config.max_latency.max(self.config.min_latency),
        );
        let span = u64::try_from((hi - lo).as_micros()).unwrap_or(u64::MAX);
        lo + Duration::from_micros(self.rng.below_or_equal(span))
    }

    /// Splits `bytes` into random pieces queued on `pipe` in order.
    fn send_on(&mut self, client: usize, up: bool, bytes: Vec<u8>) {
        self.stats.bytes += bytes.len() as u64;
        let pieces = 1 + self
            .rng
            .below_or_equal(self.config.max_split.max(1) as u64 - 1)
            as usize;
        let mut cuts: Vec<usize> = (1..pieces)
            .map(|_| self.rng.below_or_equal(bytes.len() as u64) as usize)
            .collect();
        cuts.sort_unstable();
        let mut at = self.now + self.latency();
        let pipe = if up {
            &mut self.clients[client].up
        } else {
            &mut self.clients[client].down
        };
        // A byte stream keeps its order.
        if let Some(last) = pipe.chunks.back() {
            at = at.max(last.0);
        }
        let mut start = 0;
        for end in cuts.into_iter().chain([bytes.len()]) {
            if end > start {
                pipe.chunks.push_back((at, bytes[start..end].to_vec()));
                start = end;
            }
        }
    }

    /// Moves everything that can move now, checking invariants as it goes.
    fn pump(&mut self) -> Result<(), SimFailure> {
        let max_frame = self.config.limits.max_frame_len as usize;
        for _ in 0..100_000 {
            let mut moved = false;
            for i in 0..self.clients.len() {
                while let Some(frame) = self.clients[i].session.poll_transmit() {
                    moved = true;
                    if frame.len() > max_frame {
                        return Err(
                            self.fail(format!("client {i} sent a {} byte frame", frame.len()))
                        );
                    }
                    if self.clients[i].conn.is_some() {
                        self.send_on(i, true, frame);
                    }
                }
                if let Some(conn) = self.clients[i].conn {
                    while let Some(frame) = self.hub.poll_transmit_for(conn) {
                        moved = true;
                        if frame.len() > max_frame {
                            return Err(self.fail(format!("hub sent a {} byte frame", frame.len())));
                        }
                        self.send_on(i, false, frame);
                    }
                }
            }
            // Frames for connections that are gone.
            while self.hub.poll_transmit().is_some() {}
            for i in 0..self.clients.len() {
                let now = self.now;
                let c = &mut self.clients[i];
                if let Some(conn) = c.conn {
                    while c.up.chunks.front().is_some_and(|x| x.0 <= now) {
                        if let Some((_, bytes)) = c.up.chunks.pop_front() {
                            self.hub.handle_input(conn, now, &bytes, &mut self.server);
                            self.hub.commit(&mut self.server);
                            moved = true;
                        }
                    }
                }
                let c = &mut self.clients[i];
                while !c.stalled && c.down.chunks.front().is_some_and(|x| x.0 <= now) {
                    if let Some((_, bytes)) = c.down.chunks.pop_front() {
                        c.session.handle_input(now, &bytes, &mut c.docs);
                        moved = true;
                    }
                }
            }
            moved |= self.drain_events()?;
            self.check_queues()?;
            if !moved {
                return Ok(());
            }
        }
        Err(self.fail("network did not quiesce"))
    }

    fn drain_events(&mut self) -> Result<bool, SimFailure> {
        let mut moved = false;
        while let Some(e) = self.hub.poll_event() {
            match e {
                ServerEvent::DocumentError { code, message, .. } => {
                    return Err(self.fail(format!("server document error {code:?}: {message}")));
                }
                ServerEvent::ClientDisconnected {
                    cause: CloseCause::Inbound(e),
                    ..
                } => return Err(self.fail(format!("server saw bad bytes: {e}"))),
                ServerEvent::ClientDisconnected {
                    cause: CloseCause::Protocol(m),
                    ..
                } => return Err(self.fail(format!("server saw a protocol violation: {m}"))),
                _ => {}
            }
        }
        for i in 0..self.clients.len() {
            let mut dial = false;
            while let Some(e) = self.clients[i].session.poll_event() {
                match e {
                    ClientEvent::Dial { .. } => dial = true,
                    ClientEvent::DocumentError { code, message, .. } => {
                        return Err(
                            self.fail(format!("client {i} document error {code:?}: {message}"))
                        );
                    }
                    ClientEvent::Closed {
                        cause: CloseCause::Inbound(e),
                    } => return Err(self.fail(format!("client {i} saw bad bytes: {e}"))),
                    ClientEvent::Closed {
                        cause: CloseCause::Protocol(m),
                    } => return Err(self.fail(format!("client {i} saw a protocol violation: {m}"))),
                    ClientEvent::Closed {
                        cause:
                            CloseCause::Local(
                                CloseReason::DeadConnection | CloseReason::HandshakeTimeout,
                            ),
                    }
                    | ClientEvent::Closed {
                        cause: CloseCause::Peer { .. },
                    } => {
                        // The client gave up on its transport: the network
                        // side of it goes away too.
                        self.drop_transport(i);
                    }
                    _ => {}
                }
            }
            if dial {
                moved = true;
                if self.clients[i].offline {
                    self.clients[i].session.dial_failed(self.now);
                } else {
                    self.drop_transport(i);
                    self.connect(i);
                }
            }
        }
        Ok(moved)
    }

    fn check_queues(&self) -> Result<(), SimFailure> {
        let limit = self.config.limits.max_outbound_bytes + SLACK;
        for (i, c) in self.clients.iter().enumerate() {
            if c.session.queued_bytes() > limit {
                return Err(self.fail(format!(
                    "client {i} queue at {} bytes",
                    c.session.queued_bytes()
                )));
            }
            if let Some(s) = c.conn.and_then(|conn| self.hub.session(conn))
                && s.queued_bytes() > limit
            {
                return Err(self.fail(format!(
                    "hub queue for client {i} at {} bytes",
                    s.queued_bytes()
                )));
            }
        }
        Ok(())
    }

    /// Ends every fault (online, reading) and runs virtual time until all
    /// clients are connected, synced and acknowledged.
    pub fn heal(&mut self) -> Result<(), SimFailure> {
        for c in &mut self.clients {
            c.stalled = false;
            c.offline = false;
        }
        for _ in 0..200 {
            self.advance(Duration::from_millis(500))?;
            // Flush edits refused earlier under backpressure.
            for i in 0..self.clients.len() {
                for name in self.names.clone() {
                    let c = &mut self.clients[i];
                    let _ = c.session.flush_local(&mut c.docs, &name, self.now);
                }
            }
            if self.settled() {
                return Ok(());
            }
        }
        Err(self.fail("did not settle after healing"))
    }

    fn settled(&self) -> bool {
        self.clients.iter().all(|c| {
            c.conn.is_some()
                && c.up.chunks.is_empty()
                && c.down.chunks.is_empty()
                && self.names.iter().all(|n| {
                    c.session.doc_status(n) == Some(crate::client::DocStatus::Synced)
                        && c.session.unacknowledged(n) == 0
                })
        })
    }

    /// Every replica of every document equals the merge of all replicas (so
    /// no edit was lost anywhere), and the server holds the same.
    pub fn check_converged(&mut self) -> Result<(), SimFailure> {
        for name in self.names.clone() {
            let mut reference = D::replica(u32::MAX);
            for c in &mut self.clients {
                if let Some(d) = c.docs.get(&name) {
                    let snap = d.snapshot();
                    reference.load_snapshot(&snap).map_err(|e| SimFailure {
                        seed: self.config.seed,
                        step: self.stats.steps,
                        message: format!("reference merge: {e}"),
                    })?;
                }
            }
            let want = reference.digest();
            let server = self
                .server
                .get(&name)
                .map(|d| d.digest())
                .unwrap_or_default();
            if server != want {
                return Err(self.fail(format!("server diverged on {name}")));
            }
            for i in 0..self.clients.len() {
                let got = self.clients[i]
                    .docs
                    .get(&name)
                    .map(|d| d.digest())
                    .unwrap_or_default();
                if got != want {
                    return Err(self.fail(format!("client {i} diverged on {name}")));
                }
            }
        }
        Ok(())
    }
}

/// Runs one random scenario: `steps` random operations, then heal and
/// check convergence.
pub fn run_random<D: SimDoc>(config: SimConfig, steps: usize) -> Result<SimStats, SimFailure> {
    let mut sim: Sim<D> = Sim::new(config);
    for _ in 0..steps {
        let op = sim.random_op();
        sim.apply(op)?;
    }
    sim.heal()?;
    sim.check_converged()?;
    Ok(sim.stats())
}

/// A scenario shape drawn from `seed`: 1–20 clients, 1–5 documents, small or
/// default limits.
pub fn config_for_seed(seed: u64) -> SimConfig {
    let mut rng = Rng::new(seed ^ 0x5151_5151);
    let small = rng.below_or_equal(1) == 0;
    SimConfig {
        clients: 1 + rng.below_or_equal(19) as usize,
        docs: 1 + rng.below_or_equal(4) as usize,
        max_split: 1 + rng.below_or_equal(7) as usize,
        limits: if small {
            Limits {
                max_outbound_bytes: 16 * 1024,
                max_frame_len: 4096,
                max_outbox_updates: 64,
                ..Limits::default()
            }
        } else {
            SimConfig::default().limits
        },
        seed,
        ..SimConfig::default()
    }
}

#[cfg(feature = "yrs")]
impl SimDoc for crate::adapters::yrs::YrsDocument {
    fn replica(client: u32) -> Self {
        Self::with_client_id(u64::from(client) + 1)
    }
    fn random_edit(&mut self, rng: &mut Rng, tag: u64) {
        use yrs::{Text, Transact};
        let text = self.get_or_insert_text("body");
        let mut txn = self.transact_mut();
        let len = text.len(&txn);
        if len > 0 && rng.below_or_equal(3) == 0 {
            let pos = rng.below_or_equal(u64::from(len - 1)) as u32;
            text.remove_range(&mut txn, pos, 1);
        } else {
            let pos = rng.below_or_equal(u64::from(len)) as u32;
            text.insert(&mut txn, pos, &format!("{}", tag % 10));
        }
    }
    fn digest(&self) -> Vec<u8> {
        use yrs::{GetString, Transact};
        let text = self.get_or_insert_text("body");
        text.get_string(&self.transact()).into_bytes()
    }
}
