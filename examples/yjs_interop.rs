//! The Rust half of the y-websocket interop test (`tests/yjs/interop.mjs`,
//! run by `.ci/yws.sh`): a server with both endpoints (native on `/sync`,
//! y-websocket on `/yjs`) and native clients editing the document the Yjs
//! clients edit.
//!
//! Protocol on stdio (one line each):
//! - prints `READY <ws url of the server>` once serving, then lets
//!   `NATIVE` clients type `EDITS` edits each into text `body` of document
//!   `shared` while the Yjs clients type theirs, each with presence
//!   `{"user":{"name":"native-<i>"}}`;
//! - reads `CHECK <JSON string>`: waits (bounded) until every native
//!   replica holds that text and sees every Yjs client's presence
//!   (`"yjs-<i>"` in a state), prints `OK` or `FAIL <why>` and exits.
//!
//! ```text
//! cargo run --example yjs_interop --features tokio,yrs
//! ```

use std::time::{Duration, Instant};

use crdt_socket_sync::adapters::yrs::YrsDocument;
use crdt_socket_sync::registry::MemoryRegistry;
use crdt_socket_sync::server::AllowAll;
use crdt_socket_sync::transport::tokio::{WebSocketServer, connect};
use crdt_socket_sync::transport::{ClientOptions, ServerOptions, WebSocketClient};
use tokio::io::AsyncBufReadExt;
use yrs::{GetString, Text, Transact};

const DOC: &str = "shared";
const NATIVE: usize = 2;
const EDITS: usize = 40;
/// The Yjs clients the Node script starts (their presence is awaited).
const YJS: usize = 3;
/// The whole run must finish within this.
const LIMIT: Duration = Duration::from_secs(60);

type Client = WebSocketClient<MemoryRegistry<YrsDocument>>;

fn text_of(doc: &mut YrsDocument) -> String {
    doc.get_or_insert_text("body").get_string(&doc.transact())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let options = ServerOptions {
        path: Some("/sync".into()),
        yjs_path: Some("/yjs".into()),
        ..ServerOptions::default()
    };
    let registry = MemoryRegistry::new(|_: &str| YrsDocument::server());
    let server = WebSocketServer::start("127.0.0.1:0", registry, AllowAll, options).await?;
    let addr = server.local_addr();
    println!("READY ws://{addr}");

    let mut clients: Vec<Client> = Vec::new();
    for i in 0..NATIVE {
        let docs = MemoryRegistry::new(move |_: &str| YrsDocument::new());
        let options = ClientOptions {
            documents: vec![DOC.into()],
            ..ClientOptions::default()
        };
        let (client, _events) = connect(&format!("ws://{addr}/sync"), docs, options).await?;
        let presence = format!(r#"{{"user":{{"name":"native-{i}"}}}}"#);
        client
            .set_presence(DOC, Some(presence.into_bytes()))
            .await?;
        clients.push(client);
    }

    // Type concurrently with the Yjs clients.
    for k in 0..EDITS {
        for (i, client) in clients.iter().enumerate() {
            client
                .with_doc(DOC, move |doc| {
                    let body = doc.get_or_insert_text("body");
                    let mut txn = doc.transact_mut();
                    // At a marker boundary, so concurrent edits never
                    // split a marker.
                    let text = body.get_string(&txn);
                    let bounds: Vec<u32> = std::iter::once(0)
                        .chain(text.match_indices(']').map(|(p, _)| p as u32 + 1))
                        .collect();
                    let at = bounds[(k * 7 + i * 3) % bounds.len()];
                    body.insert(&mut txn, at, &format!("[N{i}:{k}]"));
                })
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let expected: String = loop {
        let Some(line) = lines.next_line().await? else {
            println!("FAIL stdin closed before CHECK");
            std::process::exit(1);
        };
        if let Some(json) = line.strip_prefix("CHECK ") {
            break serde_json::from_str(json)?;
        }
    };

    let mut why = String::new();
    while started.elapsed() < LIMIT {
        why.clear();
        for (i, client) in clients.iter().enumerate() {
            let text = client.read_doc(DOC, text_of).await?;
            if text != expected {
                why = format!(
                    "native-{i} holds {} chars, expected {}",
                    text.len(),
                    expected.len()
                );
                break;
            }
            let peers = client.presence(DOC).await?;
            for y in 0..YJS {
                let name = format!("\"yjs-{y}\"");
                let seen = peers
                    .iter()
                    .any(|(_, p)| String::from_utf8_lossy(&p.state).contains(&name));
                if !seen {
                    why = format!("native-{i} does not see the presence of yjs-{y}");
                }
            }
        }
        if why.is_empty() {
            println!("OK");
            let _ = server.stop().await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("FAIL {why}");
    std::process::exit(1);
}
