#!/bin/busybox sh
# /init of the end-to-end test guest: pseudo filesystems, modules, the agent port,
# hostname, network, the data disk, then the agent chosen on the kernel command line
# (qga=ours | qga=ref), restarted if it exits.
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /run /tmp /mnt/data /dev/virtio-ports
for m in $(cat /etc/modules.load); do
    insmod "/lib/modules/$m" || echo "init: insmod $m failed"
done
# Wait for the agent port (virtio_console probes asynchronously).
for i in $(seq 1 50); do
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
agent=ours
for arg in $(cat /proc/cmdline); do
    case "$arg" in qga=*) agent=${arg#qga=} ;; esac
done
echo "init: starting agent '$agent'"
while true; do
    if [ "$agent" = ref ]; then
        /usr/sbin/qemu-ga -m virtio-serial -t /run
    else
        /usr/sbin/qga-agent -m virtio-serial -t /run
    fi
    echo "init: agent exited with $?"
    sleep 1
done
