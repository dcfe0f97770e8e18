#!/usr/bin/env bash
# The project's whole test command: formatting, the SDK test vectors' check, lints, tests
# (including the SDK conformance test, which needs CMA_SDK_PYTHON or the default venv, see
# README.md) and docs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The adversarial suites (cma-tools/tests/adversarial_*.rs) run each in a child process limited
# to this much address space (RLIMIT_AS, with MALLOC_ARENA_MAX=2): a hostile input that makes
# the process try to allocate past it aborts the child and fails the run.
export CMA_ADVERSARIAL_AS_BYTES=$((3 << 30))

cargo fmt --all --check
# The committed SDK test vectors are exactly what the SDK produces. Runs whenever CMA_SDK_PYTHON
# is set, which .ci/run always does (so CI always checks); skipped, with a notice, otherwise.
if [ -n "${CMA_SDK_PYTHON:-}" ]; then
    bash scripts/vectors/check.sh
else
    echo "vectors: CMA_SDK_PYTHON is not set; skipping scripts/vectors/check.sh" >&2
fi
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo test --workspace --all-features
# Each library crate with its default features and with none (the sets users build).
bash scripts/feature-sets.sh
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features

# A short run of every fuzz target in fuzz/ (its own workspace, built with nightly and
# cargo-fuzz, which scripts/fuzz.sh installs when missing); fails on any crash, hang or
# out-of-memory, and replays every saved regression input first. CMA_FUZZ_SECONDS sets the
# seconds per target (default 15; 0 skips the step; `scripts/fuzz.sh 600` is a long run).
# The targets build with 16 codegen units here (a faster build on two cores than
# cargo-fuzz's default of 1); CMA_FUZZ_CODEGEN_UNITS overrides it.
FUZZ_SECONDS="${CMA_FUZZ_SECONDS:-15}"
if [ "$FUZZ_SECONDS" != 0 ]; then
    CMA_FUZZ_CODEGEN_UNITS="${CMA_FUZZ_CODEGEN_UNITS:-16}" bash scripts/fuzz.sh "$FUZZ_SECONDS"
fi
