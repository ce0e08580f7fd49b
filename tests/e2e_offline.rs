//! Offline first over real WebSockets on 127.0.0.1: a client started before
//! its server, a reconnect while the server is down, and recovery after
//! repeated server restarts with the default options. Every wait is bounded.

use std::time::{Duration, Instant};

use crdt_socket_sync::adapters::yrs::YrsDocument;
use crdt_socket_sync::client::{ClientEvent, Status};
use crdt_socket_sync::registry::{MemoryRegistry, Registry};
use crdt_socket_sync::server::AllowAll;
use crdt_socket_sync::transport::tokio::{WebSocketServer, connect};
use crdt_socket_sync::transport::{
    ClientError, ClientEvents, ClientOptions, ServerOptions, WebSocketClient,
};
use yrs::{GetString, Text, Transact};

type Reg = MemoryRegistry<YrsDocument>;

const DOC: &str = "notes";
const WAIT: Duration = Duration::from_secs(20);

fn docs() -> Reg {
    MemoryRegistry::new(|_: &str| YrsDocument::new())
}

fn options() -> ClientOptions {
    ClientOptions {
        documents: vec![DOC.into()],
        ..ClientOptions::default()
    }
}

/// A loopback address nothing listens on (yet).
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

async fn serve(addr: &str, reg: Reg) -> WebSocketServer<Reg> {
    WebSocketServer::start(addr.to_string(), reg, AllowAll, ServerOptions::default())
        .await
        .expect("server starts")
}

