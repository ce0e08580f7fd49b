//! The demo page beside the sync endpoint (feature `axum`): `GET /` is the
//! page (`web/demo/index.html`), `GET /web/...` the files it loads (the
//! provider, the wasm-bindgen output in `web/pkg`, Yjs from
//! `web/node_modules`), and a WebSocket upgrade on `/`, on `--path` or, when
//! no path is set, on any path reaches the sync endpoint.
//!
//! Files (a few hundred KB) are read with `std::fs` from the repository's `web/` directory at request time
//! (built by `bash web/build.sh`); only the directories listed in `SERVED`
//! are reachable, and no path with `..` or other special components is.

use std::path::{Component, Path, PathBuf};

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Request, ws::rejection::WebSocketUpgradeRejection};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use crdt_socket_sync::transport::HubHandle;
use crdt_socket_sync::transport::axum::upgrade;

/// The directories under `web/` the page may load from.
const SERVED: &[&str] = &[
    "src/",
    "pkg/",
    "demo/",
    "node_modules/yjs/",
    "node_modules/lib0/",
    "node_modules/isomorphic.js/",
];

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("web")
}

/// The router: page, files, sync endpoint.
pub fn router(handle: HubHandle, path: Option<String>) -> Router {
    let sync = handle.clone();
    let any_path = path.is_none();
    let mut app = Router::new()
        .route(
            "/",
            get(
                move |ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
                      headers: HeaderMap| {
                    let handle = sync.clone();
                    async move {
                        match ws {
                            Ok(ws) if any_path => upgrade(handle, ws, &headers).await,
                            _ => page().await,
                        }
                    }
                },
            ),
        )
        .route("/web/{*file}", get(file));
    let sync = handle.clone();
    let endpoint = move |ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
                         headers: HeaderMap| {
        let handle = sync.clone();
        async move {
            match ws {
                Ok(ws) => upgrade(handle, ws, &headers).await,
                Err(e) => e.into_response(),
            }
        }
    };
    match path {
        Some(p) if p != "/" => app = app.route(&p, get(endpoint)),
        Some(_) => {}
        None => app = app.fallback(get(endpoint)),
    }
    app
}

async fn page() -> Response {
    match std::fs::read_to_string(web_dir().join("demo/index.html")) {
        Ok(html) if web_dir().join("pkg/crdt_socket_sync_bg.wasm").exists() => {
            Html(html).into_response()
        }
        _ => (
            StatusCode::NOT_FOUND,
            "The demo page needs the browser build: run `bash web/build.sh` in the repository, then reload.\n",
        )
            .into_response(),
    }
}

/// `web/<file>`, when it lies under one of the `SERVED` directories. An
/// extensionless path under `lib0/` gets `.js` (Yjs imports `lib0/array`,
/// which the page's import map sends here).
async fn file(axum::extract::Path(file): axum::extract::Path<String>, _req: Request) -> Response {
    let clean = Path::new(&file)
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if !clean || !SERVED.iter().any(|dir| file.starts_with(dir)) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let mut path = web_dir().join(&file);
    if file.starts_with("node_modules/lib0/") && path.extension().is_none() {
        path.set_extension("js");
    }
    let kind = match path.extension().and_then(|e| e.to_str()) {
        Some("js" | "mjs") => "text/javascript",
        Some("wasm") => "application/wasm",
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    };
    match std::fs::read(&path) {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}
