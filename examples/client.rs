//! A terminal client: joins a document, prints the shared text whenever it
//! changes, appends every line you type, and shows who else is there.
//!
//! ```text
//! cargo run --example server --features tokio,yrs,loro,automerge,sqlite     # terminal 1
//! cargo run --example client --features tokio,yrs -- --name alice    # terminal 2
//! cargo run --example client --features tokio,yrs -- --name bob      # terminal 3
//! ```
//!
//! Type a line and press Enter; the other terminals print the new text.
//! Ctrl-D (end of input) leaves. The client reconnects by itself if the
//! server goes away, and what you typed meanwhile is sent afterwards.

use clap::Parser;
use crdt_socket_sync::adapters::yrs::YrsDocument;
use crdt_socket_sync::client::{ClientConfig, ClientEvent};
use crdt_socket_sync::registry::MemoryRegistry;
use crdt_socket_sync::transport::ClientOptions;
use crdt_socket_sync::transport::tokio::connect;
use tokio::io::AsyncBufReadExt;
use yrs::{GetString, Text, Transact};

/// A terminal client for a crdt-socket-sync server (yrs text).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Server URL (`ws://` or, with the `tls` feature, `wss://`).
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    url: String,
    /// Document to join.
    #[arg(long, default_value = "notes")]
    doc: String,
    /// Your name, shown to the others.
    #[arg(long, default_value = "anonymous")]
    name: String,
    /// Auth token, if the server wants one.
    #[arg(long, default_value = "")]
    token: String,
}

fn text_of(doc: &mut YrsDocument) -> String {
    doc.get_or_insert_text("body").get_string(&doc.transact())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let docs = MemoryRegistry::new(move |_: &str| YrsDocument::new());
    let options = ClientOptions {
        session: ClientConfig {
            peer: args.name.clone(),
            token: args.token.clone().into_bytes(),
            ..ClientConfig::default()
        },
        documents: vec![args.doc.clone()],
        ..ClientOptions::default()
    };
    let (client, mut events) = connect(&args.url, docs, options).await?;
    client
        .set_presence(&args.doc, Some(args.name.clone().into_bytes()))
        .await?;
    println!(
        "connected to {} as {:?}; joined {:?}. Type lines to append; Ctrl-D leaves.",
        args.url, args.name, args.doc
    );

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut last_shown = None;
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                Some(line) => {
                    let line = format!("{line}\n");
                    client.with_doc(&args.doc, move |doc| {
                        let body = doc.get_or_insert_text("body");
                        body.push(&mut doc.transact_mut(), &line);
                    }).await?;
                    show(&client, &args.doc, &mut last_shown).await?;
                }
                None => break,
            },
            event = events.recv() => match event {
                Some(ClientEvent::RemoteUpdate { .. } | ClientEvent::Synced { .. }) => {
                    show(&client, &args.doc, &mut last_shown).await?;
                }
                Some(ClientEvent::PresenceChanged { .. }) => {
                    let here: Vec<String> = client
                        .presence(&args.doc)
                        .await?
                        .into_iter()
                        .map(|(_, peer)| String::from_utf8_lossy(&peer.state.0).into_owned())
                        .collect();
                    println!("[here with you: {}]", if here.is_empty() { "nobody".into() } else { here.join(", ") });
                }
                Some(ClientEvent::Status(status)) => println!("[{status:?}]"),
                Some(ClientEvent::DocumentError { message, .. }) => println!("[error: {message}]"),
                Some(_) => {}
                None => break,
            },
        }
    }
    client.close().await?;
    Ok(())
}

/// Prints the document's text if it changed since it was last shown.
async fn show(
    client: &crdt_socket_sync::transport::WebSocketClient<MemoryRegistry<YrsDocument>>,
    doc: &str,
    last: &mut Option<String>,
) -> Result<(), Box<dyn std::error::Error>> {
    let text = client.read_doc(doc, text_of).await?;
    if last.as_ref() != Some(&text) {
        println!("----- {doc} -----\n{}-----", text);
        *last = Some(text);
    }
    Ok(())
}
