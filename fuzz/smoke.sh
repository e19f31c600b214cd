#!/usr/bin/env bash
# Builds the fuzz targets (libFuzzer through libfuzzer-sys, stable toolchain, no sanitizer
# runtime: Rust code is memory-safe, the targets look for panics, overflows and hangs) and
# runs each one briefly on the committed corpus. Exits non-zero on a crash, timeout or OOM.
#
#   fuzz/smoke.sh                 build, then run every target for $FUZZ_SECONDS (20) seconds
#   fuzz/smoke.sh --build-only    only build (binaries in fuzz/target/$TARGET/release/)
#
# Long runs: see FUZZING.md.
set -euo pipefail
cd "$(dirname "$0")"
. ../scripts/lib.sh

TARGETS=(wire_decode kme_json config_parse)
SECONDS_PER_TARGET=${FUZZ_SECONDS:-20}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')

# What cargo-fuzz passes for `--sanitizer none`; all are stable rustc flags. With an explicit
# --target these RUSTFLAGS reach only target code, not build scripts or proc macros.
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks"

cargo build --release --target "$TRIPLE" --bins -j "${FUZZ_BUILD_JOBS:-2}"
[ "${1:-}" = "--build-only" ] && exit 0

status=0
for target in "${TARGETS[@]}"; do
    corpus=corpus/$target
    mkdir -p "$corpus" artifacts/$target
    # A scratch copy: the smoke run must not grow the committed corpus.
    scratch=$(mktemp -d)
    cp -r "$corpus"/. "$scratch"/ 2>/dev/null || true
    echo "== $target: ${SECONDS_PER_TARGET}s"
    if ! "target/$TRIPLE/release/$target" -max_total_time="$SECONDS_PER_TARGET" \
        -timeout=5 -rss_limit_mb=1024 -print_final_stats=1 \
        -artifact_prefix="artifacts/$target/" "$scratch" 2>"$scratch.log"; then
        tail -n 40 "$scratch.log"
        echo "== $target: FAILED (reproducer in fuzz/artifacts/$target/)"
        status=1
    else
        grep -E '^stat::number_of_executed_units|^stat::average_exec_per_sec' "$scratch.log" || true
    fi
    rm -rf "$scratch" "$scratch.log"
done
exit $status
