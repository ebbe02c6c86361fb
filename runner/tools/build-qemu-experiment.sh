#!/bin/sh
# Builds QEMU 10.0.2 (the rig's version) with runner/tools/qemu-svm-experiment.patch:
# a switch for the stale VMRUN interrupt injection (QEMU_STALE_INJ_FIX=1
# clears exception_index after helper_vmrun delivers an injected interrupt)
# and three log lines on stderr: an injected vector delivered again, any
# vector >= 32 delivered to the host as an exception while GIF=0 (the
# signature of session 15's L1 panic), and (session 16) any vector >= 32
# but a software INT reaching the host with GIF=0 or IF=0 by whatever path
# (do_interrupt_all). A measurement tool, not run by CI.
#
#   sh runner/tools/build-qemu-experiment.sh DIR      (about 12 min on 2 cores)
#   QEMU_STALE_INJ_FIX=0 KESTREL_QEMU=DIR/qemu-wrap.sh cargo xtask stress ...
#
# The source is Debian's orig tarball from the mirror in the system's apt
# sources; meson 1.5 (QEMU's minimum; Debian 12 has 1.0) comes from PyPI.
set -eu
dir=${1:?usage: build-qemu-experiment.sh DIR}
patch=$(cd "$(dirname "$0")" && pwd)/qemu-svm-experiment.patch
mkdir -p "$dir" && cd "$dir"
mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | grep -v security | head -1)
[ -n "$mirror" ] || mirror=$(sed -n 's/^deb \(\[[^]]*\] \)\?\(http[^ ]*\) .*/\2/p' /etc/apt/sources.list 2>/dev/null | grep -v security | head -1)
[ -n "$mirror" ] || { echo "no Debian mirror found in the apt sources" >&2; exit 1; }
tarball=qemu_10.0.2+ds.orig.tar.xz
[ -f "$tarball" ] || curl -fsSLO "$mirror/pool/main/q/qemu/$tarball"
rm -rf src build && mkdir src build
tar -C src --strip-components=1 -xf "$tarball"
(cd src && patch -p1 < "$patch")
pip download --no-deps -q meson==1.5.0 pycotap==1.3.1 -d src/python/wheels
apt-get install -y -q --no-remove --no-install-recommends ninja-build python3-venv \
    libglib2.0-dev libpixman-1-dev libfdt-dev zlib1g-dev flex bison pkg-config > /dev/null
cd build
../src/configure --target-list=x86_64-softmmu --disable-docs --disable-werror \
    --disable-gtk --disable-sdl --disable-vnc --disable-spice --disable-opengl \
    --disable-tools --disable-guest-agent --disable-rust --disable-capstone \
    --disable-install-blobs > configure.log
ninja qemu-system-x86_64
cd ..
data=$HOME/.cache/kestrel/tools/bookworm-backports/qemu/root/usr
cat > qemu-wrap.sh <<EOF
#!/bin/sh
# L1's QEMU: the experiment build, stderr kept per arm. Inside the rig's L1
# (KESTREL_RIG=1) QEMU is the L2 VMM under KVM: Debian's backports QEMU runs.
if [ -n "\${KESTREL_RIG:-}" ]; then
  exec $data/bin/qemu-system-x86_64 -L $data/share/qemu "\$@"
fi
exec $PWD/build/qemu-system-x86_64 -L $data/share/qemu -L /usr/share/seabios \\
    -L /usr/lib/ipxe/qemu "\$@" 2>>$PWD/stderr-fix\${QEMU_STALE_INJ_FIX:-0}.log
EOF
chmod +x qemu-wrap.sh
echo "built: KESTREL_QEMU=$PWD/qemu-wrap.sh (run a rig command once first, so the backports QEMU is cached)"
