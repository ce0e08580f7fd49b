//! The clock type the sessions take `now` in.
//!
//! Natively this is [`std::time::Instant`] itself (a re-export: the API is
//! the standard one). On `wasm32-unknown-unknown`, where the standard
//! `Instant::now()` panics, it is [`web_time::Instant`], which reads the
//! browser's `performance.now()` and has the same methods. The core never
//! reads the clock itself; only the drivers (transports, the browser
//! bindings, tests) call `Instant::now()`.

#[cfg(not(target_arch = "wasm32"))]
pub use std::time::Instant;

#[cfg(target_arch = "wasm32")]
pub use web_time::Instant;
