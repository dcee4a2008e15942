#!/usr/bin/env bash
# Builds the end-to-end test guest: a Debian kernel (downloaded with apt-get
# download into CACHE, unpacked, not installed) and an initramfs holding busybox,
# the kernel modules the guest needs, our agent and the reference agent with their
# shared libraries.
# Usage: build-initramfs.sh CACHE OUR_AGENT OUT [EXTRA...]   -> OUT/vmlinuz, OUT/initrd.gz
# Each EXTRA program goes to the guest's /usr/bin under its own name.
set -euo pipefail
cache=$1 ours=$2 out=$3
shift 3
extras=("$@")
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$cache" "$out"

# 1. The kernel, cached between runs.
if ! ls "$cache"/kernel/boot/vmlinuz-* >/dev/null 2>&1; then
    pick() { apt-cache search --names-only '^linux-image-[0-9.]+-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -n 1; }
    pkg=$(pick || true)
    if [ -z "$pkg" ]; then apt-get update -qq; pkg=$(pick); fi
    echo "vm: fetching kernel package $pkg" >&2
    rm -rf "$cache/dl" "$cache/kernel"
    mkdir -p "$cache/dl"
    (cd "$cache/dl" && { apt-get download "$pkg" >/dev/null 2>&1 || { apt-get update -qq && apt-get download "$pkg"; }; })
    dpkg-deb -x "$cache"/dl/*.deb "$cache/kernel.tmp"
    kver=$(ls "$cache/kernel.tmp/lib/modules")
    depmod -b "$cache/kernel.tmp" "$kver"
    mv "$cache/kernel.tmp" "$cache/kernel"
    rm -rf "$cache/dl"
fi
kroot="$cache/kernel"
kver=$(ls "$kroot/lib/modules")
cp "$kroot/boot/vmlinuz-$kver" "$out/vmlinuz"

# 2. The initramfs tree.
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,mnt/data,lib/modules}
cp /bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
install -m 755 "$here/init.sh" "$root/init"
for p in poweroff halt reboot shutdown; do install -m 755 "$here/power.sh" "$root/sbin/$p"; done
install -m 755 "$ours" "$root/usr/sbin/qga-agent"
# A test build carries ~20 MB of debug info the guest never uses: without it the
# initramfs is half the size, and loads and unpacks faster under TCG.
for x in "${extras[@]}"; do install -m 755 "$x" "$root/usr/bin/$(basename "$x")"; done
if command -v strip >/dev/null; then
    strip --strip-debug "$root/usr/sbin/qga-agent"
    for x in "${extras[@]}"; do strip --strip-debug "$root/usr/bin/$(basename "$x")"; done
fi
install -m 755 /usr/sbin/qemu-ga "$root/usr/sbin/qemu-ga"
# qga-ops' storage fixture capture (it runs under busybox sh): tests/tests/vm.rs'
# capture_storage_fixture regenerates qga-ops/tests/fixtures/storage/scsi-nvme-vm.
mkdir -p "$root/usr/share/qga"
install -m 644 "$here/../../qga-ops/tests/fixtures/storage/capture.sh" "$root/usr/share/qga/storage-capture.sh"
# Shared libraries of both agents and the extras, and the ELF interpreter.
for bin in "$ours" /usr/sbin/qemu-ga "${extras[@]}"; do
    ldd "$bin" | grep -o '/[^ ]*' | while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
done
# Modules in load order: each module's dependencies (modules.dep lists them last
# to first), then the module.
# The vsock ones serve qga_method=vsock (tests/tests/vsock.rs); without a vsock device
# they load and stay idle. So do the disk drivers other than virtio_blk: virtio_scsi
# and sd_mod (scsi_mod comes as their dependency), nvme (and nvme-core) for the
# SCSI and NVMe disks of tests/tests/vm.rs. crct10dif_generic and
# crc64_rocksoft_generic are the crypto algorithms behind sd_mod's and nvme-core's
# t10-pi (modules.softdep lists them, modules.dep does not).
want="virtio_pci virtio_console virtio_blk virtio_net crc32c_generic ext4 vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport"
want="$want crct10dif_generic crc64_rocksoft_generic virtio_scsi sd_mod nvme"
order=()
add() {
    local m=$1 line deps path
    line=$(grep -E "(^|/)$m\.ko(\.[a-z]+)?:" "$kroot/lib/modules/$kver/modules.dep")
    path=${line%%:*}
    deps=${line#*:}
    local rev=()
    for d in $deps; do rev=("$d" "${rev[@]}"); done
    for d in "${rev[@]}"; do
        local name; name=$(basename "$d"); name=${name%%.ko*}
        add "$name"
    done
    for o in "${order[@]}"; do [ "$o" = "$path" ] && return 0; done
    order+=("$path")
}
for m in $want; do add "$m"; done
: > "$root/etc/modules.load"
for path in "${order[@]}"; do
    name=$(basename "$path"); name=${name%%.ko*}.ko
    src="$kroot/lib/modules/$kver/$path"
    case "$path" in
        *.xz) xz -dc "$src" > "$root/lib/modules/$name" ;;
        *.zst) zstd -qdc "$src" > "$root/lib/modules/$name" ;;
        *) cp "$src" "$root/lib/modules/$name" ;;
    esac
    echo "$name" >> "$root/etc/modules.load"
done
# 3. What the guest tells about itself through the agent (libvirt's guestinfo,
# domhostname, domtime read these): os-release, hostname, time zone, a logged-in user.
cat > "$root/etc/os-release" <<'OS'
NAME="qga-rs Test Guest"
ID=qgatest
VERSION="1.0 (busybox)"
VERSION_ID=1.0
PRETTY_NAME="qga-rs Test Guest 1.0"
OS
echo qga-guest > "$root/etc/hostname"
# Asia/Tokyo: a fixed offset (+09:00, "JST") all year, so the test can assert it. Laid
# out as Debian does (GLib, hence qemu-ga, wants /etc/localtime to be a symlink into
# the zoneinfo tree or /etc/timezone to name the zone, and falls back to UTC).
if [ -e /usr/share/zoneinfo/Asia/Tokyo ]; then
    mkdir -p "$root/usr/share/zoneinfo/Asia"
    cp /usr/share/zoneinfo/Asia/Tokyo "$root/usr/share/zoneinfo/Asia/Tokyo"
    ln -s ../usr/share/zoneinfo/Asia/Tokyo "$root/etc/localtime"
    echo Asia/Tokyo > "$root/etc/timezone"
else
    echo "vm: /usr/share/zoneinfo/Asia/Tokyo missing (Debian package tzdata); guest has no time zone" >&2
fi
# /var/run/utmp with one USER_PROCESS record (glibc x86_64 struct utmp, 384 bytes):
# user "qgauser" on tty1 from "10.0.2.2", logged in at 1700000000.5.
mkdir -p "$root/var"
ln -s ../run "$root/var/run"
le32() { local v=$1; printf '\\x%02x\\x%02x\\x%02x\\x%02x' $((v & 255)) $((v >> 8 & 255)) $((v >> 16 & 255)) $((v >> 24 & 255)); }
str() { printf '%s' "$1"; head -c $(($2 - ${#1})) /dev/zero; }
{
    printf '\x07\x00\x00\x00'                  # ut_type USER_PROCESS, padding
    printf "$(le32 4242)"                       # ut_pid
    str tty1 32                                 # ut_line
    str 1 4                                     # ut_id
    str qgauser 32                              # ut_user
    str 10.0.2.2 256                            # ut_host
    head -c 8 /dev/zero                         # ut_exit, ut_session
    printf "$(le32 1700000000)$(le32 500000)"   # ut_tv
    head -c 36 /dev/zero                        # ut_addr_v6, reserved
} > "$root/run/utmp"
[ "$(stat -c %s "$root/run/utmp")" = 384 ] || { echo "vm: utmp record is not 384 bytes" >&2; exit 1; }
(cd "$root" && find . | cpio -o -H newc -R 0:0 --quiet | gzip -1) > "$out/initrd.gz"
echo "vm: kernel $kver, initramfs $(du -h "$out/initrd.gz" | cut -f1)" >&2
