//! Builds the in-sandbox agent as a static binary and embeds it, so `corral` stays one file.
//!
//! The agent must run in any image (no glibc there), so it is linked with `+crt-static`.
//! That flag cannot apply to this whole build: proc-macro crates cannot be static. So this
//! script runs a nested `cargo build --target x86_64-unknown-linux-gnu` of `corral-agent`
//! with the flag set for that target only (build scripts and proc-macros stay dynamic), in
//! its own target dir so it never waits on the outer build's lock.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

const TRIPLE: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest
        .ancestors()
        .nth(2)
        .expect("workspace root")
        .to_owned();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<pkg>/out (or <target>/<triple>/<profile>/...).
    let target_root = out_dir.ancestors().nth(4).expect("target dir").to_owned();
    let agent_target = target_root.join("agent");

    for p in [
        "crates/corral-agent",
        "crates/corral-agent-proto",
        "crates/corral-core",
        "Cargo.lock",
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=CORRAL_SKIP_AGENT_BUILD");

    let dest = out_dir.join("corral-agent");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "--release",
            "-p",
            "corral-agent",
            "--bin",
            "corral-agent",
            "--target",
            TRIPLE,
        ])
        .arg("--target-dir")
        .arg(&agent_target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        // Static and *not* position-independent: a static-pie binary applies its relocations
        // at start-up, dirtying (copying) ~0.36 MiB of read-only data in every agent; without
        // them those pages stay clean and shared by all sandboxes.
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static -C relocation-model=static",
        )
        // Small and lean: the agent is mapped into every sandbox.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .status()
        .expect("running cargo for the agent");
    assert!(status.success(), "building the static agent failed");
    let built = agent_target
        .join(TRIPLE)
        .join("release")
        .join("corral-agent");
    copy_if_changed(&built, &dest);
    let digest = Sha256::digest(fs::read(&dest).expect("reading agent"));
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=CORRAL_AGENT_DIGEST={hex}");
}

fn copy_if_changed(from: &Path, to: &Path) {
    let new = fs::read(from).expect("reading built agent");
    if fs::read(to).ok().as_deref() != Some(&new[..]) {
        // A new file renamed into place, never a write into the old one: target dirs may be
        // hard-linked copies of a shared seed, and writing in place would change the agent of
        // every worktree sharing that inode.
        let tmp = to.with_extension("tmp");
        fs::write(&tmp, new).expect("copying agent");
        fs::rename(&tmp, to).expect("renaming agent");
    }
}
