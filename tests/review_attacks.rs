//! Adversarial review of the issue 16 hardening: inputs that still let one
//! peer cost the server more than a small documented bound. Every test
//! asserts the bound that SHOULD hold, so it fails on the code it was
//! written against; the figures measured are in each test's comment.
//!
//! Memory is measured with a counting global allocator (live bytes), so the
//! tests that measure it take `SERIAL` (tests run on several threads).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::client_rig::welcome;
use common::{Reg, deflated, fragment, frame, hello, read_hub_output, server_registry};
use crdt_socket_sync::Limits;
use crdt_socket_sync::server::{AllowAll, Authorizer, ConnId, Hub, Identity, ServerConfig};
use crdt_socket_sync::wire::{Access, Bytes, DocId, ErrorCode, Message};

// ---- a counting allocator ----

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Serializes the tests that read `LIVE`.
static SERIAL: Mutex<()> = Mutex::new(());

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

const MIB: isize = 1 << 20;

// ---- a hub driven by hand ----

struct Raw<A> {
    hub: Hub<A>,
    reg: Reg,
    now: Instant,
    events: usize,
}

impl<A: Authorizer> Raw<A> {
    fn new(auth: A) -> Self {
        Raw {
            hub: Hub::new(ServerConfig::default(), auth),
            reg: server_registry(),
            now: Instant::now(),
            events: 0,
        }
    }

    fn connect(&mut self, peer: &str, token: &[u8]) -> ConnId {
        let conn = self.hub.accept(self.now);
        self.input(conn, &[hello(peer, token)]);
        let welcome = self.read(conn);
        assert!(matches!(welcome.as_slice(), [Message::Welcome { .. }]));
        conn
    }

    fn input_bytes(&mut self, conn: ConnId, bytes: &[u8]) -> usize {
        self.hub.handle_input(conn, self.now, bytes, &mut self.reg);
        let mut n = 0;
        while self.hub.poll_event().is_some() {
            n += 1;
        }
        self.events += n;
        n
    }

    fn input(&mut self, conn: ConnId, msgs: &[Message]) -> usize {
        self.input_bytes(conn, &frame(msgs))
    }

    fn read(&mut self, conn: ConnId) -> Vec<Message> {
        read_hub_output(&mut self.hub, conn)
    }

    /// Opens `names` in frames of 256 and reads everything; the handles.
    fn open_many(&mut self, conn: ConnId, names: &[String]) -> Vec<DocId> {
        let mut docs = Vec::new();
        for chunk in names.chunks(256) {
            let msgs: Vec<Message> = chunk.iter().map(|n| open(n, &[])).collect();
            self.input(conn, &msgs);
            for m in self.read(conn) {
                if let Message::Opened { doc, .. } = m {
                    docs.push(doc);
                }
            }
            // Lets the sync rate refill.
            self.now += Duration::from_secs(2);
            self.hub.handle_timeout(self.now, &mut self.reg);
            let _ = self.read(conn);
        }
        docs
    }

    fn is_open(&self, conn: ConnId) -> bool {
        !self.hub.is_closed(conn)
    }
}

fn open(name: &str, version: &[u8]) -> Message {
    Message::Open {
        name: name.into(),
        version: Bytes(version.to_vec()),
        resume: None,
    }
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

// ---- finding 1: peer-chosen versions are stored per subscription, unbounded ----

/// `SyncDone { version }` stores the peer's version in the subscription
/// (`sub.client_version`, src/server/hub/mod.rs `on_message`), with no
/// limit on its length: one connection with 1,024 open documents pins
/// 1,024 × (up to `max_message_len`, 64 MiB, through fragments) = 64 GiB.
/// Any token that can open a document (read-only is enough) does it.
///
/// Measured: 48 documents × 900 KiB versions → +42 MiB live heap held
/// by one connection after its inputs (the bound should be a few MiB).
#[test]
fn sync_done_versions_are_bounded_per_connection() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut r = Raw::new(AllowAll);
    let c = r.connect("attacker", b"");
    let docs = r.open_many(c, &names("d", 48));
    assert_eq!(docs.len(), 48);
    let before = live();
    for &doc in &docs {
        let f = frame(&[Message::SyncDone {
            doc,
            version: Bytes(vec![0xAB; 900 << 10]),
        }]);
        r.input_bytes(c, &f);
        drop(f);
        let _ = r.read(c);
    }
    // The periodic report stores the same field.
    for &doc in &docs {
        let f = frame(&[Message::VersionReport {
            doc,
            version: Bytes(vec![0xCD; 900 << 10]),
        }]);
        r.input_bytes(c, &f);
        drop(f);
        let _ = r.read(c);
    }
    let held = live() - before;
    eprintln!(
        "SyncDone + VersionReport: connection open: {}, held {} KiB",
        r.is_open(c),
        held / 1024
    );
    assert!(
        held < 4 * MIB || !r.is_open(c),
        "one connection pins {} MiB of peer versions",
        held / MIB
    );
}

