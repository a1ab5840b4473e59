#!/bin/bash
# drivers beside the engines people would pick instead, on the same machine,
# the same backing filesystems and the same image, in one run:
#
#   containerd + ctr, podman, docker (dockerd on a private data root with
#   --iptables=false --bridge=none), all from Debian; and drivers itself,
#   both in-process (`drivers bench`) and through its CLI like the peers.
#
# Workloads (issue 6): 1 import the 3-layer Debian image of
# tools/make-debian-image.sh; 2 create containers; 3 mount + unmount one;
# 4 commit 1,000 new files + 100 deletes; 5 first read of a bottom-layer
# file through chains of 1…500 layers; 6 remove everything, and the bytes
# the containers use on the backing filesystem. Every figure of an engine is
# a CLI call, start-up included; the median of REPS runs. Where an engine
# cannot do something the cell says so, with the engine's own error.
#
# Backing filesystems: "overlay" = the ext4 (or whatever) filesystem of
# WORK_DIR, "btrfs" = a loopback btrfs this script makes and removes.
# Leaves the machine as it was, apart from the Debian packages it installs:
# every daemon it starts is stopped, every mount, loop device and root goes.
#
#   bench/peers.sh                       # everything
#   REPS=2 CONTAINERS=5 DEPTHS="1 64" bench/peers.sh
#   FILESYSTEMS=overlay ENGINES="drivers podman" bench/peers.sh
#   DRIVERS_BENCH=0 bench/peers.sh       # without the in-process drivers bench
#
# Needs root, Debian bookworm, and target/release/drivers (or DRIVERS_BIN).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
drivers=${DRIVERS_BIN:-$repo/target/release/drivers}
reps=${REPS:-3}
containers=${CONTAINERS:-10}
depths=${DEPTHS:-"1 64 128 500"}
filesystems=${FILESYSTEMS:-"overlay btrfs"}
engines=${ENGINES:-"drivers docker podman containerd"}
work_parent=${WORK_DIR:-/var/tmp}

[ "$(id -u)" = 0 ] || { echo "error: run as root (mounts, daemons)" >&2; exit 1; }
[ -x "$drivers" ] || { echo "error: no drivers binary at $drivers: cargo build --release --bin drivers, or set DRIVERS_BIN" >&2; exit 1; }

work=$(mktemp -d "$work_parent/drivers-peers.XXXXXX")
pids=()
loopdev=""
# What the engines create outside their private roots (state they keep
# whatever the flags): removed at the end unless it was there before.
outside=(/etc/docker/key.json /run/docker /run/containerd /run/libpod /var/lib/containers/cache)
created=()
for p in "${outside[@]}"; do [ -e "$p" ] || created+=("$p"); done

