#!/usr/bin/env bash
# The whole test suite: format, lints, unit and integration tests, then the end-to-end
# suite with the real Daytona SDK against a real `corral serve` (needs root, like the server).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
python3 scripts/check-deps.py
# Tests that need root are `#[ignore = "needs root ..."]`, so a plain `cargo test` passes as
# any user; as root (as CI runs) they run too. The two `#[ignore]`d measurements are figures,
# not checks: they stay for running by hand.
if [ "$(id -u)" = 0 ]; then
    cargo test --workspace -- --include-ignored \
        --skip agent_log::tests::idle_copiers --skip benchmark_print_one
else
    cargo test --workspace
fi
cargo build --release

venv="${CORRAL_VENV:-.venv}"
if ! "$venv/bin/python" -c 'import daytona, pytest' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
fi
# The TypeScript SDK for tests/e2e/test_typescript_sdk.py (pinned by tests/ts/package-lock.json).
if command -v npm >/dev/null && [ ! -d tests/ts/node_modules/@daytonaio/sdk ]; then
    npm ci --prefix tests/ts --silent --no-audit --no-fund
fi
# The older SDKs integrations pin, for tests/e2e/test_older_sdks.py: the Python SDK 0.194
# (daytona-adk) in a venv of its own, the TypeScript SDK 0.143 (@mastra/daytona,
# @langchain/daytona) pinned by tests/ts-0143/package-lock.json.
venv0194="${CORRAL_VENV_0194:-.venv-0194}"
if ! "$venv0194/bin/python" -c 'import daytona' 2>/dev/null; then
    python3 -m venv "$venv0194"
    "$venv0194/bin/pip" install --quiet --disable-pip-version-check -r tests/py-0194/requirements.txt
fi
if command -v npm >/dev/null && [ ! -d tests/ts-0143/node_modules/@daytonaio/sdk ]; then
    npm ci --prefix tests/ts-0143 --silent --no-audit --no-fund
fi
CORRAL_VENV_0194="$venv0194" CORRAL_BIN="$PWD/target/release/corral" "$venv/bin/python" -m pytest tests/e2e -q "$@"
