//! corral's domain model: sandboxes, their states and resources, the handshake with the
//! in-sandbox agent, and the port traits (`Store`, `Runtime`) that the server wires together.
//!
//! This crate knows nothing of HTTP, SQL or Linux system calls.

#![forbid(unsafe_code)]

pub mod agent;
pub mod ports;
pub mod sandbox;
pub mod transitions;

pub use ports::{
    ApiKeyStore, Bounds, CommitConfig, ImageInfo, Images, ListFilters, ListQuery, ListSort, Page,
    Runtime, RuntimeError, SANDBOX_SNAPSHOT_PREFIX, SandboxSpec, SandboxStore, Snapshot,
    SnapshotState, SnapshotStore, SortField, StoreError, Window, sandbox_snapshot_reference,
    split_cursor,
};
pub use sandbox::{
    CODE_LANGUAGE_LABEL, CodeLanguage, DesiredState, Egress, EgressError, Resources, Sandbox,
    SandboxState, VolumeMount,
};
