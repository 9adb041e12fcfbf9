#!/usr/bin/env bash
# Fuzzes every parser of outside input with cargo-fuzz (libFuzzer), FUZZ_SECONDS each
# (default 600), and writes a table to fuzz/RESULTS.md. Needs a nightly toolchain and
# cargo-fuzz (installed here when missing). Usage: scripts/fuzz.sh [target ...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-600}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(helper_protocol lfs_protocol s3_url bundle_header grpc_requests)

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
toolchain=nightly
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz: no nightly toolchain; using the stable one with RUSTC_BOOTSTRAP=1" >&2
    toolchain=stable
    export RUSTC_BOOTSTRAP=1
fi

cd fuzz
cargo "+$toolchain" fuzz build -O
results=RESULTS.md
{
    echo "# Fuzzing results"
    echo
    echo "Written by scripts/fuzz.sh on $(date -u +%Y-%m-%d) ($(rustup run "$toolchain" rustc --version), $(nproc) cores)."
    echo "Each target starts from its committed seeds (fuzz/seeds/<target>) and runs ${seconds}s."
    echo
    echo "| target | seconds | executions | coverage (edges) | corpus | result |"
    echo "|---|---:|---:|---:|---:|---|"
} > "$results"
status=0
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    log="artifacts/$target.log"
    mkdir -p artifacts
    echo "fuzz: $target for ${seconds}s" >&2
    if cargo "+$toolchain" fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        result="no crash"
    else
        result="**crash** (see fuzz/artifacts/$target)"
        status=1
    fi
    execs=$(grep -oP 'stat::number_of_executed_units:\s*\K[0-9]+' "$log" | tail -1 || true)
    cov=$(grep -oP '#[0-9]+\s+(DONE|pulse|NEW|REDUCE).*?cov: \K[0-9]+' "$log" | tail -1 || true)
    corpus=$(find "corpus/$target" -type f | wc -l)
    echo "| $target | $seconds | ${execs:-?} | ${cov:-?} | $corpus | $result |" >> "$results"
done
cat "$results"
exit $status
