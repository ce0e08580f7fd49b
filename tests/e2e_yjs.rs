//! The tokio server's y-websocket endpoint over a real WebSocket on
//! 127.0.0.1: a raw client speaking y-protocols syncs, is refused with
//! "permission denied" without a valid token, and gets a typed close for
//! bad input. (The real npm client is tested by `tests/yjs/interop.mjs`.)

use std::time::Duration;

use crdt_socket_sync::adapters::yrs::YrsDocument;
use crdt_socket_sync::registry::MemoryRegistry;
use crdt_socket_sync::server::StaticTokens;
use crdt_socket_sync::transport::ServerOptions;
use crdt_socket_sync::transport::tokio::WebSocketServer;
use crdt_socket_sync::wire::Access;
use crdt_socket_sync::ywebsocket::YMessage;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn server() -> WebSocketServer<MemoryRegistry<YrsDocument>> {
    let auth = StaticTokens::default().with("s3cret", "alice", Access::ReadWrite);
    let registry = MemoryRegistry::new(|_: &str| YrsDocument::server());
    let options = ServerOptions {
        path: Some("/sync".into()),
        yjs_path: Some("/yjs".into()),
        ..ServerOptions::default()
    };
    WebSocketServer::start("127.0.0.1:0", registry, auth, options)
        .await
        .unwrap()
}

async fn send(ws: &mut Ws, msg: YMessage<'_>) {
    let mut bytes = Vec::new();
    msg.encode(&mut bytes);
    ws.send(Message::Binary(bytes.into())).await.unwrap();
}

/// The next binary message, or the close frame's code.
async fn next(ws: &mut Ws) -> Result<Vec<u8>, Option<u16>> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("the server answers within 10 s");
        match msg {
            Some(Ok(Message::Binary(b))) => return Ok(b.to_vec()),
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            _ => return Err(None),
        }
    }
}

#[tokio::test]
async fn a_raw_yjs_client_syncs_and_bad_input_gets_a_typed_close() {
    let server = server().await;
    let addr = server.local_addr();
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/yjs/notes?token=s3cret"))
            .await
            .unwrap();
    send(&mut ws, YMessage::SyncStep1(&[0])).await;
    // The document's content (step 2), then the server's state vector.
    let step2 = next(&mut ws).await.unwrap();
    assert!(matches!(
        YMessage::decode(&step2),
        Ok(YMessage::SyncStep2(_))
    ));
    let step1 = next(&mut ws).await.unwrap();
    assert!(matches!(
        YMessage::decode(&step1),
        Ok(YMessage::SyncStep1(_))
    ));

    // An unknown message type: WebSocket close 1002 (protocol error).
    ws.send(Message::Binary(vec![9].into())).await.unwrap();
    let code = loop {
        match next(&mut ws).await {
            Ok(_) => continue,
            Err(code) => break code,
        }
    };
    assert_eq!(code, Some(1002));
    let _ = server.stop().await;
}

#[tokio::test]
async fn a_wrong_token_is_denied_in_y_protocols_terms() {
    let server = server().await;
    let addr = server.local_addr();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/yjs/notes?token=nope"))
        .await
        .unwrap();
    send(&mut ws, YMessage::SyncStep1(&[0])).await;
    let denied = next(&mut ws).await.unwrap();
    assert!(
        matches!(YMessage::decode(&denied), Ok(YMessage::PermissionDenied(_))),
        "{denied:?}"
    );
    let code = loop {
        match next(&mut ws).await {
            Ok(_) => continue,
            Err(code) => break code,
        }
    };
    assert_eq!(code, Some(1008));
    let _ = server.stop().await;
}

#[tokio::test]
async fn paths_outside_both_endpoints_are_refused() {
    let server = server().await;
    let addr = server.local_addr();
    for path in ["/yjs", "/yjs/", "/other/notes"] {
        let refused = tokio_tungstenite::connect_async(format!("ws://{addr}{path}")).await;
        assert!(refused.is_err(), "{path} was upgraded");
    }
    let _ = server.stop().await;
}
