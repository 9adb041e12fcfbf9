#!/usr/bin/env bash
# Benchmarks ours against awslabs' Python git-remote-s3 0.4.2 on local S3 servers (s3s-fs, and
# moto for the small scenarios) and writes bench/RESULTS.md. Takes a while: it builds release
# binaries and moves several GiB. BENCH_RUNS sets the runs per scenario (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
cargo bench -p git-s3-tests --bench compare
