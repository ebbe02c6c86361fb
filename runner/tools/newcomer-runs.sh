#!/bin/bash
# A newcomer's first `cargo xtask test`, COUNT times in a row, without
# retries (issue 13: "21/21 five runs in a row"):
#   runner/tools/newcomer-runs.sh [COUNT] [WORKDIR]
# Run 1: a fresh clone of this repository's HEAD (its own target dir) and
# an empty kestrel cache (`KESTREL_CACHE_DIR`), so QEMU, the kernel and
# every build are fetched and made as on a new machine. Runs 2..COUNT:
# the cache and target/kestrel emptied again (QEMU, the kernel, the
# initramfs and the snapshots anew), the cargo build kept. One summary line
# per run; each run's whole output in WORKDIR/run-N.log. Uses the rig when
# this host's KVM cannot boot kernels, like the command itself.
set -u
COUNT=${1:-5}
WORK=${2:-$(mktemp -d /tmp/kestrel-newcomer.XXXXXX)}
REPO=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
mkdir -p "$WORK"
rm -rf "$WORK/clone" "$WORK/cache"
git clone -q "$REPO" "$WORK/clone"
cd "$WORK/clone" || exit 1
failed=0
for i in $(seq 1 "$COUNT"); do
  if [ "$i" -gt 1 ]; then rm -rf "$WORK/cache" "$WORK/clone/target/kestrel"; fi
  start=$(date +%s.%N)
  KESTREL_CACHE_DIR="$WORK/cache" cargo xtask test --retries 0 > "$WORK/run-$i.log" 2>&1
  rc=$?
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
  wall=$(echo "$(date +%s.%N) - $start" | bc)
  summary=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/run-$i.log" | grep -E '^[0-9]+ cases|rig: L1 (ended|failed)' | tr '\n' ' ')
  echo "run $i: exit=$rc wall=${wall} s ${summary}"
done
echo "$failed of $COUNT runs failed; logs in $WORK"
[ "$failed" -eq 0 ]