cleanup() {
    set +e
    # Daemons by pid, and by pidfile in case one was started where its pid
    # could not be recorded.
    for f in "$work"/run/*/pid; do [ -f "$f" ] && pids+=("$(cat "$f")"); done
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null
    done
    # Deepest first; a daemon's shims may hold mounts for a moment longer.
    for _ in 1 2 3; do
        grep -o " $work[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
    done
    [ -n "$loopdev" ] && losetup -d "$loopdev" 2>/dev/null
    rm -rf "$work"
    for p in "${created[@]}"; do rm -rf "$p"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "peers: $*" >&2; }

# --- install ---------------------------------------------------------------
missing=()
for p in containerd podman docker.io skopeo umoci debootstrap btrfs-progs python3; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# --- inputs ----------------------------------------------------------------
layout=$("$repo/tools/make-debian-image.sh")
say "image: $layout"
tar -C "$layout" -cf "$work/debian-oci.tar" .
skopeo copy -q "oci:$layout:bookworm" "docker-archive:$work/debian-docker.tar:bench/debian:bookworm" >&2
mkdir -p "$work/chains"
for d in $depths; do
    python3 "$here/chain-image.py" "$work/chains/$d" "$d"
    tar -C "$work/chains/$d" -cf "$work/chains/$d-oci.tar" .
    skopeo copy -q "oci:$work/chains/$d:chain$d" "docker-archive:$work/chains/$d-docker.tar:bench/chain$d:latest" >&2
done

# --- measuring -------------------------------------------------------------
declare -A cell   # cell[engine/fs/metric] = median or an error
now() { date +%s%N; }
ms_since() { echo $(( ($(now) - $1) / 1000 )) | awk '{printf "%.1f", $1/1000}'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2}'; }
# Runs "$@" quietly; on failure records the first line of its error for
# metric $1 (the rest is the command) and returns 1.
try() {
    local key=$1; shift
    local err
    if ! err=$("$@" 2>&1 >/dev/null); then
        cell[$key]="FAILED: $(first_error <<<"$err")"
        return 1
    fi
}
# The line of an engine's stderr that says what went wrong.
first_error() {
    local all; all=$(grep -v '^$')
    # Go errors wrap ("a: b: cause"): keep the end of a long line.
    { grep -m1 -iE 'error|fail|denied|exceed|invalid|not supported|no such' <<<"$all" || head -1 <<<"$all"; } |
        tr -s ' ' | awk '{ if (length($0) > 110) print "…" substr($0, length($0) - 109); else print }' 
}
used_bytes() { sync -f "$1"; df -B1 --output=used "$1" | tail -1 | tr -d ' '; }
first_read_us() { python3 -c 'import sys,time; t=time.perf_counter(); open(sys.argv[1],"rb").read(); print("%.0f" % ((time.perf_counter()-t)*1e6))' "$1"; }

# Each engine implements: start FS; import TAR_KIND; create NAME; mount NAME
# (prints path or fails); umount NAME; commit NAME; rm_all; chain DEPTH;
# stop. $fsdir is the engine's directory on the backing filesystem.

# drivers, through its CLI like the peers.
drivers_start() {
    D=("$drivers" --root "$fsdir/drivers")
    if [ "$fs" = btrfs ]; then
        # Its state directory lives on the shared loopback btrfs.
        "${D[@]}" select btrfs --path "$fsdir" >/dev/null
    else
        "${D[@]}" select overlay2 >/dev/null
    fi
}
drivers_import() { "${D[@]}" image import "$work/debian-oci.tar" --name bench; }
drivers_rmi() { "${D[@]}" image rm bench; }
drivers_create() { "${D[@]}" container create "$1" --image bench; }
drivers_mount() { "${D[@]}" container mount "$1"; }
drivers_umount() { "${D[@]}" container umount "$1"; }
drivers_prepare_write() { "${D[@]}" container create "$1" --image bench >/dev/null && "${D[@]}" container mount "$1"; }
drivers_finish_write() { "${D[@]}" container umount "$1"; }
drivers_commit() { "${D[@]}" container commit "$1" --name "bench-$1"; }
drivers_rm_all() {
    local cs
    cs=$("${D[@]}" --json container ls | python3 -c 'import json,sys; print(" ".join(c["name"] for c in json.load(sys.stdin)))')
    # One call for all, as the peers are given every id at once.
    # shellcheck disable=SC2086
    [ -z "$cs" ] || "${D[@]}" container rm --force $cs >/dev/null
    for i in $("${D[@]}" --json image ls | python3 -c 'import json,sys; print(" ".join(i["name"] for i in json.load(sys.stdin)))'); do
        "${D[@]}" image rm "$i" >/dev/null
    done
}
drivers_chain_import() { "${D[@]}" image import "$work/chains/$1-oci.tar" --name "chain$1"; }
drivers_chain_create() { "${D[@]}" container create "r$1" --image "chain$1"; }
drivers_stop() { :; }

# docker: dockerd (with its own containerd) on a private data root.
docker_start() {
    local sd=overlay2; [ "$fs" = btrfs ] && sd=btrfs
    mkdir -p "$fsdir/docker" "$work/run/docker-$fs"
    dockerd --data-root "$fsdir/docker" --exec-root "$work/run/docker-$fs/exec" \
        --pidfile "$work/run/docker-$fs/pid" -H "unix://$work/run/docker-$fs/sock" \
        --storage-driver "$sd" --iptables=false --ip6tables=false --bridge=none \
        >"$work/run/docker-$fs/log" 2>&1 &
    pids+=($!)
    DK=(docker -H "unix://$work/run/docker-$fs/sock")
    for _ in $(seq 150); do "${DK[@]}" info >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "dockerd did not start: $(tail -1 "$work/run/docker-$fs/log")" >&2; return 1
}
docker_import() { "${DK[@]}" load -q -i "$work/debian-docker.tar"; }
docker_rmi() { "${DK[@]}" rmi bench/debian:bookworm; }
docker_create() { "${DK[@]}" create --network none --name "$1" bench/debian:bookworm true; }
docker_mount() { echo "docker has no command that mounts a container's filesystem" >&2; return 1; }
docker_umount() { return 1; }
docker_prepare_write() {
    # docker cannot write into a container without running it: run one.
    "${DK[@]}" run --network none --name "$1" -v "$work/writer.sh:/writer.sh:ro" bench/debian:bookworm sh /writer.sh /
}
docker_finish_write() { :; }
docker_commit() { "${DK[@]}" commit "$1" "bench/$1:latest"; }
docker_rm_all() {
    local c; c=$("${DK[@]}" ps -aq); [ -z "$c" ] || "${DK[@]}" rm -f $c >/dev/null
    local i; i=$("${DK[@]}" images -q); [ -z "$i" ] || "${DK[@]}" rmi -f $i >/dev/null
}
docker_chain_import() { "${DK[@]}" load -q -i "$work/chains/$1-docker.tar"; }
docker_chain_create() { "${DK[@]}" create --network none --name "r$1" "bench/chain$1:latest" true; }
docker_stop() { stop_last_daemon; }

# podman: its own storage root on the backing filesystem.
podman_start() {
    local sd=overlay; [ "$fs" = btrfs ] && sd=btrfs
    mkdir -p "$fsdir/podman" "$work/run/podman-$fs"
    PM=(podman --root "$fsdir/podman" --runroot "$work/run/podman-$fs" --storage-driver "$sd"
        --cgroup-manager cgroupfs --events-backend file)
    "${PM[@]}" info >/dev/null
}
podman_import() { "${PM[@]}" load -q -i "$work/debian-oci.tar"; }
podman_rmi() { "${PM[@]}" rmi -a -f; }
podman_create() { "${PM[@]}" create --network none --name "$1" "$(podman_image)" true; }
podman_image() { "${PM[@]}" images -q | head -1; }
podman_mount() { "${PM[@]}" mount "$1"; }
podman_umount() { "${PM[@]}" umount "$1"; }
podman_prepare_write() { podman_create "$1" >/dev/null && "${PM[@]}" mount "$1"; }
podman_finish_write() { "${PM[@]}" umount "$1"; }
podman_commit() { "${PM[@]}" commit -q "$1" "bench/$1"; }
podman_rm_all() { "${PM[@]}" rm -a -f >/dev/null; "${PM[@]}" rmi -a -f >/dev/null 2>&1 || true; }
podman_chain_import() { "${PM[@]}" load -q -i "$work/chains/$1-oci.tar"; }
podman_chain_create() { "${PM[@]}" create --network none --name "r$1" "$("${PM[@]}" images -q | head -1)" true; }
podman_stop() { :; }

# containerd + ctr: a private daemon; its btrfs snapshotter lives under its
# root, which is on the loopback btrfs for fs=btrfs.
containerd_start() {
    CS=overlayfs; [ "$fs" = btrfs ] && CS=btrfs
    local r=$work/run/containerd-$fs
    mkdir -p "$fsdir/containerd" "$r"
    cat >"$r/config.toml" <<EOF
version = 2
root = "$fsdir/containerd"
state = "$r/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$r/sock"
EOF
    containerd -c "$r/config.toml" >"$r/log" 2>&1 &
    pids+=($!)
    CT=(ctr -a "$r/sock" -n bench)
    for _ in $(seq 150); do "${CT[@]}" version >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "containerd did not start: $(tail -1 "$r/log")" >&2; return 1
}
containerd_import() { "${CT[@]}" images import --snapshotter "$CS" --base-name bench/debian "$work/debian-oci.tar"; }
containerd_rmi() { "${CT[@]}" images rm --sync bench/debian:bookworm; }
containerd_create() { "${CT[@]}" containers create --snapshotter "$CS" bench/debian:bookworm "$1"; }
containerd_mount() {
    mkdir -p "$work/mnt/$1"
    local cmd snaps
    cmd=$("${CT[@]}" snapshots --snapshotter "$CS" mounts "$work/mnt/$1" "$1") || return 1
    # ctr prints absolute lowerdirs, which past ~40 layers overflow the
    # 4096 bytes mount(2) takes; containerd itself mounts from inside the
    # snapshots directory with relative ones (compactLowerdirOption). Same.
    snaps="$fsdir/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/"
    if [ "$CS" = overlayfs ]; then
        (cd "$snaps" && eval "${cmd//$snaps/}") || return 1
    else
        eval "$cmd" || return 1
    fi
    echo "$work/mnt/$1"
}
containerd_umount() { umount "$work/mnt/$1"; }
containerd_prepare_write() { containerd_create "$1" >/dev/null && containerd_mount "$1"; }
containerd_finish_write() { containerd_umount "$1"; }
# ctr has no image commit: the nearest is committing the snapshot (no layer
# tar, no image); the table marks it.
containerd_commit() { "${CT[@]}" snapshots --snapshotter "$CS" commit "bench-$1" "$1"; }
containerd_rm_all() {
    for c in $("${CT[@]}" containers ls -q); do "${CT[@]}" containers rm "$c" >/dev/null; done
    for s in $("${CT[@]}" snapshots --snapshotter "$CS" ls | awk 'NR>1 && $1 ~ /^bench-/ {print $1}'); do
        "${CT[@]}" snapshots --snapshotter "$CS" rm "$s" >/dev/null
    done
    for i in $("${CT[@]}" images ls -q); do "${CT[@]}" images rm --sync "$i" >/dev/null; done
}
containerd_chain_import() { "${CT[@]}" images import --snapshotter "$CS" --base-name "bench/chain$1" "$work/chains/$1-oci.tar"; }
containerd_chain_create() { "${CT[@]}" containers create --snapshotter "$CS" "bench/chain$1:chain$1" "r$1"; }
containerd_stop() { stop_last_daemon; }

stop_last_daemon() {
    [ ${#pids[@]} -gt 0 ] || return 0
    local p=${pids[-1]}
    kill "$p" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    unset 'pids[-1]'
}

# The script a container runs (docker) or that writes into a mounted root
# (the others): 1,000 files of 1 KiB, 100 files of /usr/share deleted.
cat >"$work/writer.sh" <<'EOF'
root=$1
mkdir -p "$root/bench-small"
i=0; while [ $i -lt 1000 ]; do printf '%1024s' '' > "$root/bench-small/f$i"; i=$((i+1)); done
find "$root/usr/share" -type f | sort | head -100 | while read -r f; do rm -f "$f"; done
EOF

run_engine() {
    local e=$1 k
    say "$e on $fs"
    k="$e/$fs"
    # Not through try: starting sets variables and records daemon pids,
    # which a subshell would lose.
    if ! "${e}_start" >/dev/null 2>"$work/err"; then
        local why; why="FAILED: $(first_error <"$work/err")"
        for m in import create mount umount commit remove disk; do cell[$k/$m]=$why; done
        for d in $depths; do cell[$k/read$d]=$why; done
        return 0
    fi
    local imp=() cre=() mnt=() umt=() com=() rem=() dsk=()
    for rep in $(seq "$reps"); do
        local t; t=$(now)
        if ! try "$k/import" "${e}_import"; then break; fi
        imp+=("$(ms_since "$t")")
        local before; before=$(used_bytes "$fsdir")
        local made=0
        for i in $(seq "$containers"); do
            t=$(now)
            try "$k/create" "${e}_create" "c$i" || break
            cre+=("$(ms_since "$t")"); made=$i
        done
        [ "$made" = "$containers" ] && dsk+=("$(( $(used_bytes "$fsdir") - before ))")
        if [ "$made" -gt 0 ]; then
            for _ in 1 2 3 4 5; do
                t=$(now)
                try "$k/mount" "${e}_mount" c1 || break
                mnt+=("$(ms_since "$t")")
                t=$(now)
                try "$k/umount" "${e}_umount" c1 || break
                umt+=("$(ms_since "$t")")
            done
        fi
        # Workload 4: changes made outside the timing, then the commit.
        local at
        if at=$("${e}_prepare_write" writer 2>"$work/err"); then
            [ "$e" = docker ] || sh "$work/writer.sh" "$(echo "$at" | tail -1)"
            "${e}_finish_write" writer >/dev/null 2>&1 || true
            t=$(now)
            if try "$k/commit" "${e}_commit" writer; then com+=("$(ms_since "$t")"); fi
        else
            cell[$k/commit]="FAILED: $(first_error <"$work/err")"
        fi
        t=$(now)
        try "$k/remove" "${e}_rm_all" && rem+=("$(ms_since "$t")")
    done
    [ ${#imp[@]} -gt 0 ] && cell[$k/import]=$(echo "${imp[*]}" | median)
    [ ${#cre[@]} -gt 0 ] && cell[$k/create]=$(echo "${cre[*]}" | median)
    [ ${#mnt[@]} -gt 0 ] && cell[$k/mount]=$(echo "${mnt[*]}" | median)
    [ ${#umt[@]} -gt 0 ] && cell[$k/umount]=$(echo "${umt[*]}" | median)
    [ ${#com[@]} -gt 0 ] && cell[$k/commit]=$(echo "${com[*]}" | median)
    [ ${#rem[@]} -gt 0 ] && cell[$k/remove]=$(echo "${rem[*]}" | median)
    [ ${#dsk[@]} -gt 0 ] && cell[$k/disk]=$(echo "${dsk[*]}" | median | awk '{printf "%.1f", $1/1048576}')
    # Workload 5: can it hold a chain of N, and the first read through it.
    for d in $depths; do
        local key="$k/read$d"
        try "$key" "${e}_chain_import" "$d" || { "${e}_rm_all" >/dev/null 2>&1 || true; continue; }
        try "$key" "${e}_chain_create" "$d" || { "${e}_rm_all" >/dev/null 2>&1 || true; continue; }
        if [ "$e" = docker ]; then
            cell[$key]="created (no mount command: read not timed)"
        elif at=$("${e}_mount" "r$d" 2>"$work/err"); then
            cell[$key]="$(first_read_us "$(echo "$at" | tail -1)/shared/bottom/data") µs"
            "${e}_umount" "r$d" >/dev/null 2>&1 || true
        else
            cell[$key]="FAILED: $(first_error <"$work/err")"
        fi
        "${e}_rm_all" >/dev/null 2>&1 || true
    done
    "${e}_stop"
}

# --- the run ---------------------------------------------------------------
echo "== drivers bench (in-process), same machine, same run"
depth_list=$(echo "$depths" | tr ' ' ',')
drivers_backends=""
for fs in $filesystems; do
    case $fs in overlay) drivers_backends+="overlay2,";; btrfs) drivers_backends+="btrfs,";; esac
done
[ "${DRIVERS_BENCH:-1}" = 0 ] || "$drivers" bench --backends "${drivers_backends%,}" --reps "$reps" --containers "$containers" \
    --depths "$depth_list" --work-dir "$work" --json "$work/drivers-bench.json" || true

for fs in $filesystems; do
    case $fs in
    overlay) fsdir=$work/fs-overlay; mkdir -p "$fsdir" ;;
    btrfs)
        fsdir=$work/fs-btrfs; mkdir -p "$fsdir"
        truncate -s 16G "$work/btrfs.img"
        mkfs.btrfs -q "$work/btrfs.img" >/dev/null
        loopdev=$(losetup -f --show "$work/btrfs.img")
        mount -o noatime "$loopdev" "$fsdir"
        # drivers' btrfs backend needs quotas for its usage figures.
        btrfs quota enable "$fsdir"
        ;;
    *) echo "error: unknown filesystem $fs (overlay, btrfs)" >&2; exit 1 ;;
    esac
    for e in $engines; do
        run_engine "$e"
    done
done

# --- the table -------------------------------------------------------------
metrics="import create mount umount commit remove disk"
for d in $depths; do metrics+=" read$d"; done
label() {
    case $1 in
    import) echo "1. import image (ms)";; create) echo "2. create a container (ms)";;
    mount) echo "3. mount (ms)";; umount) echo "3. unmount (ms)";;
    commit) echo "4. commit 1,000 files + 100 deletes (ms)";;
    remove) echo "6. remove $containers containers + image (ms)";;
    disk) echo "6. disk used by $containers containers (MiB)";;
    read*) echo "5. first read, chain of ${1#read}";;
    esac
}
ratio() {
    local a=$1 b=$2
    [[ $a =~ ^[0-9.]+$ && $b =~ ^[0-9.]+$ ]] || { echo "-"; return; }
    awk -v a="$a" -v b="$b" 'BEGIN { if (b == 0) print "-"; else printf "%.2f", a/b }'
}
echo
echo "== engines through their CLIs (median of $reps runs, start-up included), and drivers/peer"
for fs in $filesystems; do
    echo
    echo "-- backing filesystem: $fs"
    {
        printf "WORKLOAD"
        for e in $engines; do printf "\t%s" "$e"; done
        for e in $engines; do [ "$e" = drivers ] || printf "\tdrivers/%s" "$e"; done
        echo
        for m in $metrics; do
            printf "%s" "$(label "$m")"
            for e in $engines; do printf "\t%s" "${cell[$e/$fs/$m]:--}"; done
            for e in $engines; do
                [ "$e" = drivers ] || printf "\t%s" "$(ratio "${cell[drivers/$fs/$m]:-}" "${cell[$e/$fs/$m]:-}")"
            done
            echo
        done
    } | column -t -s $'\t'
done
echo
echo "containerd's commit is 'ctr snapshots commit' (no layer tar, no image: ctr has no image commit)."
echo "docker's changes for the commit are made by running the container (it has no mount command)."
if [ -f "$work/drivers-bench.json" ]; then
    cp "$work/drivers-bench.json" "${PEERS_JSON_OUT:-/dev/null}" 2>/dev/null || true
fi