/// `SyncRequest { version }` (and `Open { version }`) on a document whose
/// sync the session's rate holds back stores the peer's version as the due
/// catch-up (`Subscription::set_lagging`, src/server/hub/mod.rs
/// `run_requested_syncs`), unbounded in length, per document.
///
/// Measured: 48 documents × 900 KiB → +42 MiB held by one connection.
#[test]
fn lagging_versions_are_bounded_per_connection() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut r = Raw::new(AllowAll);
    let c = r.connect("attacker", b"");
    let docs = r.open_many(c, &names("d", 48));
    // Exhaust the sync rate (256/s): every later request lags.
    let burn: Vec<Message> = (0..256)
        .map(|i| Message::SyncRequest {
            doc: docs[i % docs.len()],
            version: Bytes::default(),
        })
        .collect();
    for _ in 0..8 {
        r.input(c, &burn);
        let _ = r.read(c);
    }
    let before = live();
    for &doc in &docs {
        let f = frame(&[Message::SyncRequest {
            doc,
            version: Bytes(vec![0xAB; 900 << 10]),
        }]);
        r.input_bytes(c, &f);
        drop(f);
    }
    let held = live() - before;
    eprintln!(
        "SyncRequest: connection open: {}, held {} KiB",
        r.is_open(c),
        held / 1024
    );
    assert!(
        held < 4 * MIB || !r.is_open(c),
        "one connection pins {} MiB of lagging versions",
        held / MIB
    );
}

// ---- finding 2: RefreshToken re-authorizes every open document, per message ----

/// An authorizer that counts its calls.
struct Counted {
    authorize: &'static AtomicU64,
    authenticate: &'static AtomicU64,
}

impl Authorizer for Counted {
    fn authenticate(&mut self, peer: &str, _token: &[u8]) -> Result<Identity, String> {
        self.authenticate.fetch_add(1, Ordering::Relaxed);
        Ok(Identity::new(peer))
    }
    fn authorize(&mut self, _identity: &Identity, _doc: &str) -> Option<Access> {
        self.authorize.fetch_add(1, Ordering::Relaxed);
        Some(Access::ReadWrite)
    }
}

/// One frame of 1,024 `RefreshToken`s (a few KiB) from a connection with
/// 1,024 open documents calls `Authorizer::authorize` 1,024 × 1,024 times
/// (`Hub::on_refresh`), plus 1,024 `authenticate` calls (a JWT verification
/// or a database look-up each, in a real server). No rate limits refresh.
///
/// Measured: 1,048,576 authorize calls and 1,024 authenticate calls for a
/// frame of 3 KiB; 77-90 ms of hub CPU with a trivial counting authorizer
/// (debug build); a real authenticator (JWT, database) multiplies it.
#[test]
fn a_frame_of_token_refreshes_costs_a_bounded_number_of_authorizations() {
    static AUTHORIZE: AtomicU64 = AtomicU64::new(0);
    static AUTHENTICATE: AtomicU64 = AtomicU64::new(0);
    let mut r = Raw::new(Counted {
        authorize: &AUTHORIZE,
        authenticate: &AUTHENTICATE,
    });
    let c = r.connect("attacker", b"t");
    let docs = r.open_many(c, &names("d", 1024));
    assert_eq!(docs.len(), 1024);
    let refreshes: Vec<Message> = (0..1024)
        .map(|_| Message::RefreshToken {
            token: Bytes(b"t".to_vec()),
        })
        .collect();
    let f = frame(&refreshes);
    let (a0, n0) = (
        AUTHORIZE.load(Ordering::Relaxed),
        AUTHENTICATE.load(Ordering::Relaxed),
    );
    let t = Instant::now();
    r.input_bytes(c, &f);
    let took = t.elapsed();
    let authorized = AUTHORIZE.load(Ordering::Relaxed) - a0;
    let authenticated = AUTHENTICATE.load(Ordering::Relaxed) - n0;
    eprintln!(
        "RefreshToken x1024: frame {} B, authorize {authorized}, authenticate {authenticate}, {took:?}",
        f.len(),
        authenticate = authenticated
    );
    // Linear in the input with a small factor: a few calls per message.
    assert!(
        authorized <= 4 * 1024,
        "{authorized} authorize calls for one {}-byte frame",
        f.len()
    );
}

