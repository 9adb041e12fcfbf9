#!/usr/bin/env bash
# Fuzzes every parser of outside input with cargo-fuzz (libFuzzer), FUZZ_SECONDS each
# (default 600), and records each target's run in fuzz/RESULTS.md (one row per target, replaced
# when the target runs again). Needs a nightly toolchain (falls back to RUSTC_BOOTSTRAP=1 on
# stable) and cargo-fuzz (installed here when missing). Usage: scripts/fuzz.sh [target ...]
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
if [ ! -f "$results" ]; then
    {
        echo "# Fuzzing results"
        echo
        echo "Written by scripts/fuzz.sh: each target starts from its committed seeds (fuzz/seeds/<target>)"
        echo "plus the corpus of earlier runs (fuzz/corpus/, not committed)."
        echo
        echo "| target | date | toolchain | seconds run | executions | coverage (edges) | corpus | result |"
        echo "|---|---|---|---:|---:|---:|---:|---|"
    } > "$results"
fi
status=0
mkdir -p artifacts
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    log="artifacts/$target.log"
    echo "fuzz: $target for ${seconds}s" >&2
    started=$(date +%s)
    if cargo "+$toolchain" fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        result="no crash"
    else
        result="**crash** (see fuzz/artifacts/$target)"
        status=1
    fi
    ran=$(( $(date +%s) - started ))
    execs=$(grep -oP 'stat::number_of_executed_units:\s*\K[0-9]+' "$log" | tail -1 || true)
    cov=$(grep -oP '#[0-9]+\s+(DONE|pulse|NEW|REDUCE).*?cov: \K[0-9]+' "$log" | tail -1 || true)
    corpus=$(find "corpus/$target" -type f | wc -l)
    row="| $target | $(date -u +%Y-%m-%d) | $(rustup run "$toolchain" rustc --version | cut -d' ' -f2) | $ran | ${execs:-?} | ${cov:-?} | $corpus | $result |"
    grep -v "^| $target |" "$results" > "$results.tmp" || true
    echo "$row" >> "$results.tmp"
    mv "$results.tmp" "$results"
done
cat "$results"
exit $status
