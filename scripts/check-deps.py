#!/usr/bin/env python3
"""The crate layering rules, checked on the workspace's direct dependencies (what cargo-deny's
`wrappers` in deny.toml say, without needing cargo-deny installed). Exits 1 naming each
crate that depends directly on a library its layer must not use."""

import json
import subprocess
import sys

# library -> workspace crates allowed to depend on it directly.
ALLOWED = {
    "sqlx": {"corral-store"},
    "nix": {"corral-runtime", "corral-agent"},
    # The binary uses a few open(2) flag constants (host lock files).
    "libc": {"corral-runtime", "corral-agent", "corral"},
    "axum": {"corral-api", "corral-agent", "corral", "corral-s3"},
}
# Workspace crates a crate must not depend on (the layering of docs/ARCHITECTURE.md).
# corral-agent-proto is the server <-> agent contract: the agent and the API (and only they)
# use it, and it depends on corral-core alone.
LAYERS = {
    "corral-core": {"corral-store", "corral-runtime", "corral-api", "corral-agent",
                    "corral-agent-proto"},
    "corral-store": {"corral-runtime", "corral-api", "corral-agent", "corral-agent-proto"},
    "corral-runtime": {"corral-store", "corral-api", "corral-agent", "corral-agent-proto"},
    "corral-agent": {"corral-store", "corral-runtime", "corral-api"},
    "corral-api": {"corral-store", "corral-runtime", "corral-agent"},
    "corral-agent-proto": {"corral-store", "corral-runtime", "corral-api", "corral-agent",
                           "corral-dockerfile", "corral-s3"},
    # Leaves: no workspace crate at all.
    "corral-dockerfile": {"corral-core", "corral-store", "corral-runtime", "corral-api",
                          "corral-agent", "corral-agent-proto", "corral-s3"},
    "corral-s3": {"corral-core", "corral-store", "corral-runtime", "corral-api",
                  "corral-agent", "corral-agent-proto", "corral-dockerfile"},
}

meta = json.loads(subprocess.check_output(
    ["cargo", "metadata", "--no-deps", "--format-version", "1"], text=True))
errors = []
for pkg in meta["packages"]:
    name = pkg["name"]
    for dep in pkg["dependencies"]:
        if dep.get("kind") in ("dev", "build"):
            continue
        allowed = ALLOWED.get(dep["name"])
        if allowed is not None and name not in allowed:
            errors.append(f"{name} depends on {dep['name']} (only {', '.join(sorted(allowed))} may)")
        if dep["name"] in LAYERS.get(name, set()):
            errors.append(f"{name} depends on {dep['name']}, a crate of another layer")
for e in errors:
    print(f"check-deps: {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