async fn append(client: &WebSocketClient<Reg>, s: &str) {
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

fn text_of(doc: &YrsDocument) -> String {
    doc.get_or_insert_text("body").get_string(&doc.transact())
}

async fn until_status(client: &WebSocketClient<Reg>, want: Status) {
    tokio::time::timeout(WAIT, client.wait_for_status(want))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {want:?}"));
}

async fn next_dial_failure(events: &mut ClientEvents) -> ClientEvent {
    let until = Instant::now() + WAIT;
    while let Ok(Some(e)) = tokio::time::timeout_at(until.into(), events.recv()).await {
        if matches!(e, ClientEvent::DialFailed { .. }) {
            return e;
        }
    }
    panic!("no DialFailed event");
}

async fn all_acknowledged(client: &WebSocketClient<Reg>) {
    let until = Instant::now() + WAIT;
    while client.unacknowledged(DOC).await.unwrap() > 0 {
        assert!(Instant::now() < until, "edits never acknowledged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_started_before_its_server_edits_offline_and_syncs_later() {
    let addr = free_addr();
    let started = Instant::now();
    let (client, mut events) = connect(&format!("ws://{addr}"), docs(), options())
        .await
        .expect("offline first: connect returns without a server");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(client.status(), Status::Reconnecting);
    append(&client, "written offline").await;
    match next_dial_failure(&mut events).await {
        ClientEvent::DialFailed {
            attempt,
            reason,
            retry_in,
        } => {
            assert_eq!(attempt, 0);
            assert!(reason.is_some_and(|r| !r.is_empty()));
            assert!(retry_in.is_some());
        }
        _ => unreachable!(),
    }
    // Still retrying.
    next_dial_failure(&mut events).await;

    let server = serve(&addr, MemoryRegistry::new(|_: &str| YrsDocument::server())).await;
    until_status(&client, Status::Connected).await;
    all_acknowledged(&client).await;
    client.close().await.unwrap();
    let mut reg = server.stop().await.unwrap();
    assert_eq!(text_of(reg.get(DOC).unwrap()), "written offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_keeps_the_dial_error() {
    let url = format!("ws://{}", free_addr());
    let options = ClientOptions {
        fail_fast: true,
        ..options()
    };
    let err = connect(&url, docs(), options).await.expect_err("no server");
    assert!(matches!(err, ClientError::Dial { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("could not connect to ws://"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_after_disconnect_retries_and_reports_while_the_server_is_down() {
    let addr = free_addr();
    let server = serve(&addr, MemoryRegistry::new(|_: &str| YrsDocument::server())).await;
    let (client, mut events) = connect(&format!("ws://{addr}"), docs(), options())
        .await
        .unwrap();
    client.disconnect().await.unwrap();
    let reg = server.stop().await.unwrap();
    while events.try_recv().is_some() {}

    client.reconnect().await.unwrap();
    // Reported, and retried: not silence, not a single attempt.
    next_dial_failure(&mut events).await;
    next_dial_failure(&mut events).await;
    assert_eq!(client.status(), Status::Reconnecting);
    append(&client, "after reconnect").await;

    let server = serve(&addr, reg).await;
    until_status(&client, Status::Connected).await;
    all_acknowledged(&client).await;
    client.close().await.unwrap();
    let mut reg = server.stop().await.unwrap();
    assert_eq!(text_of(reg.get(DOC).unwrap()), "after reconnect");
}

/// Recovery time after a server restart with the default backoff: the
/// server is stopped, stays down 300 ms, and comes back on the same port,
/// ten times; each time the connection had been up 1.2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_ten_server_restarts_is_sub_second() {
    let addr = free_addr();
    let mut server = serve(&addr, MemoryRegistry::new(|_: &str| YrsDocument::server())).await;
    let (client, _events) = connect(&format!("ws://{addr}"), docs(), options())
        .await
        .unwrap();
    let mut recoveries = Vec::new();
    for round in 0..10 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        append(&client, &format!("{round} ")).await;
        let reg = server.stop().await.unwrap();
        until_status(&client, Status::Reconnecting).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        server = serve(&addr, reg).await;
        let up = Instant::now();
        until_status(&client, Status::Connected).await;
        recoveries.push(up.elapsed());
    }
    all_acknowledged(&client).await;
    client.close().await.unwrap();
    let mut reg = server.stop().await.unwrap();
    let text = text_of(reg.get(DOC).unwrap());
    assert!((0..10).all(|r| text.contains(&format!("{r} "))), "{text}");
    recoveries.sort();
    let median = (recoveries[4] + recoveries[5]) / 2;
    let worst = recoveries[9];
    eprintln!("recovery after a restart over 10 restarts: median {median:?}, worst {worst:?}");
    assert!(median < Duration::from_secs(1), "median {median:?}");
    assert!(worst < Duration::from_millis(2600), "worst {worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_edit_is_never_made_and_a_queued_one_has_a_sequence_number() {
    use crdt_socket_sync::Limits;
    use crdt_socket_sync::client::ClientConfig;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let options = ClientOptions {
        session: ClientConfig {
            limits: Limits {
                max_outbox_updates: 2,
                ..Limits::default()
            },
            ..ClientConfig::default()
        },
        ..options()
    };
    // Offline: the outbox fills up.
    let (client, _events) = connect(&format!("ws://{}", free_addr()), docs(), options)
        .await
        .unwrap();
    let first = client
        .with_doc(DOC, |doc| {
            doc.get_or_insert_text("body")
                .push(&mut doc.transact_mut(), "a");
            "output"
        })
        .await
        .unwrap();
    assert_eq!((first.output, first.seq), ("output", Some(1)));
    let nothing = client.with_doc(DOC, |_| ()).await.unwrap();
    assert_eq!(nothing.seq, None, "no change, nothing sent");
    append(&client, "b").await;
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    let refused = client
        .with_doc(DOC, move |doc| {
            flag.store(true, Ordering::SeqCst);
            doc.get_or_insert_text("body")
                .push(&mut doc.transact_mut(), "c");
        })
        .await;
    assert!(
        matches!(refused, Err(ClientError::Backpressure { .. })),
        "{refused:?}"
    );
    assert!(
        !ran.load(Ordering::SeqCst),
        "the closure ran for a refused edit"
    );
    assert_eq!(client.read_doc(DOC, |d| text_of(d)).await.unwrap(), "ab");
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_fails_clearly_against_a_memory_only_server() {
    let addr = free_addr();
    let server = serve(&addr, MemoryRegistry::new(|_: &str| YrsDocument::server())).await;
    // Asked before the server announced itself: answered on connecting.
    let (client, _events) = connect(&format!("ws://{addr}"), docs(), options())
        .await
        .unwrap();
    let edit = client
        .with_doc(DOC, |doc| {
            doc.get_or_insert_text("body")
                .push(&mut doc.transact_mut(), "x");
        })
        .await
        .unwrap();
    let seq = edit.seq.expect("an edit");
    let err = tokio::time::timeout(WAIT, client.durable(DOC, seq))
        .await
        .expect("answered, not left waiting")
        .expect_err("memory only");
    assert!(matches!(err, ClientError::NotDurable), "{err:?}");
    assert!(err.to_string().contains("durabl"), "{err}");
    client.close().await.unwrap();
    server.stop().await.unwrap();
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_resolves_once_the_edit_is_on_the_servers_disk() {
    use crdt_socket_sync::store::SqliteRegistry;

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("e2e-offline-durable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let reg =
        SqliteRegistry::open(dir.join("server.sqlite"), |_: &str| YrsDocument::server()).unwrap();
    let addr = free_addr();
    let server = WebSocketServer::start(addr.clone(), reg, AllowAll, ServerOptions::default())
        .await
        .unwrap();
    let (client, _events) = connect(&format!("ws://{addr}"), docs(), options())
        .await
        .unwrap();
    for word in ["durable ", "twice"] {
        let w = word.to_string();
        let edit = client
            .with_doc(DOC, move |doc| {
                doc.get_or_insert_text("body")
                    .push(&mut doc.transact_mut(), &w);
            })
            .await
            .unwrap();
        tokio::time::timeout(WAIT, client.durable(DOC, edit.seq.unwrap()))
            .await
            .expect("durable in time")
            .expect("durable");
    }
    // Already durable: answered at once.
    client.durable(DOC, 1).await.unwrap();
    client.close().await.unwrap();
    server.stop().await.unwrap();
    // On disk: a fresh registry on the same file has it.
    let mut reopened =
        SqliteRegistry::open(dir.join("server.sqlite"), |_: &str| YrsDocument::server()).unwrap();
    assert_eq!(text_of(reopened.open(DOC).unwrap()), "durable twice");
    drop(reopened);
    let _ = std::fs::remove_dir_all(&dir);
}
