#!/usr/bin/env bash
# Builds and unit-tests each library crate with the feature sets its users build: its default
# features and `--no-default-features` (the main test run uses `--all-features`), so `cfg`
# branches a user hits are compiled and their unit tests run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CRATES=(cma-core cma-sandbox cma-egress cma-tools cma-store)
for crate in "${CRATES[@]}"; do
    for set in "" "--no-default-features"; do
        echo "features: $crate ${set:-(default)}"
        # shellcheck disable=SC2086
        cargo clippy -p "$crate" $set --all-targets --quiet -- -D warnings
        # shellcheck disable=SC2086
        cargo test -p "$crate" $set --lib --quiet
    done
done
