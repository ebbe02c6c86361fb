#!/bin/sh
# Two kestrel binaries' warm starts, alternating, in one place (run it in
# the rig: `cargo xtask rig -- sh runner/tools/warm-ab.sh OLD NEW [ROUNDS]`).
# Each binary keeps its own snapshot directory; the first round of each
# saves its snapshot, the rest restore. Prints per run: exit code, wall
# time and the restore's debug lines and `job` mark.
set -u
A=$1 B=$2 ROUNDS=${3:-9}
run() { # label binary
  start=$(date +%s%N)
  KESTREL_SNAPSHOT_DIR=/tmp/warm-ab-$1 KESTREL_LOG=debug "$2" run --kernel debian:6.1 \
    --warm --timings --cpus 1 --memory 512 --console none -- sh -c 'echo hi' \
    > "/tmp/warm-ab-$1.log" 2>&1
  rc=$?
  end=$(date +%s%N)
  echo "$1 rc=$rc wall=$(( (end - start) / 1000000 )) ms | $(grep -E 'phase (snapshot-restored|job)|job:' "/tmp/warm-ab-$1.log" | tr '\n' ' ')"
}
i=0
while [ "$i" -lt "$ROUNDS" ]; do
  i=$((i + 1))
  run a "$A"
  run b "$B"
done
