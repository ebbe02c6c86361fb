#!/bin/sh
# Warm matrices or suites in a row in one L1, one summary line each (for
# comparing rig settings: `cargo xtask rig [--cpus N] -- sh
# runner/tools/rig-loops.sh matrix|test [COUNT]`). No retries: every lost
# case counts. The full output of the last run is in /tmp/loop.log.
set -u
WHAT=${1:-test} COUNT=${2:-3}
XTASK=${XTASK:-target/debug/xtask}
i=0
while [ "$i" -lt "$COUNT" ]; do
  i=$((i + 1))
  start=$(date +%s)
  "$XTASK" "$WHAT" --here --warm --retries 0 > /tmp/loop.log 2>&1
  rc=$?
  echo "$WHAT $i: rc=$rc $(( $(date +%s) - start )) s: $(grep -E '^[0-9]+ cases' /tmp/loop.log)"
  grep -E 'boot-failure|timeout' /tmp/loop.log | grep -v '^  ' | cut -c1-250
done
