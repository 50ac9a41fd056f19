#!/usr/bin/env bash
# Re-replication benchmark: a cluster of 4 chunk daemons (3 replicas) holds
# GIB GiB of file data; one daemon is killed with SIGKILL; prints how long
# until every chunk is back at 3 good replicas without it, and the copy
# throughput (MiB/s) the MDS's repair loop reached.
#
# Usage (as root, FUSE needed): bench/rereplication.sh [GIB] [REPAIR_MIB_PER_SEC]
#   GIB                 file data to write (default 2; disk used is 3x that)
#   REPAIR_MIB_PER_SEC  the MDS's --repair-mib-per-sec (default 0: no cap)
# Binaries come from $WEFT_BIN (default: target/release, built if missing).
# Everything runs on 127.0.0.1 in a temp directory; every process started here
# is stopped here by its PID.
set -euo pipefail

GIB=${1:-2}
RATE=${2:-0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${WEFT_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
if [[ ! -x $BIN/weft-mds || ! -x $BIN/weft-chunkd || ! -x $BIN/weftfs || ! -x $BIN/weft ]]; then
  (cd "$ROOT" && cargo build --release --bins)
fi

DIR=$(mktemp -d /tmp/weft-bench-rerepl.XXXXXX)
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
  --chunk-size $((64 << 20)) --replicas 3 --heartbeat-ms 500 --dead-after-ms 2000 \
  --lease-ms 5000 --repair-mib-per-sec "$RATE" --log-level warn >"$DIR/logs/mds.log" 2>&1 &
PIDS+=($!)
wait_file "$DIR/mds.addr"
MDS=$(cat "$DIR/mds.addr")
CHUNKD_PIDS=()
for i in 1 2 3 4; do
  "$BIN/weft-chunkd" --listen 127.0.0.1:0 --data "$DIR/c$i" --mds "$MDS" \
    --addr-file "$DIR/c$i.addr" --log-level warn >"$DIR/logs/c$i.log" 2>&1 &
  PIDS+=($!)
  CHUNKD_PIDS+=($!)
  wait_file "$DIR/c$i.addr"
done
"$BIN/weftfs" "$MDS" "$MNT" -f -o "log=$DIR/logs/weftfs.log" &
PIDS+=($!)
for _ in $(seq 1 300); do mountpoint -q "$MNT" && break; sleep 0.1; done
mountpoint -q "$MNT" || { echo "weftfs did not mount" >&2; exit 1; }

echo "writing $GIB GiB (3 replicas over 4 daemons)..."
t0=$(now)
dd if=/dev/urandom of="$MNT/data" bs=4M count=$((GIB * 256)) conv=fsync status=none
t1=$(now)
echo "write: $(echo "$GIB * 1024 / ($t1 - $t0)" | bc -l | xargs printf '%.1f') MiB/s"
until "$BIN/weft" fsck --mds "$MDS" >/dev/null; do sleep 0.5; done

status() { "$BIN/weft" status --mds "$MDS" --json; }
victim=${CHUNKD_PIDS[0]}
held=$(status | python3 -c 'import json,sys; s=json.load(sys.stdin); print(max(d["used"] for d in s["chunkds"]))')
before=$(status | python3 -c 'import json,sys; print(json.load(sys.stdin)["copied_bytes"])')
echo "killing one chunk daemon (pid $victim, about $((held >> 20)) MiB of replicas)"
t_kill=$(now)
kill -9 "$victim"
# Wait for the MDS to declare it dead, then for full redundancy.
until status | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if sum(not d["alive"] for d in s["chunkds"])==1 else 1)'; do sleep 0.1; done
t_dead=$(now)
until status | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["under_replicated"]==0 and s["missing"]==0 else 1)'; do sleep 0.2; done
t_full=$(now)
after=$(status | python3 -c 'import json,sys; print(json.load(sys.stdin)["copied_bytes"])')
copied=$((after - before))
"$BIN/weft" fsck --mds "$MDS" >/dev/null && fsck=clean || fsck=PROBLEMS

mib=$(echo "$copied / 1048576" | bc -l)
printf 'declared dead after:            %.2f s\n' "$(echo "$t_dead - $t_kill" | bc -l)"
printf 'back to full redundancy after:  %.2f s from the kill (%.2f s of copying)\n' \
  "$(echo "$t_full - $t_kill" | bc -l)" "$(echo "$t_full - $t_dead" | bc -l)"
printf 're-replicated:                  %.0f MiB\n' "$mib"
printf 're-replication throughput:      %.1f MiB/s (cap: %s)\n' \
  "$(echo "$mib / ($t_full - $t_dead)" | bc -l)" "$([[ $RATE == 0 ]] && echo none || echo "$RATE MiB/s")"
echo "fsck: $fsck"
