//! End-to-end tests of `wss://`: the tokio server terminates TLS with a
//! self-signed certificate made by rcgen for `localhost` and `127.0.0.1`;
//! clients that trust it converge, clients that do not fail with a typed
//! error. Everything runs on 127.0.0.1 and every wait is bounded in time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crdt_socket_sync::adapters::yrs::YrsDocument;
use crdt_socket_sync::client::{Backoff, ClientConfig};
use crdt_socket_sync::registry::MemoryRegistry;
use crdt_socket_sync::server::AllowAll;
use crdt_socket_sync::transport::tokio::{WebSocketServer, connect};
use crdt_socket_sync::transport::{
    ClientError, ClientOptions, RefuseReason, ServerEvents, ServerOptions, TransportEvent,
    WebSocketClient,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use yrs::{GetString, Text, Transact};

type Reg = MemoryRegistry<YrsDocument>;
type Client = WebSocketClient<Reg>;

const DOC: &str = "notes";
const WAIT: Duration = Duration::from_secs(20);

fn registry(id: u64) -> Reg {
    MemoryRegistry::new(move |_: &str| YrsDocument::with_client_id(id))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, and the
/// server configuration that presents it.
fn self_signed() -> (CertificateDer<'static>, Arc<rustls::ServerConfig>) {
    self_signed_for(&["localhost", "127.0.0.1"])
}

/// A self-signed certificate for `names` and its server configuration.
fn self_signed_for(names: &[&str]) -> (CertificateDer<'static>, Arc<rustls::ServerConfig>) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let certified = rcgen::generate_simple_self_signed(names).expect("certificate");
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server config");
    (cert, Arc::new(config))
}

/// A client configuration trusting only `cert`.
fn trusting(cert: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

fn options(peer: &str, tls: Option<Arc<rustls::ClientConfig>>) -> ClientOptions {
    ClientOptions {
        session: ClientConfig {
            peer: peer.into(),
            reconnect: Some(Backoff {
                min: Duration::from_millis(50),
                max: Duration::from_millis(300),
                ..Backoff::default()
            }),
            ..ClientConfig::default()
        },
        documents: vec![DOC.into()],
        dial_timeout: Duration::from_secs(5),
        tls,
        ..ClientOptions::default()
    }
}

async fn tls_server() -> (WebSocketServer<Reg>, CertificateDer<'static>) {
    let (cert, config) = self_signed();
    let server = WebSocketServer::start(
        "127.0.0.1:0",
        registry(0),
        AllowAll,
        ServerOptions {
            tls: Some(config),
            ..ServerOptions::default()
        },
    )
    .await
    .expect("server starts");
    (server, cert)
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
    client
        .read_doc(DOC, |d| {
            d.get_or_insert_text("body").get_string(&d.transact())
        })
        .await
        .expect("read")
}

/// Both clients hold the same text containing every part, with nothing
/// unacknowledged.
async fn converged(clients: &[&Client], parts: &[&str]) -> bool {
    let mut first: Option<String> = None;
    for c in clients {
        let t = text(c).await;
        if !parts.iter().all(|p| t.contains(p)) {
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

async fn wait_converged(clients: &[&Client], parts: &[&str]) {
    let until = Instant::now() + WAIT;
    while Instant::now() < until {
        if converged(clients, parts).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("clients did not converge over wss:// within {WAIT:?}");
}

/// Waits (bounded) for the server to report a connection refused during
/// the TLS handshake.
async fn wait_tls_refusal(events: &mut ServerEvents) -> String {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(event) = events.recv().await {
            if let TransportEvent::Refused {
                reason: RefuseReason::Tls(why),
                ..
            } = event
            {
                return Some(why);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(why)) => why,
        Ok(None) => panic!("server events ended without a TLS refusal"),
        Err(_) => panic!("no TLS refusal within {WAIT:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_converge_over_wss() {
    let (server, cert) = tls_server().await;
    let port = server.local_addr().port();
    assert_eq!(server.url(), format!("wss://127.0.0.1:{port}"));
    let trust = trusting(&cert);

    // One client by DNS name, one by IP address: both are in the SANs.
    let (a, _ea) = tokio::time::timeout(
        WAIT,
        connect(
            &format!("wss://localhost:{port}"),
            registry(1),
            options("a", Some(trust.clone())),
        ),
    )
    .await
    .expect("connect a in time")
    .expect("a connects over wss://localhost");
    let (b, _eb) = tokio::time::timeout(
        WAIT,
        connect(
            &format!("wss://127.0.0.1:{port}"),
            registry(2),
            options("b", Some(trust)),
        ),
    )
    .await
    .expect("connect b in time")
    .expect("b connects over wss://127.0.0.1");

    append(&a, "hello from a; ").await;
    append(&b, "hello from b; ").await;
    wait_converged(&[&a, &b], &["hello from a", "hello from b"]).await;
    append(&a, "more").await;
    wait_converged(&[&a, &b], &["hello from a", "hello from b", "more"]).await;

    for c in [&a, &b] {
        tokio::time::timeout(WAIT, c.close())
            .await
            .expect("close in time")
            .expect("close");
    }
    tokio::time::timeout(WAIT, server.stop())
        .await
        .expect("stop in time")
        .expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_is_a_typed_tls_error() {
    let (mut server, _cert) = tls_server().await;
    let mut events = server.take_events().expect("events");
    let port = server.local_addr().port();
    let url = format!("wss://localhost:{port}");

    // Default options: only the webpki (Mozilla) roots, which do not
    // include the self-signed certificate.
    let outcome = tokio::time::timeout(WAIT, connect(&url, registry(3), options("x", None)))
        .await
        .expect("the dial ends in time");
    match outcome {
        Err(ClientError::Tls { url: u, reason }) => {
            assert_eq!(u, url);
            assert!(!reason.is_empty());
        }
        other => panic!("expected ClientError::Tls, got {other:?}"),
    }
    let why = wait_tls_refusal(&mut events).await;
    assert!(!why.is_empty());

    // Trusting another self-signed certificate does not help either.
    let (other_cert, _) = self_signed();
    let outcome = tokio::time::timeout(
        WAIT,
        connect(&url, registry(4), options("y", Some(trusting(&other_cert)))),
    )
    .await
    .expect("the dial ends in time");
    assert!(
        matches!(outcome, Err(ClientError::Tls { .. })),
        "expected ClientError::Tls, got {outcome:?}"
    );

    // A trusted certificate that does not name the host dialed.
    let (elsewhere_cert, elsewhere_config) = self_signed_for(&["sync.example"]);
    let elsewhere = WebSocketServer::start(
        "127.0.0.1:0",
        registry(0),
        AllowAll,
        ServerOptions {
            tls: Some(elsewhere_config),
            ..ServerOptions::default()
        },
    )
    .await
    .expect("second server starts");
    let outcome = tokio::time::timeout(
        WAIT,
        connect(
            &format!("wss://localhost:{}", elsewhere.local_addr().port()),
            registry(5),
            options("z", Some(trusting(&elsewhere_cert))),
        ),
    )
    .await
    .expect("the dial ends in time");
    tokio::time::timeout(WAIT, elsewhere.stop())
        .await
        .expect("stop in time")
        .expect("stop");
    assert!(
        matches!(outcome, Err(ClientError::Tls { .. })),
        "expected ClientError::Tls for a name not in the certificate, got {outcome:?}"
    );

    // Plain ws:// to a TLS server fails (bounded) and reaches no session
    // (with `fail_fast`: offline first would keep dialing).
    let outcome = tokio::time::timeout(
        WAIT,
        connect(
            &format!("ws://127.0.0.1:{port}"),
            registry(6),
            ClientOptions {
                fail_fast: true,
                ..options("w", None)
            },
        ),
    )
    .await
    .expect("the dial ends in time");
    assert!(outcome.is_err(), "plain ws:// to a TLS server must fail");

    tokio::time::timeout(WAIT, server.stop())
        .await
        .expect("stop in time")
        .expect("stop");
}

/// The smol client speaks `wss://` with the same [`ClientOptions::tls`].
#[cfg(feature = "smol")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smol_client_over_wss() {
    let (server, cert) = tls_server().await;
    let port = server.local_addr().port();
    let trust = trusting(&cert);
    let (a, _ea) = tokio::time::timeout(
        WAIT,
        connect(
            &format!("wss://localhost:{port}"),
            registry(7),
            options("tokio", Some(trust.clone())),
        ),
    )
    .await
    .expect("connect in time")
    .expect("tokio client connects");
    let url = format!("wss://localhost:{port}");
    let (b, _eb) = tokio::task::spawn_blocking(move || {
        smol::block_on(async {
            let dial = crdt_socket_sync::transport::smol::connect(
                &url,
                registry(8),
                options("smol", Some(trust)),
            );
            smol::future::or(async { Some(dial.await) }, async {
                smol::Timer::after(WAIT).await;
                None
            })
            .await
        })
    })
    .await
    .expect("join")
    .expect("smol dial ends in time")
    .expect("smol client connects over wss://");

    // The smol client's task runs on smol's global executor; the handle
    // works from any runtime.
    append(&a, "tokio; ").await;
    append(&b, "smol; ").await;
    wait_converged(&[&a, &b], &["tokio", "smol"]).await;

    // And the smol client rejects an untrusted certificate the same way.
    let url = format!("wss://localhost:{port}");
    let outcome = tokio::task::spawn_blocking(move || {
        smol::block_on(async {
            let dial =
                crdt_socket_sync::transport::smol::connect(&url, registry(9), options("u", None));
            smol::future::or(async { Some(dial.await) }, async {
                smol::Timer::after(WAIT).await;
                None
            })
            .await
        })
    })
    .await
    .expect("join")
    .expect("smol dial ends in time");
    assert!(
        matches!(outcome, Err(ClientError::Tls { .. })),
        "expected ClientError::Tls from smol, got {:?}",
        outcome.map(|_| ())
    );

    for c in [&a, &b] {
        tokio::time::timeout(WAIT, c.close())
            .await
            .expect("close in time")
            .expect("close");
    }
    tokio::time::timeout(WAIT, server.stop())
        .await
        .expect("stop in time")
        .expect("stop");
}
