#!/bin/sh
# The guest kernel's own log under kestrel and under QEMU microvm: the same
# kernel, the same initramfs (a kestrel base with dmesg packed, job
# `/usr/bin/dmesg`) and the bench's command line, RUNS boots each,
# alternating, in one L1:
#   cargo xtask rig -- sh runner/tools/dmesg-ab.sh [RUNS]
# Writes target/dmesg-ab/{kestrel,microvm}-N.txt and prints, per boot, the
# uptime of `Run /init` and the kvm-clock line's offset (from the VM's
# creation to the guest's clock). Compare two logs message by message with
# any diff of the timestamps.
set -eu
RUNS=${1:-3}
KERNEL=${KERNEL:-debian:6.1}  # a cached Debian series
KESTREL=${KESTREL:-target/release/kestrel}
OUT=target/dmesg-ab
APPEND="console=ttyS0 reboot=t panic=-1 i8042.noaux i8042.nomux tsc=reliable no_timer_check quiet 8250.nr_uarts=2 initcall_blacklist=cmos_init"
mkdir -p "$OUT"

cache=${KESTREL_CACHE_DIR:-$HOME/.cache/kestrel}
qemu=$(ls "$cache"/tools/*/qemu/root/usr/bin/qemu-system-x86_64 2>/dev/null | head -n 1)
[ -n "$qemu" ] || qemu=$(command -v qemu-system-x86_64)
data=$(dirname "$(dirname "$qemu")")/share/qemu

# The base archive kestrel builds for `--pack dmesg`, and the kernel image.
log=$(KESTREL_LOG=debug "$KESTREL" run --kernel "$KERNEL" --no-host-root --pack dmesg -- dmesg 2>&1) || true
base=$(echo "$log" | sed -n 's/.*initramfs base \(.*\.cpio\) (.*/\1/p' | head -n 1)
series=${KERNEL#debian:}
image=$("$KESTREL" kernel list 2>/dev/null | awk -v k="$series" '$1 == k { print $NF }' | head -n 1)
[ -f "$base" ] || { echo "dmesg-ab: no base archive in kestrel's log:"; echo "$log"; exit 1; }
[ -f "$image" ] || { echo "dmesg-ab: \`kestrel kernel list\` names no image for $KERNEL"; exit 1; }

# The base plus a job archive (newc) holding the job spec.
python3 - "$base" "$OUT/initrd.cpio" <<'PY'
import sys
spec = b"kestrel-spec 1\narg /usr/bin/dmesg\nstatus path /dev/ttyS1\n"
def entry(name, data, mode, ino):
    n = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(n), 0]
    out = b"070701" + b"".join(b"%08X" % v for v in fields) + n
    out += b"\0" * (-len(out) % 4) + data
    return out + b"\0" * (-len(out) % 4)
job = entry("kestrel/job.spec", spec, 0o100644, 1) + entry("TRAILER!!!", b"", 0, 0)
job += b"\0" * (-len(job) % 512)
base = open(sys.argv[1], "rb").read()
base += b"\0" * (-len(base) % 512)
open(sys.argv[2], "wb").write(base + job)
PY

summary() {
  printf '%-16s Run /init at %s s; %s\n' "$1" \
    "$(sed -n 's/^\[ *\([0-9.]*\)\] Run \/init.*/\1/p' "$2")" \
    "$(grep -o 'sched offset of [0-9]*' "$2" | awk '{ printf "clock after %d ms", $4 / 1000000 }')"
}
i=0
while [ "$i" -lt "$RUNS" ]; do
  i=$((i + 1))
  "$KESTREL" run --kernel "$image" --initrd "$OUT/initrd.cpio" --console "$OUT/kestrel-$i.txt" --timeout 60 > /dev/null 2>&1
  summary "kestrel $i" "$OUT/kestrel-$i.txt"
  timeout 60 "$qemu" -L "$data" -accel kvm -M microvm,pit=on,pic=on,rtc=off,isa-serial=on \
    -cpu host -smp 1 -m 512M -nodefaults -no-user-config -no-reboot -display none \
    -kernel "$image" -initrd "$OUT/initrd.cpio" -append "$APPEND" \
    -chardev "file,id=con,path=$OUT/microvm-$i.txt" -serial chardev:con \
    -chardev null,id=st -device isa-serial,chardev=st,iobase=0x2f8,irq=3 > /dev/null 2>&1
  summary "microvm $i" "$OUT/microvm-$i.txt"
done