// ---- finding 3: the client's own Error reports bypass the per-input event cap ----

/// `Message::Error` from a client becomes a `ServerEvent::DocumentError`
/// each, without the per-input cap (`MAX_ERRORS_PER_INPUT`, 8) that the
/// server's own errors have (src/server/hub/mod.rs `on_message`, the
/// `Message::Error` arm pushes to `self.events` directly). Each event keeps
/// the peer's message text: one 4 MiB frame → 1,024 events holding 4 MiB.
///
/// Measured: 1,024 events for one 5 KiB frame.
#[test]
fn client_error_reports_are_capped_per_input() {
    let mut r = Raw::new(AllowAll);
    let c = r.connect("attacker", b"");
    let errs: Vec<Message> = (0..1024)
        .map(|_| Message::Error {
            doc: None,
            seq: None,
            code: ErrorCode::Internal,
            message: String::new(),
        })
        .collect();
    let f = frame(&errs);
    let events = r.input_bytes(c, &f);
    eprintln!("Error x1024: frame {} B → {events} events", f.len());
    assert!(
        events <= 16,
        "{events} events for one {}-byte frame",
        f.len()
    );
}

// ---- finding 4: the unload linger lets one connection keep unlimited documents loaded ----

/// A connection opens 1,024 distinct documents and closes them again, in
/// one frame, over and over within the unload linger (1 s). Each closed
/// document stays in the hub's directory and the registry until the linger
/// ends (`Directory::unsubscribe` / `unload_idle`), and nothing counts them
/// against the connection: `max_docs_per_connection` only counts what is
/// open *now*. The documents one peer keeps loaded are its bandwidth × 1 s.
/// Every `Open` also costs a registry open (SQLite: a `load` query) and a
/// `DocumentOpened` event.
///
/// Measured (20 frames of 512 × (Open + CloseDoc) with ~505-byte names,
/// 257 KiB each, 5 MiB in all, no time passing): 10,240 documents in the
/// directory and the registry, +20 MiB live heap (OpLog documents, names in
/// the directory and registry, 10,240 `DocumentOpened` events); the
/// connection stays open. At 100 MB/s that is ~200,000 documents, ~400 MiB.
#[test]
fn documents_cycled_within_the_linger_are_bounded_per_connection() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut r = Raw::new(AllowAll);
    let c = r.connect("attacker", b"");
    let before = live();
    let pad = "x".repeat(500);
    let mut sent = 0;
    for round in 0..20 {
        let mut msgs: Vec<Message> = (0..512)
            .map(|i| open(&format!("{pad}-{round}-{i}"), &[]))
            .collect();
        // The handles of a connection with nothing open are 0..512 (a
        // handle is reused once closed).
        msgs.extend((0..512).map(|i| Message::CloseDoc { doc: DocId(i) }));
        let f = frame(&msgs);
        sent += f.len();
        r.input_bytes(c, &f);
        let _ = r.read(c);
        if !r.is_open(c) {
            break;
        }
    }
    let held = live() - before;
    let docs = r.hub.documents();
    eprintln!(
        "cycling: sent {} KiB, {docs} documents held, {} KiB live, open: {}",
        sent / 1024,
        held / 1024,
        r.is_open(c)
    );
    assert!(
        docs <= 2 * Limits::default().max_docs_per_connection,
        "one connection keeps {docs} documents loaded"
    );
}

// ---- finding 5: the shared reassembly budget lets two peers lock out everyone's large messages ----

