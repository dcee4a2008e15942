#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs the Debian packages the
# tests use (the reference agent, QEMU, busybox, e2fsprogs, libvirt) and vhost-device-vsock,
# then runs every test.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests need. Each one is checked first, so a machine that has them
# all does not touch the network.
packages=(
    qemu-guest-agent   # /usr/sbin/qemu-ga: the reference agent for differential tests
    qemu-system-x86    # boots the end-to-end guest
    busybox-static     # the guest's userland
    e2fsprogs          # mkfs.ext4 for loop-mounted and guest images
    util-linux         # losetup, mount
    cpio               # packs the guest's initramfs
    kmod               # modprobe/depmod data for the guest kernel
    tzdata             # the guest's time zone (Asia/Tokyo)
    # libvirt for tests/tests/libvirt.rs, which starts its own libvirtd (no systemd
    # needed: not libvirt-daemon-system, which pulls it in)
    libvirt-daemon
    libvirt-daemon-driver-qemu
    libvirt-clients
    dpkg-dev           # dpkg-shlibdeps: cargo-deb's $auto Depends (tests/tests/deb.rs)
    systemd            # systemd-analyze verify of the packaged unit (not run as init)
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "test.sh: installing Debian packages: ${missing[*]}"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# libvirt's QEMU driver does not load without the user it was built to run QEMU as,
# even when its qemu.conf says root (as the libvirt test's does). Debian's
# libvirt-daemon-system would create it; we create the same system account.
if ! getent passwd libvirt-qemu >/dev/null; then
    echo "test.sh: creating the system user libvirt-qemu (libvirt's QEMU driver needs it)"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" useradd --system --user-group --no-create-home --home-dir /var/lib/libvirt \
        --shell /usr/sbin/nologin libvirt-qemu
fi

# rust-vmm's vhost-device-vsock: a user-space (vhost-user) vsock device for the guest of
# tests/tests/vsock.rs, as the host kernel may have no /dev/vhost-vsock. Built from
# crates.io once (a few minutes, pure Rust: no Debian package needed), then kept.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if ! command -v vhost-device-vsock >/dev/null 2>&1; then
    echo "test.sh: installing vhost-device-vsock 0.3.0 (cargo install)"
    cargo install vhost-device-vsock --version 0.3.0 --locked --quiet
fi

# cargo-deb builds the agent's .deb in tests/tests/deb.rs. Pinned: its output is
# what the test checks.
cargo_deb_version=3.8.0
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $cargo_deb_version" ]; then
    echo "test.sh: installing cargo-deb $cargo_deb_version"
    cargo install cargo-deb --version "$cargo_deb_version" --locked
fi

# The packages above are installed, so tests that use them must run, not skip.
export QGA_REQUIRE_REFERENCE=1
# CI runs as root: the loop-mounted fsfreeze/fstrim tests must run there too.
if [ -n "${CI:-}" ]; then
    export QGA_REQUIRE_ROOT_TESTS=1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --doc 2>&1 | tee "$log"
cargo test --workspace --all-targets "$@" 2>&1 | tee -a "$log"

# Fuzz smoke: each cargo-fuzz target (framer, agent, client) for QGA_FUZZ_SECONDS
# (default 60; 0 skips) from its committed seeds; a crash, hang or broken invariant
# fails the run. Installs cargo-fuzz (--locked) if missing; see scripts/fuzz-smoke.sh.
fuzz_seconds=${QGA_FUZZ_SECONDS:-60}
if [ "$fuzz_seconds" -gt 0 ]; then
    scripts/fuzz-smoke.sh "$fuzz_seconds"
fi

# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
