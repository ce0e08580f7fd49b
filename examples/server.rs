//! A sync server: WebSockets on 127.0.0.1:8080 by default, documents stored
//! durably in an embedded SQLite file under `--data-dir` (`./data`), one CRDT
//! for every document (yrs by default). `--storage memory` keeps them in
//! memory only.
//!
//! ```text
//! cargo run --example server --features tokio,yrs,loro,automerge,sqlite -- --help
//! cargo run --example server --features tokio,yrs,loro,automerge,sqlite -- --addr 0.0.0.0:9000 --crdt loro
//! ```
//!
//! Logs clients, documents and errors within the server's log limits
//! (`ServerOptions::log_limits`: per connection and kind of line, and in
//! total, with counts of the lines left out), so no client can fill the
//! disk; `RUST_LOG=debug` shows updates too, `RUST_LOG=warn` less. Stop it with
//! Ctrl-C: sessions are closed with a close frame first.

use std::time::Duration;

use clap::{Parser, ValueEnum};
use crdt_socket_sync::adapters::automerge::AutomergeDocument;
use crdt_socket_sync::adapters::loro::LoroDocument;
use crdt_socket_sync::adapters::yrs::YrsDocument;
use crdt_socket_sync::document::Document;
use crdt_socket_sync::registry::{MemoryRegistry, Registry};
use crdt_socket_sync::server::{AllowAll, ServerConfig, StaticTokens};
use crdt_socket_sync::store::SqliteRegistry;
use crdt_socket_sync::transport::ServerOptions;
use crdt_socket_sync::transport::tokio::WebSocketServer;
use crdt_socket_sync::wire::Access;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Crdt {
    Yrs,
    Loro,
    Automerge,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Storage {
    /// An embedded SQLite file per CRDT under `--data-dir`: every update
    /// acknowledged as durable survives a crash.
    Sqlite,
    /// Documents in memory (lost when the server stops).
    Memory,
}

/// A crdt-socket-sync server over WebSockets.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// The CRDT every document uses.
    #[arg(long, value_enum, default_value_t = Crdt::Yrs)]
    crdt: Crdt,
    /// Where documents live.
    #[arg(long, value_enum, default_value_t = Storage::Sqlite)]
    storage: Storage,
    /// Directory of the SQLite files (created if missing).
    #[arg(long, default_value = "data")]
    data_dir: std::path::PathBuf,
    /// URL path of the endpoint (any path when not given).
    #[arg(long)]
    path: Option<String>,
    /// Also serve y-websocket clients under this URL path (`--crdt yrs`
    /// only): `new WebsocketProvider("ws://<addr><yjs-path>", room, ydoc)`.
    #[arg(long)]
    yjs_path: Option<String>,
    /// Require this token (read-write); without it anyone may connect.
    #[arg(long)]
    token: Option<String>,
    /// Also accept this token with read-only access.
    #[arg(long)]
    read_token: Option<String>,
    /// Maximum concurrent connections.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Tokio worker threads; 0 runs everything on the main thread (a
    /// current-thread runtime: the cheapest per update, see
    /// `benches/results/profile.md`).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Run the server on a thread of its own (`ServerOptions::own_thread`),
    /// as an application on a multi-threaded runtime would.
    #[arg(long)]
    own_thread: bool,
}

type Doc = Box<dyn Document + Send>;

/// A new, empty document of the chosen CRDT.
fn factory(crdt: Crdt) -> impl FnMut(&str) -> Doc + Send + 'static {
    move |_: &str| -> Doc {
        match crdt {
            Crdt::Yrs => Box::new(YrsDocument::server(0)),
            Crdt::Loro => Box::new(LoroDocument::new(0)),
            Crdt::Automerge => Box::new(AutomergeDocument::new(0u64)),
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = if args.workers == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.workers)
            .enable_all()
            .build()?
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .init();

    if args.yjs_path.is_some() && !matches!(args.crdt, Crdt::Yrs) {
        return Err("--yjs-path needs --crdt yrs (Yjs clients send yrs updates)".into());
    }
    match args.storage {
        Storage::Memory => serve(&args, MemoryRegistry::new(factory(args.crdt))).await,
        Storage::Sqlite => {
            std::fs::create_dir_all(&args.data_dir)?;
            // One file per CRDT: documents of one library never load as another.
            let file = args
                .data_dir
                .join(format!("{:?}.sqlite", args.crdt).to_lowercase());
            let registry = SqliteRegistry::open(&file, factory(args.crdt))?;
            println!("documents stored in {}", file.display());
            serve(&args, registry).await
        }
    }
}

async fn serve<R: Registry + Send + 'static>(
    args: &Args,
    reg: R,
) -> Result<(), Box<dyn std::error::Error>> {
    let options = ServerOptions {
        hub: ServerConfig {
            idle_timeout: Duration::from_secs(30),
            ..ServerConfig::default()
        },
        path: args.path.clone(),
        yjs_path: args.yjs_path.clone(),
        max_connections: args.max_connections,
        own_thread: args.own_thread,
        ..ServerOptions::default()
    };
    let mut server = match &args.token {
        Some(token) => {
            let mut auth = StaticTokens::default().with(token, "writer", Access::ReadWrite);
            if let Some(r) = &args.read_token {
                auth = auth.with(r, "reader", Access::ReadOnly);
            }
            Box::pin(WebSocketServer::start(
                args.addr.clone(),
                reg,
                auth,
                options,
            ))
            .await?
        }
        None => {
            Box::pin(WebSocketServer::start(
                args.addr.clone(),
                reg,
                AllowAll,
                options,
            ))
            .await?
        }
    };
    println!(
        "crdt-socket-sync server: {} ({:?} documents, {:?} storage). Ctrl-C stops it.",
        server.url(),
        args.crdt,
        args.storage
    );
    // The hub task logs the events (within its log limits); this loop only
    // keeps the channel drained.
    let mut events = server.take_events().expect("events");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            event = events.recv() => if event.is_none() { break },
        }
    }
    println!("stopping...");
    let reg = server.stop().await?;
    println!("stopped; {} documents loaded", reg.list().len());
    Ok(())
}
