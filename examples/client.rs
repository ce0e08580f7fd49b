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
//! Ctrl-D (end of input) leaves. The terminals may start in any order: a
//! client started before the server edits offline and keeps dialing. It
//! reconnects by itself if the server goes away, and what you typed
//! meanwhile is sent afterwards.
//!
//! `--db FILE` (feature `sqlite`) keeps the documents in a local SQLite
//! file: lines typed while offline survive a restart of the client (even a
//! kill) and reach the server once it is back.

use std::process::ExitCode;

use clap::Parser;
use crdt_socket_sync::adapters::yrs::YrsDocument;
use crdt_socket_sync::client::{ClientConfig, ClientEvent};
use crdt_socket_sync::registry::{MemoryRegistry, Registry};
use crdt_socket_sync::transport::tokio::connect;
use crdt_socket_sync::transport::{ClientOptions, WebSocketClient};
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
    /// Keep the documents in this SQLite file (feature `sqlite`), so that
    /// offline edits survive a restart of the client.
    #[arg(long)]
    db: Option<std::path::PathBuf>,
}

type Error = Box<dyn std::error::Error>;

fn text_of(doc: &mut YrsDocument) -> String {
    doc.get_or_insert_text("body").get_string(&doc.transact())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = match args.db.clone() {
        None => run(&args, MemoryRegistry::new(|_: &str| YrsDocument::new())).await,
        #[cfg(feature = "sqlite")]
        Some(path) => {
            match crdt_socket_sync::store::SqliteRegistry::open(&path, |_: &str| YrsDocument::new())
            {
                Ok(docs) => run(&args, docs).await,
                Err(e) => Err(format!("opening {}: {e}", path.display()).into()),
            }
        }
        #[cfg(not(feature = "sqlite"))]
        Some(_) => Err("--db needs the `sqlite` feature".into()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run<R>(args: &Args, docs: R) -> Result<(), Error>
where
    R: Registry<Doc = YrsDocument> + Send + 'static,
{
    let options = ClientOptions {
        session: ClientConfig {
            peer: args.name.clone(),
            token: args.token.clone().into_bytes(),
            ..ClientConfig::default()
        },
        documents: vec![args.doc.clone()],
        ..ClientOptions::default()
    };
    // Returns at once when the server is not up yet: the client edits
    // offline and keeps dialing.
    let (client, mut events) = connect(&args.url, docs, options).await?;
    client
        .set_presence(&args.doc, Some(args.name.clone().into_bytes()))
        .await?;
    println!(
        "joined {:?} on {} as {:?} ({:?}). Type lines to append; Ctrl-D leaves.",
        args.doc,
        args.url,
        args.name,
        client.status()
    );

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut last_shown = None;
    let mut dial_failures = 0u32;
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                Some(line) => {
                    let line = format!("{line}\n");
                    let edit = client.with_doc(&args.doc, move |doc| {
                        let body = doc.get_or_insert_text("body");
                        body.push(&mut doc.transact_mut(), &line);
                    }).await?;
                    // With --db, the edit is on the local disk by now.
                    if let Some(seq) = edit.seq {
                        println!("[edit {seq} saved]");
                    }
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
                Some(ClientEvent::Connected { .. }) => dial_failures = 0,
                Some(ClientEvent::DialFailed { reason, .. }) => {
                    // Say it once, not at every retry.
                    if dial_failures == 0 {
                        let reason = reason.unwrap_or_default();
                        println!("[server unreachable ({reason}); editing offline, still dialing]");
                    }
                    dial_failures += 1;
                }
                Some(ClientEvent::GaveUp { attempts }) => println!("[gave up after {attempts} attempts]"),
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
async fn show<R>(
    client: &WebSocketClient<R>,
    doc: &str,
    last: &mut Option<String>,
) -> Result<(), Error>
where
    R: Registry<Doc = YrsDocument> + Send + 'static,
{
    let text = client.read_doc(doc, text_of).await?;
    if last.as_ref() != Some(&text) {
        println!("----- {doc} -----\n{}-----", text);
        *last = Some(text);
    }
    Ok(())
}
