#!/bin/sh
# Stands in for poweroff/halt/reboot/shutdown in the test guest: busybox has no
# `shutdown`, and its poweroff only signals an init we do not run, so every power
# request goes straight to the kernel (-f). qemu-ga 7.2 calls
# `shutdown -h -P|-H|-r +0 "message"`; current agents call poweroff/halt/reboot.
sync
case "$(basename "$0")" in
    reboot) exec busybox reboot -f ;;
    halt) exec busybox halt -f ;;
    poweroff) exec busybox poweroff -f ;;
esac
for a in "$@"; do
    case "$a" in
        -r) exec busybox reboot -f ;;
        -H) exec busybox halt -f ;;
    esac
done
exec busybox poweroff -f
