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
//! With `--web` (and the `axum` feature) the same port also serves a
//! collaborative demo page at `http://ADDR/` (a shared text, remote cursors
//! and names, the connection status and the number of unacknowledged edits),
//! running the client core compiled to WebAssembly (`web/`, built by
//! `bash web/build.sh`); WebSocket upgrades on any path reach the sync
//! endpoint as before.
//!
//! ```text
//! bash web/build.sh
//! cargo run --example server --features tokio,yrs,loro,automerge,sqlite,axum -- --web
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
    /// Also serve the demo page at `/` (and its files under `/web/`) on the
    /// same port; needs the `axum` feature and `bash web/build.sh`.
    #[arg(long)]
    web: bool,
}

type Doc = Box<dyn Document + Send>;

/// A new, empty document of the chosen CRDT.
fn factory(crdt: Crdt) -> impl FnMut(&str) -> Doc + Send + 'static {
    move |_: &str| -> Doc {
        match crdt {
            Crdt::Yrs => Box::new(YrsDocument::server()),
            Crdt::Loro => Box::new(LoroDocument::new()),
            Crdt::Automerge => Box::new(AutomergeDocument::new()),
        }
    }
}

fn main() -> std::process::ExitCode {
    // Errors in one line, with their Display text (not a Debug dump).
    match start() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn start() -> Result<(), Box<dyn std::error::Error>> {
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

fn server_options(args: &Args) -> ServerOptions {
    ServerOptions {
        hub: ServerConfig {
            idle_timeout: Duration::from_secs(30),
            ..ServerConfig::default()
        },
        path: args.path.clone(),
        yjs_path: args.yjs_path.clone(),
        max_connections: args.max_connections,
        own_thread: args.own_thread,
        ..ServerOptions::default()
    }
}

/// Serves the sync endpoint and the demo page (`page.rs`) on one axum
/// router.
#[cfg(feature = "axum")]
async fn serve_web<R: Registry + Send + 'static>(
    args: &Args,
    reg: R,
) -> Result<(), Box<dyn std::error::Error>> {
    use crdt_socket_sync::transport::HubService;
    if args.own_thread {
        return Err("--own-thread and --web do not go together".into());
    }
    let options = server_options(args);
    let (service, mut events) = match &args.token {
        Some(token) => {
            let mut auth = StaticTokens::default().with(token, "writer", Access::ReadWrite);
            if let Some(r) = &args.read_token {
                auth = auth.with(r, "reader", Access::ReadOnly);
            }
            HubService::spawn(reg, auth, options)
        }
        None => HubService::spawn(reg, AllowAll, options),
    };
    let listener = tokio::net::TcpListener::bind(&args.addr).await?;
    let addr = listener.local_addr()?;
    let app = page::router(service.handle().clone(), args.path.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await
    });
    println!(
        "crdt-socket-sync server: ws://{addr}{} ({:?} documents, {:?} storage). Ctrl-C stops it.",
        args.path.as_deref().unwrap_or(""),
        args.crdt,
        args.storage
    );
    println!("demo page: http://{addr}/");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            event = events.recv() => if event.is_none() { break },
        }
    }
    println!("stopping...");
    let _ = stop_tx.send(());
    let reg = service.stop().await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), http).await;
    println!("stopped; {} documents loaded", reg.list().len());
    Ok(())
}

#[cfg(feature = "axum")]
#[path = "server/page.rs"]
mod page;

async fn serve<R: Registry + Send + 'static>(
    args: &Args,
    reg: R,
) -> Result<(), Box<dyn std::error::Error>> {
    if args.web {
        #[cfg(feature = "axum")]
        return serve_web(args, reg).await;
        #[cfg(not(feature = "axum"))]
        return Err("--web needs the axum feature".into());
    }
    use crdt_socket_sync::transport::tokio::WebSocketServer;
    let options = server_options(args);
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
