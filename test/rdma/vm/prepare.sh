#!/bin/sh
# Prepare the Soft-RoCE test VM: fetch Debian's kernel package (apt-get download,
# unpacked with dpkg -x, never installed) and build a busybox initramfs holding
# /init (init.sh) and the modules the tests need, in a cache outside the repo.
#
# Idempotent: the cache is keyed by the kernel package's version, and the
# initramfs by a hash of init.sh, the module list and busybox; a second run
# only prints the paths.
#
# Output (stdout, last lines): KERNEL=<path> INITRD=<path> KVER=<version>, also
# written to $CACHE/current.env for run.ts.
#
# Exit codes: 0 ready; 3 = SKIP (a host package or the kernel is missing and
# cannot be had; the reason is printed as a "SKIP:" line); 1 = error. With CI
# set (or SOCKGATE_VM_REQUIRE=1) a missing prerequisite is an error, not a skip:
# CI installs the packages, so nothing there may skip.
#
# Environment:
#   SOCKGATE_VM_CACHE       cache dir (default /var/cache/sockgate-vm as root,
#                           else ${XDG_CACHE_HOME:-~/.cache}/sockgate-vm)
#   SOCKGATE_VM_KERNEL_PKG  kernel package (default: what linux-image-amd64 depends on)
#   SOCKGATE_VM_EXTRA_MODULES  more module names to put into the initramfs and load
#   SOCKGATE_VM_QEMU        the qemu binary (default qemu-system-x86_64)
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)

# Modules loaded at boot, in this order (each preceded by its dependencies).
# crc32_generic must be loaded before rdma_rxe, or `rdma link add` fails with ENOENT.
MODULES="virtio_pci virtio_net 9pnet_virtio 9p crc32_generic rdma_rxe ib_uverbs rdma_ucm
smc smc_diag vsock_loopback vsock_diag veth dummy ${SOCKGATE_VM_EXTRA_MODULES:-}"

if [ -n "${SOCKGATE_VM_CACHE:-}" ]; then
  CACHE=$SOCKGATE_VM_CACHE
elif [ "$(id -u)" = 0 ]; then
  CACHE=/var/cache/sockgate-vm
else
  CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/sockgate-vm
fi

required() { [ -n "${CI:-}" ] && [ "${CI:-}" != false ] || [ "${SOCKGATE_VM_REQUIRE:-}" = 1 ]; }
skip() {
  if required; then
    echo "prepare: FAIL (CI or SOCKGATE_VM_REQUIRE=1, so this may not skip): $*" >&2
    exit 1
  fi
  echo "SKIP: $*"
  exit 3
}
log() { echo "prepare: $*" >&2; }

PKGS_HINT="apt-get update && apt-get install qemu-system-x86 busybox-static cpio kmod rdma-core ibverbs-providers ibverbs-utils rdmacm-utils perftest iproute2"
for tool in "${SOCKGATE_VM_QEMU:-qemu-system-x86_64}" cpio depmod modprobe dpkg-deb apt-get gzip sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || skip "no $tool on this host (install: $PKGS_HINT)"
done
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || skip "no $BUSYBOX (install busybox-static)"
# busybox-static's binary must not need a loader inside the initramfs.
if command -v ldd >/dev/null 2>&1 && ldd "$BUSYBOX" >/dev/null 2>&1; then
  skip "$BUSYBOX is dynamically linked (install busybox-static)"
fi
for tool in /usr/bin/rdma /usr/bin/rping /usr/bin/ib_write_bw /usr/bin/ibv_devices; do
  [ -x "$tool" ] || skip "no $tool on this host; the guest runs the host's binaries (install: $PKGS_HINT)"
done
ls /usr/lib/*/libibverbs/librxe-* >/dev/null 2>&1 ||
  skip "no rxe verbs provider on this host (install ibverbs-providers)"

mkdir -p "$CACHE"

# --- which kernel -----------------------------------------------------------
KPKG=${SOCKGATE_VM_KERNEL_PKG:-}
if [ -z "$KPKG" ]; then
  KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1 || true)
fi
KVERSION=
if [ -n "$KPKG" ]; then
  KVERSION=$(apt-cache policy "$KPKG" 2>/dev/null | sed -n 's/^ *Candidate: //p' | head -1 || true)
  [ "$KVERSION" = "(none)" ] && KVERSION=
fi
if [ -z "$KPKG" ] || [ -z "$KVERSION" ]; then
  # No apt lists (apt-get update not run, or offline): use the newest cached kernel.
  LAST=$(ls -d "$CACHE"/linux-image-*_* 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$LAST" ] || skip "apt cannot name a Debian kernel package (run apt-get update) and none is cached in $CACHE"
  KPKG=$(basename "$LAST" | sed 's/_.*//')
  KVERSION=$(basename "$LAST" | sed 's/^[^_]*_//')
  log "apt cannot resolve the kernel; using cached $KPKG $KVERSION"
