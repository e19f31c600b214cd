#!/usr/bin/env bash
# The project's test command (README, .ci/run): host setup, every cargo test (wire codec,
# state machine, config, ETSI 014 client and simulator, FFI harness, ABI layout check against
# strongSwan 6.1.0 headers), a short run of each fuzz target on its corpus, then every docker
# interop scenario with real charons.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

scripts/setup-host.sh packages
scripts/check-doc-links.sh
cargo test --workspace --release
FUZZ_SECONDS=${FUZZ_SECONDS:-10} fuzz/smoke.sh
tests/interop/run.sh --strict "$@"
