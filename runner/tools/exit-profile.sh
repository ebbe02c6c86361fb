#!/bin/sh
# Where a guest's exits come from, counted by L1's KVM tracepoints.
# Run inside the rig (or on any host whose KVM has tracefs), as root:
#   cargo xtask rig -- sh runner/tools/exit-profile.sh NAME COMMAND...
# e.g. NAME=k1, COMMAND=target/release/kestrel run --kernel debian:6.1 -- true
# Writes target/kestrel/exit-profile/NAME/{trace.txt,command.out} and prints
# exit reasons, MSRs, ports and MMIO addresses by count. With KALLSYMS set
# to a guest's /proc/kallsyms (same kernel, nokaslr or PVH), kernel rips are
# symbolized too.
set -u
name=$1; shift
mount -t debugfs none /sys/kernel/debug 2>/dev/null
mount -t tracefs none /sys/kernel/tracing 2>/dev/null
T=/sys/kernel/tracing
[ -d $T/events/kvm ] || { echo "exit-profile: no kvm tracepoints in $T (is kvm loaded and tracefs mounted?)"; exit 1; }
out=target/kestrel/exit-profile/$name
rm -rf "$out"; mkdir -p "$out"
events="kvm_exit kvm_msr kvm_pio kvm_mmio"
echo 16384 > $T/buffer_size_kb
echo > $T/trace
for e in $events; do echo 1 > $T/events/kvm/$e/enable; done
echo 1 > $T/tracing_on
"$@" > "$out/command.out" 2>&1; echo "rc=$?" >> "$out/command.out"
echo 0 > $T/tracing_on
cat $T/trace > "$out/trace.txt"
for e in $events; do echo 0 > $T/events/kvm/$e/enable; done
t="$out/trace.txt"
echo "== $name: $(grep -c 'kvm_exit:' "$t") exits ($(grep -c LOST "$t") lost events); $(tail -1 "$out/command.out")"
echo "-- reasons"; grep -o 'reason [a-z_0-9]*' "$t" | sort | uniq -c | sort -rn | head -12
echo "-- msrs"; grep -o 'kvm_msr: msr_[a-z]* [0-9a-fx]*' "$t" | sort | uniq -c | sort -rn | head -8
echo "-- ports"; grep -o 'kvm_pio: pio_[a-z]* at 0x[0-9a-f]*' "$t" | sort | uniq -c | sort -rn | head -8
echo "-- mmio"; grep -o 'kvm_mmio: mmio [a-z]* len [0-9] gpa 0x[0-9a-f]*' "$t" | sort | uniq -c | sort -rn | head -8
if [ -n "${KALLSYMS:-}" ] && command -v python3 >/dev/null; then
  echo "-- kernel rips"
  python3 - "$KALLSYMS" "$t" <<'PY'
import bisect, collections, re, sys
syms = []
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) >= 3:
        try:
            syms.append((int(p[0], 16), p[2]))
        except ValueError:
            pass
syms.sort()
keys = [a for a, _ in syms]
count = collections.Counter()
for line in open(sys.argv[2]):
    m = re.search(r"reason (\w+) rip (0x[0-9a-f]+)", line)
    if not m:
        continue
    rip = int(m.group(2), 16)
    i = bisect.bisect_right(keys, rip) - 1
    where = f"{syms[i][1]}+{rip - syms[i][0]:#x}" if rip >> 63 and i >= 0 else "user or early"
    count[(m.group(1), where)] += 1
for (reason, where), n in count.most_common(15):
    print(f"{n:7} {reason} {where}")
PY
fi
