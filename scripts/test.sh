#!/usr/bin/env bash
# The project's whole test command: formatting, lints, tests (including the SDK conformance
# test, which needs CMA_SDK_PYTHON or the default venv, see README.md) and docs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo test --workspace --all-features
# Each library crate with its default features and with none (the sets users build).
bash scripts/feature-sets.sh
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features
