//! End-to-end tests over real WebSockets on 127.0.0.1 (tokio server and
//! client, yrs documents). Every wait is bounded in time.

use std::time::{Duration, Instant};

use crdt_socket_sync::adapters::yrs::YrsDocument;
use crdt_socket_sync::client::{Backoff, ClientConfig, ClientEvent, ClientSession, Status};
use crdt_socket_sync::registry::{MemoryRegistry, Registry};
use crdt_socket_sync::server::{AllowAll, Authorizer, ServerEvent, StaticTokens};
use crdt_socket_sync::transport::tokio::{WebSocketServer, connect};
use crdt_socket_sync::transport::{
    ClientError, ClientEvents, ClientOptions, ServerOptions, TransportEvent, WebSocketClient,
};
use crdt_socket_sync::wire::{Access, RejectCode};
use crdt_socket_sync::{CloseCause, Limits};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::{GetString, Text, Transact};

type Reg = MemoryRegistry<YrsDocument>;
type Client = WebSocketClient<Reg>;

const DOC: &str = "notes";
const WAIT: Duration = Duration::from_secs(20);

fn registry(id: u64) -> Reg {
    MemoryRegistry::new(move |_: &str| YrsDocument::with_client_id(id))
}

fn text_of(doc: &YrsDocument) -> String {
    doc.get_or_insert_text("body").get_string(&doc.transact())
}

fn fast_options(peer: &str, token: &str) -> ClientOptions {
    ClientOptions {
        session: ClientConfig {
            peer: peer.into(),
            token: token.as_bytes().to_vec(),
            reconnect: Some(Backoff {
                min: Duration::from_millis(50),
                max: Duration::from_millis(300),
                ..Backoff::default()
            }),
            ..ClientConfig::default()
        },
        documents: vec![DOC.into()],
        ..ClientOptions::default()
    }
}

async fn start<A: Authorizer + Send + 'static>(
    addr: &str,
    reg: Reg,
    auth: A,
    options: ServerOptions,
) -> WebSocketServer<Reg> {
    WebSocketServer::start(addr.to_string(), reg, auth, options)
        .await
        .expect("server starts")
}

async fn join(url: &str, id: u64) -> (Client, ClientEvents) {
    connect(url, registry(id), fast_options(&format!("c{id}"), ""))
        .await
        .expect("client connects")
}

async fn append(client: &Client, s: &str) {
    let s = s.to_string();
    client
        .with_doc(DOC, move |doc| {
            let body = doc.get_or_insert_text("body");
            let mut txn = doc.transact_mut();
            let len = body.len(&txn);
            body.insert(&mut txn, len, &s);
        })
        .await
        .expect("edit");
}

async fn text(client: &Client) -> String {
    client.read_doc(DOC, |d| text_of(d)).await.expect("read")
}

