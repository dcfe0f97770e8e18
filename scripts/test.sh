#!/usr/bin/env bash
# The project's whole test command: formatting, lints, tests (including the SDK conformance
# test, which needs CMA_SDK_PYTHON or the default venv, see README.md) and docs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo test --workspace --all-features
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features

# A short run of every fuzz target in fuzz/ (its own workspace, built with nightly and
# cargo-fuzz, which scripts/fuzz.sh installs when missing); fails on any crash, hang or
# out-of-memory, and replays every saved regression input first. CMA_FUZZ_SECONDS sets the
# seconds per target (0 skips the step).
FUZZ_SECONDS="${CMA_FUZZ_SECONDS:-15}"
if [ "$FUZZ_SECONDS" != 0 ]; then
    bash scripts/fuzz.sh "$FUZZ_SECONDS"
fi