/// `max_reassembly_bytes` (128 MiB) is shared by all connections, and a
/// fragment that would pass it closes the connection it *arrived on*
/// (src/inbound.rs `Partial::reserve`). Two authenticated connections (any
/// token, read-only too) that each start a 64 MiB message and never finish
/// it (~130 KB of deflated fragments each) hold the whole budget for
/// `incomplete_input_timeout` (30 s), then reconnect: every honest client
/// that sends a fragmented message (a large offline backlog, a snapshot) is
/// closed with `LimitExceeded`, and on reconnect again. Scaled down here
/// (4 MiB messages, 8 MiB budget); same mechanism as the defaults.
///
/// Measured: 33 KiB of deflated fragments from the two attackers hold the
/// whole 8 MiB budget (7 MiB sent, capacity doubling to 4 MiB each); the
/// honest client's 1 MiB message in 2 fragments is refused and the honest
/// connection closed (`ReassemblyFull`); both attackers stay open.
#[test]
fn two_peers_holding_the_reassembly_budget_do_not_close_honest_clients() {
    let limits = Limits {
        max_message_len: 4 << 20,
        max_reassembly_bytes: 8 << 20,
        ..Limits::default()
    };
    let mut r = Raw::new(AllowAll);
    r.hub = Hub::new(
        ServerConfig {
            limits,
            ..ServerConfig::default()
        },
        AllowAll,
    );
    let a = r.connect("a", b"");
    let b = r.connect("b", b"");
    let honest = r.connect("honest", b"");
    let piece = 512 << 10;
    let mut sent = 0;
    for attacker in [a, b] {
        // 3.5 MiB of a 4 MiB message: held until the incomplete-input timeout.
        for k in 0..7 {
            let f = deflated(&[fragment(1, k, piece, 4 << 20)]);
            sent += f.len();
            r.input_bytes(attacker, &f);
        }
    }
    eprintln!(
        "reassembly: attackers sent {} KiB, hold {} KiB of {} KiB",
        sent / 1024,
        r.hub.reassembly_bytes() / 1024,
        limits.max_reassembly_bytes / 1024
    );
    // An honest 1 MiB message, in two fragments.
    for k in 0..2 {
        let f = deflated(&[fragment(9, k, piece, 1 << 20)]);
        r.input_bytes(honest, &f);
    }
    eprintln!(
        "reassembly: honest open {}, a open {}, b open {}",
        r.is_open(honest),
        r.is_open(a),
        r.is_open(b)
    );
    assert!(
        r.is_open(honest),
        "two peers' unfinished fragments closed an honest client"
    );
}

// ---- finding 6 (client): partial sync transfers are bounded per document only ----

/// `Limits::max_transfer_len` (1 GiB) bounds one transfer; a client keeps a
/// partial transfer per document (`on_chunk`, src/client/session.rs), so a
/// hostile server that starts a `total = max_transfer_len` transfer on
/// every open document and never finishes pins documents × 1 GiB in the
/// client. Scaled down: 1 MiB limit, 8 documents.
///
/// Measured: 8 partial transfers of 900 KiB each, 7.2 MiB held against a
/// 1 MiB `max_transfer_len`; the client stays connected.
#[test]
fn a_hostile_server_cannot_pin_a_transfer_per_document() {
    use crdt_socket_sync::client::{ClientConfig, ClientSession};
    use crdt_socket_sync::wire::SyncKind;
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let limits = Limits {
        max_transfer_len: 1 << 20,
        ..Limits::default()
    };
    let mut now = Instant::now();
    let mut c = ClientSession::new(
        ClientConfig {
            limits,
            ..common::client_config("victim")
        },
        now,
    );
    let mut reg = common::client_registry(1);
    let names = names("doc", 8);
    for n in &names {
        c.open(&mut reg, n, now).unwrap();
    }
    c.connect(now);
    while c.poll_transmit().is_some() {}
    let welcome = welcome(1 << 20);
    c.handle_input(now, &frame(&[welcome]), &mut reg);
    for (i, n) in names.iter().enumerate() {
        let opened = Message::Opened {
            name: n.clone(),
            doc: DocId(i as u32),
            access: Access::ReadWrite,
        };
        c.handle_input(now, &frame(&[opened]), &mut reg);
    }
    while c.poll_transmit().is_some() {}
    while c.poll_event().is_some() {}
    let before = live();
    for i in 0..8u32 {
        let f = frame(&[Message::SyncChunk {
            doc: DocId(i),
            transfer: 77 + u64::from(i),
            kind: SyncKind::Snapshot,
            offset: 0,
            total: 1 << 20,
            data: Bytes(vec![1; 900 << 10]),
        }]);
        c.handle_input(now, &f, &mut reg);
        drop(f);
        now += Duration::from_millis(1);
    }
    while c.poll_transmit().is_some() {}
    while c.poll_event().is_some() {}
    let held = live() - before;
    eprintln!("client transfers: held {} KiB", held / 1024);
    assert!(
        held <= 2 * (1 << 20),
        "a hostile server pins {} KiB of partial transfers (limit 1 MiB each)",
        held / 1024
    );
}
