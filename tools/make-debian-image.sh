#!/bin/sh
# Builds a real Debian bookworm image with real tools and prints the path of
# its OCI image layout (tag "bookworm"). Cached: a second run prints the path
# at once. Needs root, debootstrap, umoci and Debian's mirror.
#
#   layer 1: debootstrap --variant=minbase bookworm
#   layer 2: apt-get install (in a chroot) of a few packages: adds files
#   layer 3: deletes files (apt lists, man pages) and a directory
#            (/usr/share/doc), adds /etc/motd: whiteouts on import
#
# `drivers bench` imports this image (workload 1), and so do the peers of
# bench/peers.sh: the same three gzip layers for every engine.
#
# DRIVERS_IMAGE_CACHE overrides the cache directory.
set -eu
cache=${DRIVERS_IMAGE_CACHE:-/var/cache/drivers-images}
layout=$cache/debian-bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Bumped whenever the layers change, so an older cache is rebuilt.
version="3-layers-v1"

if [ -f "$layout/.complete" ] && [ "$(cat "$layout/.complete")" = "$version" ]; then
    echo "$layout"
    exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/work.XXXXXX")
cleanup() {
    # A chroot step interrupted half-way may leave /proc mounted there.
    umount "$work/bundle/rootfs/proc" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

umoci init --layout "$work/oci" >&2
umoci new --image "$work/oci:bookworm" >&2
umoci unpack --image "$work/oci:bookworm" "$work/bundle" >&2
debootstrap --variant=minbase bookworm "$work/bundle/rootfs" "$mirror" >&2
# debootstrap keeps the .debs it installed; no image ships them.
rm -f "$work/bundle/rootfs/var/cache/apt/archives/"*.deb
umoci repack --image "$work/oci:bookworm" "$work/bundle" >&2
rm -rf "$work/bundle"

umoci unpack --image "$work/oci:bookworm" "$work/bundle" >&2
root=$work/bundle/rootfs
cp /etc/resolv.conf "$root/etc/resolv.conf"
mount -t proc proc "$root/proc"
chroot "$root" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends \
    ca-certificates less netbase procps xz-utils >&2
umount "$root/proc"
chroot "$root" apt-get clean >&2
umoci repack --image "$work/oci:bookworm" "$work/bundle" >&2
rm -rf "$work/bundle"

umoci unpack --image "$work/oci:bookworm" "$work/bundle" >&2
root=$work/bundle/rootfs
rm -rf "$root/usr/share/doc"
rm -rf "$root/var/lib/apt/lists/"*
find "$root/usr/share/man" -type f -delete
echo "built by drivers/tools/make-debian-image.sh" > "$root/etc/motd"
umoci repack --image "$work/oci:bookworm" "$work/bundle" >&2
umoci config --image "$work/oci:bookworm" --config.cmd /bin/bash >&2
umoci gc --layout "$work/oci" >&2

rm -rf "$layout"
mv "$work/oci" "$layout"
echo "$version" > "$layout/.complete"
echo "$layout"
