#!/usr/bin/env bash
# Runs one scenario file in its own process (run.sh starts it under `timeout`):
# helpers + defaults, then the scenario body with errexit. Exit 0 pass, 77 skip, else fail.
set -Eeuo pipefail
. "$QKD_INTEROP_DIR/lib/helpers.sh"
# shellcheck disable=SC1091
. "$QKD_INTEROP_DIR/conf/defaults.env"
trap 'rc=$?; printf "    FAIL: command failed (status %s) at %s:%s: %s\n" "$rc" "${BASH_SOURCE[0]#"$QKD_INTEROP_DIR/"}" "$LINENO" "$BASH_COMMAND" >&2' ERR
# shellcheck disable=SC1090
. "$1"
