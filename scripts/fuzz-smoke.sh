#!/usr/bin/env bash
# Runs each cargo-fuzz target for SECONDS (default 60) from its committed seed corpus
# and fails on the first crash, hang (an input over 30 s) or broken invariant:
#   framer  qga-framing/fuzz  the framer alone, any chunking
#   agent   qga-agent/fuzz    framer -> dispatcher over fake ops, 0xFF resync
#   client  qga-client/fuzz   the client against a hostile scripted agent
# New inputs libFuzzer finds go to target/fuzz-corpus/TARGET (kept between runs,
# never committed); a crashing input is saved under the target's fuzz/artifacts/.
# cargo-fuzz needs nightly flags; on a stable toolchain RUSTC_BOOTSTRAP=1 allows them.
# Usage: scripts/fuzz-smoke.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(framer agent client)

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

for target in "${targets[@]}"; do
    case $target in
        framer) dir=qga-framing/fuzz max_len=16384 extra=() ;;
        agent) dir=qga-agent/fuzz max_len=16384 extra=(-dict=agent.dict) ;;
        client) dir=qga-client/fuzz max_len=4096 extra=() ;;
        *) echo "fuzz-smoke: unknown target $target" >&2; exit 2 ;;
    esac
    # The fuzz crates are outside the workspace, so `cargo fmt --all` skips them.
    cargo fmt --manifest-path "$dir/Cargo.toml" -- --check
    corpus=$root/target/fuzz-corpus/$target
    mkdir -p "$corpus"
    echo "fuzz-smoke: $target for ${seconds}s ($dir/seeds/$target)"
    start=$(date +%s)
    # One target dir for the three crates: they share most dependencies. The
    # progress lines (one per new input) are left out of the log.
    if ! (cd "$dir" && cargo fuzz run "$target" --target-dir "$root/target/fuzz" \
        "$corpus" "seeds/$target" -- \
        -max_total_time="$seconds" -max_len="$max_len" -timeout=30 \
        -print_final_stats=1 "${extra[@]}" 2>&1) \
        | { grep -E -v '^"|^#[0-9]+.*(NEW|REDUCE|pulse)|^\s+NEW_FUNC' || true; }; then
        echo "fuzz-smoke: $target FAILED (the input is saved under $dir/artifacts/$target/)" >&2
        exit 1
    fi
    echo "fuzz-smoke: $target passed in $(( $(date +%s) - start ))s"
done
