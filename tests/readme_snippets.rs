//! The README's quick-start programs are `examples/quickstart_*.rs`
//! (compiled with every test build); this checks that the README shows
//! each of them verbatim, so the snippets cannot rot.

#[test]
fn the_readme_shows_the_quickstart_examples_verbatim() {
    let readme = include_str!("../README.md");
    for (name, code) in [
        (
            "quickstart_server",
            include_str!("../examples/quickstart_server.rs"),
        ),
        (
            "quickstart_client",
            include_str!("../examples/quickstart_client.rs"),
        ),
        (
            "quickstart_session",
            include_str!("../examples/quickstart_session.rs"),
        ),
    ] {
        let fenced = format!("```rust\n{code}```");
        assert!(
            readme.contains(&fenced),
            "README does not show examples/{name}.rs verbatim"
        );
    }
    // The axum endpoint stays short.
    let server = include_str!("../examples/quickstart_server.rs");
    assert!(
        server.lines().count() < 15,
        "{} lines",
        server.lines().count()
    );
}
