#!/bin/sh
# N cold scenario suites in a row inside one L1, no retries; each suite's
# wall and result line, and any boot failure. Run from the workspace root:
#   cargo build -p xtask && N=8 cargo xtask rig -- sh runner/tools/suites.sh
for k in $(seq "${N:-5}"); do
  s=$(date +%s.%N)
  ./target/debug/xtask test --here > "target/kestrel/suites-$k.log" 2>&1; rc=$?
  e=$(date +%s.%N)
  echo "suite $k rc=$rc wall=$(echo "$e - $s" | bc) s $(grep -E '^21 cases' "target/kestrel/suites-$k.log")"
  grep -E "triple|timed out|hung|boot-failure" "target/kestrel/suites-$k.log" | head -3
done
