use crdt_socket_sync::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let docs = SqliteRegistry::open("docs.sqlite", |_: &str| YrsDocument::server())?;
    let (hub, _events) = HubService::spawn(docs, AllowAll, ServerOptions::default());
    let app = axum::Router::new().route("/sync", sync_route(hub.handle().clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    axum::serve(listener, app).await?;
    Ok(())
}
