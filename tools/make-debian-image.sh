#!/bin/sh
# Builds a real Debian bookworm image with real tools and prints the path of
# its OCI image layout (tag "bookworm"). Cached: a second run prints the path
# at once. Needs root, debootstrap, umoci and Debian's mirror.
#
#   layer 1: debootstrap --variant=minbase bookworm
#   layer 2: umoci repack after deleting /usr/share/doc and adding /etc/motd
#
# DRIVERS_IMAGE_CACHE overrides the cache directory.
set -eu
cache=${DRIVERS_IMAGE_CACHE:-/var/cache/drivers-images}
layout=$cache/debian-bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ -f "$layout/.complete" ]; then
    echo "$layout"
    exit 0
fi

work=$(mktemp -d "$cache.work.XXXXXX" 2>/dev/null || { mkdir -p "$cache" && mktemp -d "$cache/work.XXXXXX"; })
trap 'rm -rf "$work"' EXIT
mkdir -p "$cache"
rm -rf "$layout"

umoci init --layout "$work/oci" >&2
umoci new --image "$work/oci:bookworm" >&2
umoci unpack --image "$work/oci:bookworm" "$work/bundle" >&2
debootstrap --variant=minbase bookworm "$work/bundle/rootfs" "$mirror" >&2
umoci repack --image "$work/oci:bookworm" "$work/bundle" >&2
rm -rf "$work/bundle"

umoci unpack --image "$work/oci:bookworm" "$work/bundle" >&2
rm -rf "$work/bundle/rootfs/usr/share/doc"
echo "built by drivers/tools/make-debian-image.sh" > "$work/bundle/rootfs/etc/motd"
umoci repack --image "$work/oci:bookworm" "$work/bundle" >&2
umoci config --image "$work/oci:bookworm" --config.cmd /bin/bash >&2
umoci gc --layout "$work/oci" >&2

mv "$work/oci" "$layout"
touch "$layout/.complete"
echo "$layout"