/// Polls `check` every 20 ms until it holds or [`WAIT`] passes.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + WAIT;
    while Instant::now() < until {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// `a` appends `pa` and `b` appends `pb`; waits until both hold both, all
/// acknowledged.
async fn both_append(a: &Client, pa: &str, b: &Client, pb: &str) {
    append(a, pa).await;
    append(b, pb).await;
    eventually("both edits everywhere", || {
        converged(vec![a.clone(), b.clone()], vec![pa.into(), pb.into()])
    })
    .await;
}

/// Every client holds the same text, containing each of `parts`, and has
/// nothing unacknowledged.
async fn converged(clients: Vec<Client>, parts: Vec<String>) -> bool {
    let mut first: Option<String> = None;
    for c in &clients {
        let t = text(c).await;
        if !parts.iter().all(|p| t.contains(p.as_str())) {
            return false;
        }
        if c.unacknowledged(DOC).await.unwrap_or(1) != 0 {
            return false;
        }
        match &first {
            None => first = Some(t),
            Some(f) if *f != t => return false,
            Some(_) => {}
        }
    }
    true
}

async fn converge_n(n: u64, edits: usize) {
    let server = start(
        "127.0.0.1:0",
        registry(0),
        AllowAll,
        ServerOptions::default(),
    )
    .await;
    let url = server.url();
    let mut clients = Vec::new();
    for id in 1..=n {
        clients.push(join(&url, id).await.0);
    }
    let mut parts = Vec::new();
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let c = c.clone();
        let mine: Vec<String> = (0..edits).map(|e| format!("<{i}.{e}>")).collect();
        parts.extend(mine.clone());
        tasks.push(tokio::spawn(async move {
            for p in mine {
                append(&c, &p).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eventually("all clients converge", || {
        converged(clients.clone(), parts.clone())
    })
    .await;
    let expected = text(&clients[0]).await;
    let mut reg = server.stop().await.unwrap();
    assert_eq!(text_of(reg.get(DOC).unwrap()), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_converge() {
    converge_n(2, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_clients_converge() {
    converge_n(10, 10).await;
}

/// A document larger than a WebSocket fragment (16 KiB) reaches a late
/// joiner: the server writes it as a fragmented WebSocket message, which the
/// client reassembles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_document_reaches_a_late_joiner() {
    let server = start(
        "127.0.0.1:0",
        registry(0),
        AllowAll,
        ServerOptions::default(),
    )
    .await;
    let url = server.url();
    let (a, _) = join(&url, 1).await;
    // Pseudo-random letters: deflate must not shrink them below a fragment.
    let mut x: u32 = 0x9E37_79B9;
    let big: String = (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (b'a' + (x % 26) as u8) as char
        })
        .collect();
    append(&a, &big).await;
    eventually("the server has it", || async {
        a.unacknowledged(DOC).await.unwrap_or(1) == 0
    })
    .await;
    let (b, _) = join(&url, 2).await;
    eventually("the late joiner has it", || async { text(&b).await == big }).await;
    server.stop().await.unwrap();
}

/// `ServerOptions::own_thread`: the server runs on a current-thread runtime
/// of its own, started from (and stopped from) a multi-threaded one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_its_own_thread_serves_and_stops() {
    let options = ServerOptions {
        own_thread: true,
        ..ServerOptions::default()
    };
    let server = start("127.0.0.1:0", registry(0), AllowAll, options).await;
    let url = server.url();
    let (a, _) = join(&url, 1).await;
    let (b, _) = join(&url, 2).await;
    both_append(&a, "from a ", &b, "from b ").await;
    assert_eq!(server.stats().await.unwrap().connections, 2);
    let expected = text(&a).await;
    let mut reg = server.stop().await.unwrap();
    assert_eq!(text_of(reg.get(DOC).unwrap()), expected);
    // The server's thread is gone: clients lose it.
    eventually("clients notice", || async {
        a.status() == Status::Reconnecting && b.status() == Status::Reconnecting
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_clients_reconnect_by_themselves() {
    let server = start(
        "127.0.0.1:0",
        registry(0),
        AllowAll,
        ServerOptions::default(),
    )
    .await;
    let addr = server.local_addr().to_string();
    let url = server.url();
    let (a, _) = join(&url, 1).await;
    let (b, _) = join(&url, 2).await;
    append(&a, "before ").await;
    eventually("first edit everywhere", || {
        converged(vec![a.clone(), b.clone()], vec!["before ".into()])
    })
    .await;

    // Stop: clients lose the server and start backing off.
    let reg = server.stop().await.unwrap();
    eventually("clients notice", || async {
        a.status() == Status::Reconnecting && b.status() == Status::Reconnecting
    })
    .await;
    // Offline edits wait in the outbox.
    append(&a, "offline-a ").await;
    append(&b, "offline-b ").await;
    assert!(a.unacknowledged(DOC).await.unwrap() > 0);

    // A new server on the same port with the same registry.
    let server = start(&addr, reg, AllowAll, ServerOptions::default()).await;
    let parts = [
        "before ".to_string(),
        "offline-a ".into(),
        "offline-b ".into(),
    ];
    eventually("reconnected and converged", || {
        converged(vec![a.clone(), b.clone()], parts.to_vec())
    })
    .await;
    assert_eq!(a.status(), Status::Connected);
    let mut reg = server.stop().await.unwrap();
    let t = text_of(reg.get(DOC).unwrap());
    assert!(parts.iter().all(|p| t.contains(p.as_str())), "{t}");
}

/// A client that speaks the protocol through `ClientSession` over a raw
/// WebSocket, syncs `DOC`, and then never reads again.
async fn slow_reader(url: &str) -> impl Sized {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let config = ClientConfig {
        peer: "slow".into(),
        offer_deflate: false,
        ..ClientConfig::default()
    };
    let mut reg = registry(99);
    let mut session = ClientSession::new(config, Instant::now());
    session.connect(Instant::now());
    session.open(&mut reg, DOC, Instant::now()).unwrap();
    let until = Instant::now() + WAIT;
    'sync: loop {
        assert!(Instant::now() < until, "slow reader never synced");
        while let Some(frame) = session.poll_transmit() {
            ws.send(WsMessage::Binary(frame.into())).await.unwrap();
        }
        while let Some(e) = session.poll_event() {
            if matches!(e, ClientEvent::Synced { .. }) {
                break 'sync;
            }
        }
        let msg = tokio::time::timeout(Duration::from_secs(1), ws.next()).await;
        if let Ok(Some(Ok(WsMessage::Binary(b)))) = msg {
            session.handle_input(Instant::now(), &b, &mut reg);
        }
    }
    ws // kept open, never read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_grow_server_memory() {
    let limit = 256 * 1024;
    let options = ServerOptions {
        hub: crdt_socket_sync::server::ServerConfig {
            limits: Limits {
                max_outbound_bytes: limit,
                ..Limits::default()
            },
            ..Default::default()
        },
        outgoing_capacity: 8,
        ..ServerOptions::default()
    };
    let mut server = start("127.0.0.1:0", registry(0), AllowAll, options).await;
    let mut events = server.take_events().unwrap();
    let url = server.url();
    let _slow = slow_reader(&url).await;
    let mut wopts = fast_options("writer", "");
    wopts.session.offer_deflate = false;
    let (writer, _) = connect(&url, registry(1), wopts).await.unwrap();

    // ~16 MiB of incompressible text, far beyond socket buffers and the limit.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut peak = 0;
    for i in 0..256 {
        let chunk: String = (0..64 * 1024)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                char::from(b'a' + (seed % 26) as u8)
            })
            .collect();
        append(&writer, &chunk).await;
        if i % 16 == 0 {
            let stats = server.stats().await.unwrap();
            for c in &stats.per_connection {
                peak = peak.max(c.queued_bytes).max(c.peak_queued_bytes);
            }
        }
    }
    // The writer is not held back by the slow reader.
    eventually("writer acknowledged", || async {
        writer.unacknowledged(DOC).await.unwrap() == 0
    })
    .await;
    let stats = server.stats().await.unwrap();
    for c in &stats.per_connection {
        peak = peak.max(c.peak_queued_bytes);
        assert!(c.channel_frames <= 8, "{c:?}");
    }
    let max_frame = Limits::default().max_frame_len as usize;
    assert!(peak <= limit + max_frame, "peak {peak} over limit {limit}");
    let mut lagging = false;
    while let Some(e) = events.try_recv() {
        lagging |= matches!(
            e,
            TransportEvent::Hub(ServerEvent::SubscriberLagging { .. })
        );
    }
    assert!(
        lagging,
        "the slow reader was never over its high-water mark"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_speaking_client_is_closed_with_a_typed_reason() {
    let mut server = start(
        "127.0.0.1:0",
        registry(0),
        AllowAll,
        ServerOptions::default(),
    )
    .await;
    let mut events = server.take_events().unwrap();
    let url = server.url();
    let (a, _) = join(&url, 1).await;
    let (b, _) = join(&url, 2).await;

    let (mut bad, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    bad.send(WsMessage::Binary(
        b"GET / HTTP/1.1 this is not a frame".to_vec().into(),
    ))
    .await
    .unwrap();
    let until = Instant::now() + WAIT;
    let code = loop {
        assert!(Instant::now() < until, "garbage client never closed");
        match tokio::time::timeout(Duration::from_secs(1), bad.next()).await {
            Ok(Some(Ok(WsMessage::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) | Err(_) => {}
            Ok(None) | Ok(Some(Err(_))) => break None,
        }
    };
    assert_eq!(code, Some(1002));
    // The server reports the typed reason.
    let mut cause = None;
    let until = Instant::now() + WAIT;
    while cause.is_none() && Instant::now() < until {
        if let Ok(Some(TransportEvent::Hub(ServerEvent::ClientDisconnected { cause: c, .. }))) =
            tokio::time::timeout(Duration::from_secs(1), events.recv()).await
        {
            cause = Some(c);
        }
    }
    assert!(matches!(cause, Some(CloseCause::Inbound(_))), "{cause:?}");

    // The others go on.
    both_append(&a, "still ", &b, "working ").await;
    server.stop().await.unwrap();
}

fn tokens() -> StaticTokens {
    StaticTokens::default()
        .with("writer-token", "writer", Access::ReadWrite)
        .with("reader-token", "reader", Access::ReadOnly)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_rejected() {
    let server = start(
        "127.0.0.1:0",
        registry(0),
        tokens(),
        ServerOptions::default(),
    )
    .await;
    let err = connect(&server.url(), registry(1), fast_options("x", "nope"))
        .await
        .expect_err("rejected");
    assert!(
        matches!(
            err,
            ClientError::Rejected {
                code: RejectCode::Unauthorized,
                ..
            }
        ),
        "{err:?}"
    );
    // The right token works.
    connect(
        &server.url(),
        registry(2),
        fast_options("w", "writer-token"),
    )
    .await
    .expect("accepted");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_client_cannot_write() {
    let server = start(
        "127.0.0.1:0",
        registry(0),
        tokens(),
        ServerOptions::default(),
    )
    .await;
    let url = server.url();
    let (writer, _) = connect(&url, registry(1), fast_options("w", "writer-token"))
        .await
        .unwrap();
    let (reader, mut revents) = connect(&url, registry(2), fast_options("r", "reader-token"))
        .await
        .unwrap();
    append(&writer, "from the writer").await;
    eventually("reader sees the writer's text", || async {
        text(&reader).await == "from the writer"
    })
    .await;
    // The reader was told it is read-only...
    let mut access = None;
    while let Some(e) = revents.try_recv() {
        if let ClientEvent::DocumentOpened { access: a, .. } = e {
            access = Some(a);
        }
    }
    assert_eq!(access, Some(Access::ReadOnly));
    // ...and its edits are refused locally with a typed error.
    let s = "sneaky".to_string();
    let err = reader
        .with_doc(DOC, move |doc| {
            let body = doc.get_or_insert_text("body");
            body.push(&mut doc.transact_mut(), &s);
        })
        .await
        .expect_err("read-only");
    assert!(matches!(err, ClientError::ReadOnly(_)), "{err:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(text(&writer).await, "from the writer");
    let mut reg = server.stop().await.unwrap();
    assert_eq!(text_of(reg.get(DOC).unwrap()), "from the writer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_path_and_origin_are_enforced() {
    let options = ServerOptions {
        path: Some("/sync".into()),
        allowed_origins: Some(vec!["https://ok.example".into()]),
        max_connections: 1,
        ..ServerOptions::default()
    };
    let mut server = start("127.0.0.1:0", registry(0), AllowAll, options).await;
    let mut events = server.take_events().unwrap();
    let url = server.url();
    assert!(url.ends_with("/sync"));
    let (_a, _) = join(&url, 1).await;
    let err = connect(&url, registry(2), fast_options("b", ""))
        .await
        .expect_err("limit");
    assert!(
        matches!(err, ClientError::ServerClosed { code: 1013, .. }),
        "{err:?}"
    );
    let wrong = url.replace("/sync", "/other");
    let fail_fast = ClientOptions {
        fail_fast: true,
        ..fast_options("c", "")
    };
    let err = connect(&wrong, registry(3), fail_fast)
        .await
        .expect_err("path");
    assert!(matches!(err, ClientError::Dial { .. }), "{err:?}");
    // A browser from another origin.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
    let mut refused = Vec::new();
    let until = Instant::now() + WAIT;
    while refused.len() < 3 && Instant::now() < until {
        if let Ok(Some(TransportEvent::Refused { reason, .. })) =
            tokio::time::timeout(Duration::from_secs(1), events.recv()).await
        {
            refused.push(reason);
        }
    }
    assert_eq!(refused.len(), 3, "{refused:?}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_cancels_reconnection() {
    let server = start(
        "127.0.0.1:0",
        registry(0),
        AllowAll,
        ServerOptions::default(),
    )
    .await;
    let (a, _) = join(&server.url(), 1).await;
    a.disconnect().await.unwrap();
    assert_eq!(a.status(), Status::Disconnected);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        a.status(),
        Status::Disconnected,
        "no reconnect after disconnect"
    );
    eventually("server dropped the connection", || async {
        server.stats().await.unwrap().connections == 0
    })
    .await;
    a.reconnect().await.unwrap();
    eventually("reconnected", || async { a.status() == Status::Connected }).await;
    a.close().await.unwrap();
    assert!(matches!(a.status(), Status::Closed));
    server.stop().await.unwrap();
}
