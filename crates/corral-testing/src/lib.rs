//! Test seams for corral, after crates.io's `TestApp`: the control plane and the HTTP edge
//! run in process, as any user, in milliseconds, with no kernel features.
//!
//! - [`FakeRuntime`]: the `Runtime` port in memory; records every call, and any operation
//!   can be told to fail or to hang until released.
//! - [`MemoryStore`]: every store port in memory with the SQLite store's semantics (checked
//!   against `corral-store` by `tests/store_conformance.rs` through [`conformance`]).
//! - [`FakeImages`]: the `Images` port in memory.
//! - [`TestApp`]: the real `corral_api::router` over those fakes, with request helpers.

#![forbid(unsafe_code)]

pub mod app;
pub mod conformance;
pub mod images;
pub mod runtime;
pub mod stores;

pub use app::{TEST_KEY, TestApp, TestAppBuilder, TestRequest, TestResponse};
pub use images::FakeImages;
pub use runtime::{Call, Failure, FakeRuntime, FakeSandbox, Hang, Op};
pub use stores::MemoryStore;
