#!/usr/bin/env bash
# O_DIRECT throughput of two weftfs builds on one cluster, with fio: AIO
# (libaio, queue depth 16) 64 KiB random writes and reads, AIO 4 MiB
# sequential writes, and synchronous (psync) 4 MiB O_DIRECT writes and reads.
# Written to compare weftfs with and without FUSE_ASYNC_DIO (xfstests
# generic/451): without it the kernel completes an AIO direct request in
# io_submit, and splits a large direct request into 1 MiB FUSE requests sent
# one after another instead of all at once.
#
# Each workload runs on A, then B, then A, then B (a fresh mount each time,
# the same file), and the script prints each run, the mean of each build and
# the ratio B/A, with the load average.
#
# Usage (as root, FUSE and fio needed):
#   bench/aio_dio.sh WEFTFS_A WEFTFS_B [FILE_MIB] [SECONDS]
#   FILE_MIB  file size (default 256); SECONDS  per fio run (default 8)
# weft-mds and weft-chunkd come from $WEFT_BIN (default: target/release,
# built if missing). Everything runs on 127.0.0.1 in a temp directory; every
# process started here is stopped here by its PID.
set -euo pipefail

A=${1:?usage: bench/aio_dio.sh WEFTFS_A WEFTFS_B [FILE_MIB] [SECONDS]}
B=${2:?usage: bench/aio_dio.sh WEFTFS_A WEFTFS_B [FILE_MIB] [SECONDS]}
FILE_MIB=${3:-256}
SECS=${4:-8}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${WEFT_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
if [[ ! -x $BIN/weft-mds || ! -x $BIN/weft-chunkd ]]; then
  (cd "$ROOT" && cargo build --release --bins)
fi
command -v fio >/dev/null || { echo "fio is not installed" >&2; exit 2; }

DIR=$(mktemp -d /tmp/weft-bench-aiodio.XXXXXX)
PIDS=()
MNT=$DIR/mnt
cleanup() {
  if mountpoint -q "$MNT" 2>/dev/null; then umount "$MNT" || umount -l "$MNT" || true; fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT

wait_file() { for _ in $(seq 1 300); do [[ -s $1 ]] && return 0; sleep 0.1; done; echo "no $1" >&2; exit 1; }

mkdir -p "$DIR/logs" "$MNT"
"$BIN/weft-mds" --listen 127.0.0.1:0 --data "$DIR/mds" --addr-file "$DIR/mds.addr" \
  --replicas 1 --log-level warn >"$DIR/logs/mds.log" 2>&1 &
PIDS+=($!)
wait_file "$DIR/mds.addr"
MDS=$(cat "$DIR/mds.addr")
"$BIN/weft-chunkd" --listen 127.0.0.1:0 --data "$DIR/c1" --mds "$MDS" \
  --addr-file "$DIR/c1.addr" --log-level warn >"$DIR/logs/c1.log" 2>&1 &
PIDS+=($!)
wait_file "$DIR/c1.addr"

MOUNT_PID=
mount_weft() {
  "$1" "$MDS" "$MNT" -f -o "log=$DIR/logs/weftfs.log" &
  MOUNT_PID=$!
  PIDS+=($MOUNT_PID)
  for _ in $(seq 1 300); do mountpoint -q "$MNT" && return 0; sleep 0.1; done
  echo "weftfs did not mount" >&2; exit 1
}
unmount_weft() {
  umount "$MNT"
  wait "$MOUNT_PID" 2>/dev/null || true
}

# fio_mibs WEFTFS FIO_ARGS...: MiB/s of one fio run on a fresh mount.
fio_mibs() {
  local weftfs=$1
  shift
  mount_weft "$weftfs"
  fio --name=j --filename="$MNT/f" --size="${FILE_MIB}M" --direct=1 \
    --time_based --runtime="$SECS" --output-format=terse --terse-version=3 "$@" \
    >"$DIR/fio.out"
  unmount_weft
  # terse v3: field 7 read KiB/s, field 48 write KiB/s.
  awk -F';' '{ printf "%.1f\n", ($7 + $48) / 1024 }' "$DIR/fio.out"
}

mount_weft "$A"
dd if=/dev/urandom of="$MNT/f" bs=1M count="$FILE_MIB" conv=fsync status=none
unmount_weft

echo "weftfs A: $A"
echo "weftfs B: $B"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
while read -r name args; do
  # shellcheck disable=SC2086
  a1=$(fio_mibs "$A" $args); b1=$(fio_mibs "$B" $args)
  # shellcheck disable=SC2086
  a2=$(fio_mibs "$A" $args); b2=$(fio_mibs "$B" $args)
  printf '%-28s A %7.1f %7.1f  B %7.1f %7.1f MiB/s  B/A %.2f  (load %s)\n' "$name" \
    "$a1" "$a2" "$b1" "$b2" "$(echo "($b1 + $b2) / ($a1 + $a2)" | bc -l)" \
    "$(cut -d' ' -f1 /proc/loadavg)"
done <<'EOF'
aio-randwrite-64k-qd16 --ioengine=libaio --iodepth=16 --rw=randwrite --bs=64k
aio-randread-64k-qd16 --ioengine=libaio --iodepth=16 --rw=randread --bs=64k
aio-write-4m-qd4 --ioengine=libaio --iodepth=4 --rw=write --bs=4m
psync-write-4m --ioengine=psync --rw=write --bs=4m
psync-read-4m --ioengine=psync --rw=read --bs=4m
EOF
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
