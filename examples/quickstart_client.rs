use crdt_socket_sync::prelude::*;
use yrs::{Text, Transact};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let docs = MemoryRegistry::new(|_: &str| YrsDocument::new());
    let options = ClientOptions {
        documents: vec!["notes".into()],
        ..Default::default()
    };
    let (client, _events) =
        WebSocketClient::connect("ws://127.0.0.1:3000/sync", docs, options).await?;
    let edit = client
        .with_doc("notes", |doc| {
            doc.get_or_insert_text("body")
                .push(&mut doc.transact_mut(), "hi")
        })
        .await?;
    if let Some(seq) = edit.seq {
        client.durable("notes", seq).await?; // on the server's disk
    }
    client.close().await?;
    Ok(())
}
