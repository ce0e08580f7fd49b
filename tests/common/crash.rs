//! What the two process crash tests (`tests/crash.rs` over std TCP,
//! `tests/crash_websocket.rs` over WebSocket) share: their settings, a
//! seeded kill schedule, a scratch directory and building the server
//! example they kill.

use std::path::PathBuf;
use std::process::Command;

/// `CSS_CRASH_KILLS` (default 20) and `CSS_CRASH_SEED` (default: the clock),
/// printed so a failing schedule can be replayed.
pub fn settings(name: &str) -> (u32, u64) {
    let kills = std::env::var("CSS_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed = std::env::var("CSS_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("{name}: {kills} kills, CSS_CRASH_SEED={seed}");
    (kills, seed)
}

/// An empty directory for this test process's data files.
pub fn scratch_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The binary in env var `override_var`, or example `name` built with
/// `features` next to this test. Cargo is always asked (a no-op when up to
/// date): a stale binary would test old code.
pub fn example_binary(override_var: &str, name: &str, features: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(override_var) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let bin = profile_dir.join("examples").join(name);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--example", name, "--features", features])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building example {name} failed");
    assert!(bin.exists(), "no server binary at {}", bin.display());
    bin
}

/// xorshift64: the kill schedule from the seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The features this test was built with, for building an example with
/// the same ones (so cargo reuses the library instead of building another).
#[allow(dead_code)] // not every crash test builds its example this way
pub fn test_features() -> String {
    let all = [
        ("arbitrary", cfg!(feature = "arbitrary")),
        ("sim", cfg!(feature = "sim")),
        ("yrs", cfg!(feature = "yrs")),
        ("loro", cfg!(feature = "loro")),
        ("automerge", cfg!(feature = "automerge")),
        ("conformance", cfg!(feature = "conformance")),
        ("tokio", cfg!(feature = "tokio")),
        ("tls", cfg!(feature = "tls")),
        ("smol", cfg!(feature = "smol")),
        ("axum", cfg!(feature = "axum")),
        ("sqlite", cfg!(feature = "sqlite")),
    ];
    all.iter()
        .filter(|(_, on)| *on)
        .map(|(f, _)| *f)
        .collect::<Vec<_>>()
        .join(",")
}
