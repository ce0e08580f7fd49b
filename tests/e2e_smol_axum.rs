//! The axum integration and the smol client, over real sockets on
//! 127.0.0.1: a tokio client and a smol client converge through a sync
//! endpoint mounted on an axum router.

use std::time::{Duration, Instant};

use crdt_socket_sync::adapters::yrs::YrsDocument;
use crdt_socket_sync::registry::{MemoryRegistry, Registry};
use crdt_socket_sync::server::AllowAll;
use crdt_socket_sync::transport::axum::sync_route;
use crdt_socket_sync::transport::{ClientOptions, HubService, ServerOptions};
use yrs::{GetString, Text, Transact};

type Reg = MemoryRegistry<YrsDocument>;

fn registry(id: u64) -> Reg {
    MemoryRegistry::new(move |_: &str| YrsDocument::with_client_id(id))
}

fn text_of(doc: &mut YrsDocument) -> String {
    doc.get_or_insert_text("body").get_string(&doc.transact())
}

fn push(doc: &mut YrsDocument, s: &str) {
    let body = doc.get_or_insert_text("body");
    body.push(&mut doc.transact_mut(), s);
}

fn options(peer: &str) -> ClientOptions {
    ClientOptions {
        documents: vec!["notes".into()],
        session: crdt_socket_sync::client::ClientConfig {
            peer: peer.into(),
            ..Default::default()
        },
        ..ClientOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_and_smol_clients_converge_through_axum() {
    let (service, _events) = HubService::spawn(registry(0), AllowAll, ServerOptions::default());
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .route("/sync", sync_route(service.handle().clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/sync", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let (a, _) = crdt_socket_sync::transport::tokio::connect(&url, registry(1), options("tokio"))
        .await
        .unwrap();
    a.with_doc("notes", |d| push(d, "tokio ")).await.unwrap();

    // The smol client runs on smol's executor, on its own thread.
    let smol_url = url.clone();
    let smol_text = tokio::task::spawn_blocking(move || {
        smol::block_on(async move {
            let (b, _) =
                crdt_socket_sync::transport::smol::connect(&smol_url, registry(2), options("smol"))
                    .await
                    .unwrap();
            b.with_doc("notes", |d| push(d, "smol ")).await.unwrap();
            let until = Instant::now() + Duration::from_secs(20);
            loop {
                let t = b.read_doc("notes", text_of).await.unwrap();
                if t.contains("tokio")
                    && t.contains("smol")
                    && b.unacknowledged("notes").await.unwrap() == 0
                {
                    b.close().await.unwrap();
                    return t;
                }
                assert!(
                    Instant::now() < until,
                    "smol client did not converge: {t:?}"
                );
                smol::Timer::after(Duration::from_millis(20)).await;
            }
        })
    })
    .await
    .unwrap();

    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let t = a.read_doc("notes", text_of).await.unwrap();
        if t == smol_text {
            break;
        }
        assert!(
            Instant::now() < until,
            "tokio client did not converge: {t:?} vs {smol_text:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.close().await.unwrap();
    let mut reg = service.stop().await.unwrap();
    assert_eq!(text_of(reg.get("notes").unwrap()), smol_text);
    server.abort();
}
