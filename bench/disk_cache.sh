#!/usr/bin/env bash
# Data cache local-disk tier: a second cold read of a file larger than the
# memory cache, with and without the disk tier (weftfs -o disk_cache=DIR).
# For each variant: a fresh mount (data_cache=MEM MiB) reads the file once
# (cold, from the chunk daemons; fills the disk tier when there is one), the
# page cache is dropped (echo 3 > /proc/sys/vm/drop_caches: the chunk
# daemons' files and the disk tier's are cold too), and the file is read
# again, timed. Prints MiB/s of both second reads and their ratio.
#
# Usage (as root, FUSE needed): bench/disk_cache.sh [FILE_MIB] [MEM_MIB]
#   FILE_MIB  file size (default 512); MEM_MIB  weftfs data_cache (default 32)
# Binaries come from $WEFT_BIN (default: target/release, built if missing).
# Everything runs on 127.0.0.1 in a temp directory; every process started here
# is stopped here by its PID.
set -euo pipefail

FILE_MIB=${1:-512}
MEM_MIB=${2:-32}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${WEFT_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
if [[ ! -x $BIN/weft-mds || ! -x $BIN/weft-chunkd || ! -x $BIN/weftfs ]]; then
  (cd "$ROOT" && cargo build --release --bins)
fi

DIR=$(mktemp -d /tmp/weft-bench-diskcache.XXXXXX)
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
now() { date +%s.%N; }

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
  "$BIN/weftfs" "$MDS" "$MNT" -f -o "log=$DIR/logs/weftfs.log,data_cache=$MEM_MIB$1" &
  MOUNT_PID=$!
  PIDS+=($MOUNT_PID)
  for _ in $(seq 1 300); do mountpoint -q "$MNT" && return 0; sleep 0.1; done
  echo "weftfs did not mount" >&2; exit 1
}
unmount_weft() {
  umount "$MNT"
  wait "$MOUNT_PID" 2>/dev/null || true
}

mount_weft ""
dd if=/dev/urandom of="$MNT/f" bs=1M count="$FILE_MIB" conv=fsync status=none
unmount_weft

second_read() {
  mount_weft "$1"
  cat "$MNT/f" >/dev/null
  sleep 1 # let the disk tier's writer finish
  sync
  echo 3 >/proc/sys/vm/drop_caches
  local t0 t1
  t0=$(now)
  cat "$MNT/f" >/dev/null
  t1=$(now)
  unmount_weft
  echo "$FILE_MIB / ($t1 - $t0)" | bc -l
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
mem=$(second_read "")
disk=$(second_read ",disk_cache=$DIR/dcache,disk_cache_size=$((FILE_MIB * 2))")
printf 'second cold read of %d MiB, data_cache=%d MiB: memory only %.1f MiB/s, with disk tier %.1f MiB/s (%.2fx)\n' \
  "$FILE_MIB" "$MEM_MIB" "$mem" "$disk" "$(echo "$disk / $mem" | bc -l)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
