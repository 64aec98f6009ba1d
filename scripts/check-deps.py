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
    # The control plane: over the core's ports only, and no HTTP (axum is not allowed above).
    "corral-engine": {"corral-store", "corral-runtime", "corral-api", "corral-agent",
                      "corral-testing"},
    "corral-agent-proto": {"corral-store", "corral-runtime", "corral-api", "corral-agent",
                           "corral-dockerfile", "corral-s3", "corral-engine"},
    # Leaves: no workspace crate at all.
    "corral-dockerfile": {"corral-core", "corral-store", "corral-runtime", "corral-api",
                          "corral-agent", "corral-agent-proto", "corral-s3"},
    "corral-s3": {"corral-core", "corral-store", "corral-runtime", "corral-api",
                  "corral-agent", "corral-agent-proto", "corral-dockerfile"},
    # The SSH gateway: tokens are the engine's decision (through a trait the binary
    # implements), sessions go through agent-proto's client.
    "corral-ssh": {"corral-store", "corral-runtime", "corral-api", "corral-agent",
                   "corral-engine", "corral-dockerfile", "corral-s3"},
    # Test seams: in-memory fakes, no kernel features (the store only as a dev-dependency,
    # for the conformance test).
    "corral-testing": {"corral-store", "corral-runtime", "corral-agent"},
}
# corral-testing is for tests only: no crate may depend on it except as a dev-dependency.
for _crate in list(LAYERS) + ["corral"]:
    if _crate != "corral-testing":
        LAYERS.setdefault(_crate, set()).add("corral-testing")

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
# The edge writes no sandbox, snapshot or volume record and drives no lifecycle step of the
# runtime: every change goes through the engine's operations.
import pathlib
import re
WRITES = re.compile(
    r"\.store\s*\.\s*(update|insert|remove)\s*\(|SandboxState::\w+\s*;"
    r"|\.(update|insert|remove)_(snapshot|volume)\s*\("
    r"|\.runtime\s*\.\s*(start|stop|destroy|archive|fork|snapshot|resize|set_egress|create_volume|delete_volume)\s*\(")
api = pathlib.Path(__file__).resolve().parent.parent / "crates" / "corral-api" / "src"
for path in sorted(api.rglob("*.rs")):
    text = path.read_text()
    # Unit tests may build records of their own (e.g. the events gateway's fake store).
    code = text.split("#[cfg(test)]", 1)[0]
    for n, line in enumerate(code.splitlines(), 1):
        if WRITES.search(line):
            errors.append(f"{path.relative_to(api.parent.parent.parent)}:{n} changes a record or a sandbox; "
                          "do it in corral-engine")

def module_cycles(src):
    """Loops among a crate's top-level modules (`crate::a` used in b and `crate::b` in a, or
    longer), from `crate::<module>` paths outside comments and unit tests."""
    uses = {}
    for path in sorted(src.glob("*.rs")):
        if path.stem in ("lib", "main"):
            continue
        files = [path] + (sorted((src / path.stem).rglob("*.rs")) if (src / path.stem).is_dir() else [])
        text = "\n".join(
            line for f in files for line in f.read_text().split("#[cfg(test)]", 1)[0].splitlines()
            if not line.strip().startswith("//"))
        uses[path.stem] = {m for m in re.findall(r"crate::([a-z_][a-z0-9_]*)", text) if m != path.stem}
    for mod in uses:
        uses[mod] &= set(uses)
    # Tarjan's strongly connected components.
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(uses[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in sorted(uses):
        if v not in index:
            visit(v)
    return out


crates = pathlib.Path(__file__).resolve().parent.parent / "crates"
for src in sorted(crates.glob("*/src")):
    for comp in module_cycles(src):
        errors.append(f"{src.parent.name}: modules {', '.join(comp)} import each other in a loop")

for e in errors:
    print(f"check-deps: {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
