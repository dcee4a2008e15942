#!/bin/busybox sh
# /init of the end-to-end test guest: pseudo filesystems, modules, the agent port,
# hostname, network, the data disk, then the agent chosen on the kernel command line
# (qga=ours | qga=ref), restarted if it exits. It listens on the virtio-serial port,
# or with qga_method=vsock on AF_VSOCK at qga_vsock=CID:PORT (default 3:1234); with
# qga_probe=..., qga-vsock-probe runs too.
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /run /tmp /mnt/data /dev/virtio-ports
agent=ours method=virtio-serial vsock=3:1234 probe=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        qga=*) agent=${arg#qga=} ;;
        qga_method=*) method=${arg#qga_method=} ;;
        qga_vsock=*) vsock=${arg#qga_vsock=} ;;
        qga_probe=*) probe=${arg#qga_probe=} ;;
    esac
done
for m in $(cat /etc/modules.load); do
    insmod "/lib/modules/$m" || echo "init: insmod $m failed"
done
# Wait for the agent port (virtio_console probes asynchronously); a vsock guest may
# have no port at all.
[ "$method" = vsock ] || for i in $(seq 1 50); do
    [ -e /sys/class/virtio-ports ] && [ -n "$(ls /sys/class/virtio-ports 2>/dev/null)" ] && break
    sleep 0.1
done
for p in /sys/class/virtio-ports/*; do
    name=$(cat "$p/name" 2>/dev/null)
    [ -n "$name" ] && [ ! -e "/dev/virtio-ports/$name" ] && ln -s "/dev/$(basename "$p")" "/dev/virtio-ports/$name"
done
hostname -F /etc/hostname
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0
mount -t ext4 -o discard /dev/vda /mnt/data || echo "init: mounting /mnt/data failed"
# qga_disks=DEV:DIR[,DEV:DIR...]: more ext4 disks (tests/tests/vm.rs: a virtio-scsi and
# an NVMe one), each mounted on DIR once its node appears (SCSI scans and NVMe
# controllers probe asynchronously).
for arg in $(cat /proc/cmdline); do
    case "$arg" in qga_disks=*)
        for pair in $(echo "${arg#qga_disks=}" | tr , ' '); do
            dev=/dev/${pair%%:*} dir=${pair#*:}
            for i in $(seq 1 100); do [ -b "$dev" ] && break; sleep 0.1; done
            mkdir -p "$dir"
            mount -t ext4 -o discard "$dev" "$dir" && echo "init: $dev on $dir" \
                || echo "init: mounting $dev on $dir failed"
        done ;;
    esac
done
# Modern commands part 2: a user with a home (guest-ssh-*-authorized-keys), a
# chpasswd that records what it is given (guest-set-user-password), the RTC kept in
# UTC (guest-set-time runs hwclock), and, with qga_rtc_skew=SECONDS on the command
# line, an RTC that far off the system clock (guest-set-time without a time reads it).
echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd
echo 'qgauser:x:1000:1000:QGA test user:/home/qgauser:/bin/sh' >> /etc/passwd
printf 'root:x:0:\nqgauser:x:1000:\n' > /etc/group
mkdir -p /root /home/qgauser && chown 1000:1000 /home/qgauser && chmod 755 /home/qgauser
cat > /usr/sbin/chpasswd <<'SHIM'
#!/bin/sh
# Records each call: "chpasswd ARGS", then its stdin, then an empty line.
{ echo "chpasswd $*"; cat; echo; } >> /tmp/chpasswd.log
SHIM
chmod 755 /usr/sbin/chpasswd
printf '0.0 0 0\n0\nUTC\n' > /etc/adjtime
for arg in $(cat /proc/cmdline); do
    case "$arg" in qga_rtc_skew=*)
        skew=${arg#*=}
        date -s "@$(($(date +%s) + skew))" >/dev/null && hwclock -w -u
        date -s "@$(($(date +%s) - skew))" >/dev/null
        echo "init: RTC set ${arg#*=} s off the system clock" ;;
    esac
done
channel="-m virtio-serial"
if [ "$method" = vsock ]; then
    channel="-m vsock-listen -p $vsock"
    # The virtio vsock device probes asynchronously, and binding to the guest's CID
    # fails until it has (the loop below would restart the agent, a second later).
    for i in $(seq 1 50); do
        ls /sys/bus/virtio/drivers/vmw_vsock_virtio_transport 2>/dev/null | grep -q '^virtio' && break
        sleep 0.1
    done
fi
# qga_probe=CID:PORT[,CID:PORT]: qga-client's AF_VSOCK transport from the guest to an
# agent on the host (tests/tests/vsock.rs reads the result on the console).
if [ -n "$probe" ]; then
    qga-vsock-probe $(echo "$probe" | tr , ' ') &
fi
echo "init: starting agent '$agent' ($channel)"
while true; do
    if [ "$agent" = ref ]; then
        /usr/sbin/qemu-ga $channel -t /run
    else
        /usr/sbin/qga-agent $channel -t /run
    fi
    echo "init: agent exited with $?"
    sleep 1
done