fi
KVER=${KPKG#linux-image-}
KDIR=$CACHE/${KPKG}_$KVERSION
mkdir -p "$KDIR"

# --- fetch and unpack the kernel (once per version) --------------------------
if [ ! -s "$KDIR/vmlinuz" ] || [ ! -d "$KDIR/root/lib/modules/$KVER" ]; then
  DEB=$(ls "$KDIR"/*.deb 2>/dev/null | head -1 || true)
  if [ -z "$DEB" ]; then
    log "downloading $KPKG=$KVERSION"
    DL=$(mktemp -d "$KDIR/dl.XXXXXX")
    # apt drops privileges to _apt for downloads; let it write there.
    chmod 755 "$DL"
    if ! (cd "$DL" && timeout 600 apt-get download -q -o APT::Sandbox::User=root "$KPKG=$KVERSION" >&2); then
      rm -rf "$DL"
      skip "apt-get download $KPKG=$KVERSION failed (no network to Debian's mirror?)"
    fi
    mv "$DL"/*.deb "$KDIR"/
    rmdir "$DL"
    DEB=$(ls "$KDIR"/*.deb | head -1)
  fi
  log "unpacking $(basename "$DEB")"
  rm -rf "$KDIR/root.tmp"
  mkdir -p "$KDIR/root.tmp"
  dpkg-deb -x "$DEB" "$KDIR/root.tmp"
  depmod -b "$KDIR/root.tmp" "$KVER"
  rm -rf "$KDIR/root"
  mv "$KDIR/root.tmp" "$KDIR/root"
  cp "$KDIR/root/boot/vmlinuz-$KVER" "$KDIR/vmlinuz.tmp"
  mv "$KDIR/vmlinuz.tmp" "$KDIR/vmlinuz"
  rm -f "$DEB" # the unpacked tree is what is kept
fi

# --- an uncompressed vmlinux for PVH boot ------------------------------------
# qemu boots an ELF vmlinux through its PVH entry point (CONFIG_PVH): no BIOS
# real-mode loader and no in-guest xz decompression, about 9 s less per boot
# under TCG. Debian's bzImage carries an xz stream; fall back to the bzImage
# when it cannot be extracted.
if [ ! -e "$KDIR/vmlinux" ]; then
  POS=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$KDIR/vmlinuz" 2>/dev/null | head -1 | cut -d: -f1 || true)
  if [ -n "$POS" ]; then
    # The stream is followed by the rest of the bzImage: xz complains about that, the ELF is whole.
    # (xz-utils: busybox's unxz lacks the x86 BCJ filter the kernel image uses)
    if command -v xz >/dev/null 2>&1; then
      tail -c +$((POS + 1)) "$KDIR/vmlinuz" | xz -dc >"$KDIR/vmlinux.tmp" 2>/dev/null || true
    fi
  else
    # Debian's 6.12 kernels are zstd-compressed (CONFIG_KERNEL_ZSTD): same idea, zstd's frame magic.
    POS=$(LC_ALL=C grep -obUaP '\x28\xb5\x2f\xfd' "$KDIR/vmlinuz" 2>/dev/null | head -1 | cut -d: -f1 || true)
    if [ -n "$POS" ] && command -v zstd >/dev/null 2>&1; then
      tail -c +$((POS + 1)) "$KDIR/vmlinuz" | zstd -dcq >"$KDIR/vmlinux.tmp" 2>/dev/null || true
    fi
  fi
  if [ -s "$KDIR/vmlinux.tmp" ] && [ "$(head -c 4 "$KDIR/vmlinux.tmp" | od -An -c | tr -d ' ')" = '177ELF' ] &&
    grep -q '^CONFIG_PVH=y' "$KDIR/root/boot/config-$KVER"; then
    mv "$KDIR/vmlinux.tmp" "$KDIR/vmlinux"
  else
    log "no PVH vmlinux could be extracted; booting the bzImage (slower)"
    rm -f "$KDIR/vmlinux.tmp"
  fi
fi
BOOT_KERNEL=$KDIR/vmlinuz
[ -s "$KDIR/vmlinux" ] && BOOT_KERNEL=$KDIR/vmlinux

# --- module load order -------------------------------------------------------
ORDER=$(mktemp)
trap 'rm -f "$ORDER"' EXIT
for m in $MODULES; do
  modprobe -d "$KDIR/root" -S "$KVER" --show-depends "$m" >"$ORDER.one" 2>&1 ||
    { cat "$ORDER.one" >&2; rm -f "$ORDER.one"; echo "prepare: module $m not found in $KPKG" >&2; exit 1; }
  # lines: "insmod /abs/path.ko [options]" or "builtin name"
  sed -n "s#^insmod $KDIR/root/##p" "$ORDER.one" | awk '{print $1}' >>"$ORDER"
done
rm -f "$ORDER.one"
# keep the first occurrence of each module
awk '!seen[$0]++' "$ORDER" >"$ORDER.u" && mv "$ORDER.u" "$ORDER"

# --- initramfs (once per init.sh + module list + busybox) --------------------
HASH=$( { cat "$HERE/init.sh" "$HERE/prepare.sh" "$ORDER"; sha256sum "$BUSYBOX"; echo "$KPKG $KVERSION"; } | sha256sum | cut -c1-16)
INITRD=$KDIR/initramfs-$HASH.cpio.gz
if [ ! -s "$INITRD" ]; then
  log "building $(basename "$INITRD")"
  STAGE=$(mktemp -d "$KDIR/stage.XXXXXX")
  mkdir -p "$STAGE/bin" "$STAGE/dev" "$STAGE/proc" "$STAGE/sys" "$STAGE/mnt/host" "$STAGE/etc" "$STAGE/tmp"
  cp "$BUSYBOX" "$STAGE/bin/busybox"
  for a in $("$BUSYBOX" --list); do
    [ "$a" = busybox ] || ln -s busybox "$STAGE/bin/$a"
  done
  cp "$HERE/init.sh" "$STAGE/init"
  chmod 755 "$STAGE/init"
  : >"$STAGE/etc/sockgate-modules"
  while read -r ko; do
    mkdir -p "$STAGE/$(dirname "$ko")"
    # 6.12 ships modules compressed (CONFIG_MODULE_COMPRESS_XZ); busybox insmod wants them plain.
    case "$ko" in
      *.ko.xz) xz -dc "$KDIR/root/$ko" >"$STAGE/${ko%.xz}"; ko=${ko%.xz} ;;
      *.ko.zst) zstd -dcq "$KDIR/root/$ko" >"$STAGE/${ko%.zst}"; ko=${ko%.zst} ;;
      *) cp "$KDIR/root/$ko" "$STAGE/$ko" ;;
    esac
    echo "$ko" >>"$STAGE/etc/sockgate-modules"
    # Without the appended signature a module loads much faster under TCG (no RSA
    # check); the guest kernel does not enforce signatures and is thrown away.
    if command -v strip >/dev/null 2>&1; then strip --strip-debug "$STAGE/$ko"; fi
  done <"$ORDER"
  echo "$KPKG $KVERSION" >"$STAGE/etc/sockgate-kernel"
  # The kernel opens /dev/console for /init before anything is mounted.
  if [ "$(id -u)" = 0 ]; then mknod -m 600 "$STAGE/dev/console" c 5 1; fi
  (cd "$STAGE" && find . -print | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -1 >"$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
  rm -rf "$STAGE"
  # older initramfs images of this kernel are stale
  for old in "$KDIR"/initramfs-*.cpio.gz; do
    [ "$old" = "$INITRD" ] || rm -f "$old"
  done
fi

{
  echo "KERNEL=$BOOT_KERNEL"
  echo "INITRD=$INITRD"
  echo "KVER=$KVER"
  echo "KPKG=$KPKG"
  echo "KVERSION=$KVERSION"
} >"$CACHE/current.env.tmp"
mv "$CACHE/current.env.tmp" "$CACHE/current.env"
cat "$CACHE/current.env"
