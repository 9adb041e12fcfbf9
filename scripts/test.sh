#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need (skipping what is there), then
# unit and integration tests against local S3 servers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh git-lfs moto python-tool s3s-fs   # the benchmarks also need the fork
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
