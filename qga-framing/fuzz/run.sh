#!/usr/bin/env bash
# Fuzzes the framer for SECONDS (default 120) from its seeds (seeds/framer). The
# three fuzz targets share one script: scripts/fuzz-smoke.sh.
# Usage: qga-framing/fuzz/run.sh [SECONDS]
set -euo pipefail
exec "$(dirname "$0")/../../scripts/fuzz-smoke.sh" "${1:-120}" framer
