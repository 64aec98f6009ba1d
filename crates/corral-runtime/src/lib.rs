//! corral's native Linux runtime.
//!
//! Each sandbox is a process tree in its own pid, mount, uts, ipc, net and cgroup
//! namespaces, rooted in an overlay over an image (the `host` image for now), limited by
//! its own cgroup, with corral's agent as PID 1 serving the toolbox API on a unix socket
//! that lives outside the sandbox. See `docs/ARCHITECTURE.md` (the map) and `docs/lifecycle.md`.

mod agent_log;
pub mod beneath;
pub mod btrfs;
pub mod caps;
pub mod cgroup;
mod commit;
mod disk;
mod fsutil;
pub mod host_image;
pub mod layer;
mod linux;
pub mod memory;
pub mod net;
pub mod oci;
mod plan;
pub mod seccomp;
mod spawn;
pub mod users;
mod volume;

pub use linux::{DiskConfig, InitError, LinuxRuntime, LinuxRuntimeConfig, default_pool_bytes};
