#!/usr/bin/env bash
# Fuzzes the framer for SECONDS (default 120). cargo-fuzz needs nightly flags; on a
# stable toolchain RUSTC_BOOTSTRAP=1 allows them.
# Usage: qga-framing/fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
mkdir -p corpus/framer
# Seeds: a request, a delimited reply, a dirty stream.
printf '\x07\x55{"execute":"guest-ping","id":1}' > corpus/framer/ping
printf '\x01\xaa\xff{"return":7}\n' > corpus/framer/sync
printf '\x03\x0f{"a":"}\\"\xff[[{}]] junk 42 ' > corpus/framer/dirty
printf '\x05\x33{"execute":"guest-ping\n"}\x80 ab\x01{"a":"x\\\t"}\n{}' > corpus/framer/stray
RUSTC_BOOTSTRAP=1 cargo fuzz run framer corpus/framer -- -max_total_time="${1:-120}" -max_len=16384
