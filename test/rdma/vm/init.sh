#!/bin/sh
# /init of the sockgate test VM: busybox sh, inside the initramfs built by prepare.sh.
#
# 1. loads the modules listed in /etc/sockgate-modules (dependency order);
# 2. mounts the host root read-only over 9p (tag hostroot) at /mnt/host, with the
#    guest's own /proc, /sys, /dev and tmpfs /tmp, /run, /var/tmp over it, and the
#    per-run control directory (tag ctl, writable) at /run/sockgate/ctl;
# 3. reads ctl/vm.env (SOCKGATE_VM_NAME, SOCKGATE_VM_IP, SOCKGATE_VM_PEER,
#    SOCKGATE_VM_RXE, SOCKGATE_VM_MTU), sets up eth0 and the Soft-RoCE device rxe0 on it (in the
#    initial network namespace: rxe does not work in others on this kernel), and
#    waits until the peer VM answers ping;
# 4. runs ctl/cmd.sh chrooted into the host root, stdin from /dev/null, output
#    on the serial console (through a pipe, so the command does not see a tty);
# 5. prints SOCKGATE_VM_EXIT=<status> and powers off at once.
#
# Any failure before the command prints SOCKGATE_VM_EXIT=125 with the reason.

PATH=/bin
export PATH
R=/mnt/host
CTL=/run/sockgate/ctl

mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1

finish() {
  echo "SOCKGATE_VM_EXIT=$1"
  sync
  poweroff -f
  sleep 10
  echo o >/proc/sysrq-trigger
}
fail() {
  echo "sockgate-vm: $*"
  dmesg | tail -n 20 | sed 's/^/sockgate-vm: dmesg: /'
  finish 125
}

mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
TRACE=0
grep -q 'sockgate.trace' /proc/cmdline && TRACE=1
# With sockgate.trace on the kernel command line: time each boot step.
trace() { [ $TRACE = 1 ] && echo "sockgate-vm: $(cut -d' ' -f1 /proc/uptime)s $*"; return 0; }
# Keep the console for the command's output: only errors from the kernel.
[ $TRACE = 1 ] || echo 3 >/proc/sys/kernel/printk
trace "init"

while read -r ko; do
  insmod "/$ko" || fail "insmod $ko failed"
done </etc/sockgate-modules
trace "modules loaded"

# The virtio devices probe as their modules load; give the 9p channels a moment.
mount9p() { # tag dir options
  i=0
  while [ $i -lt 50 ]; do
    mount -t 9p -o "trans=virtio,version=9p2000.L,msize=512000,$3" "$1" "$2" 2>/dev/null && return 0
    i=$((i + 1))
    sleep 0.1
  done
  return 1
}
mount9p hostroot $R ro,cache=loose || fail "cannot mount the host root (9p tag hostroot)"
trace "host root mounted"
mount -t proc proc $R/proc || fail "mount $R/proc"
mount -t sysfs sysfs $R/sys || fail "mount $R/sys"
mount -t devtmpfs devtmpfs $R/dev || fail "mount $R/dev"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts || fail "mount devpts"
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm || fail "mount /dev/shm"
mount -t tmpfs -o mode=755 tmpfs $R/run || fail "mount /run"
# The host's /tmp stays reachable at /run/host-tmp (a checkout under /tmp, as CI may
# make, is bound back to its own path by cmd.sh); the guest gets a writable /tmp.
mkdir -p $R/run/host-tmp
mount -o bind,ro $R/tmp $R/run/host-tmp || fail "bind the host's /tmp"
mount -t tmpfs -o mode=1777 tmpfs $R/tmp || fail "mount /tmp"
[ -d $R/var/tmp ] && { mount -t tmpfs -o mode=1777 tmpfs $R/var/tmp || fail "mount /var/tmp"; }
[ -d $R/sys/kernel/debug ] && mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
mkdir -p $R$CTL
mount9p ctl $R$CTL cache=none || fail "cannot mount the control directory (9p tag ctl)"
[ -r $R$CTL/vm.env ] || fail "no $CTL/vm.env"
. $R$CTL/vm.env
trace "mounts done"

hostname "sockgate-${SOCKGATE_VM_NAME:-vm}"
ip link set lo up || fail "lo up"
if [ -n "${SOCKGATE_VM_IP:-}" ]; then
  [ -e /sys/class/net/eth0 ] || fail "no eth0 (virtio-net) in the guest"
  ip addr add "$SOCKGATE_VM_IP" dev eth0 || fail "ip addr add $SOCKGATE_VM_IP"
  if [ -n "${SOCKGATE_VM_MTU:-}" ]; then ip link set eth0 mtu "$SOCKGATE_VM_MTU" || fail "eth0 mtu $SOCKGATE_VM_MTU"; fi
  ip link set eth0 up || fail "eth0 up"
fi
if [ "${SOCKGATE_VM_RXE:-0}" = 1 ]; then
  chroot $R /usr/bin/rdma link add rxe0 type rxe netdev eth0 || fail "rdma link add rxe0 type rxe netdev eth0"
  i=0
  until grep -q ACTIVE /sys/class/infiniband/rxe0/ports/1/state 2>/dev/null; do
    i=$((i + 1))
    [ $i -gt 100 ] && fail "rxe0 port did not become ACTIVE: $(chroot $R /usr/bin/rdma link show 2>&1)"
    sleep 0.1
  done
fi
trace "rxe0 active"
if [ -n "${SOCKGATE_VM_PEER:-}" ]; then
  # Both ends up before either command starts; the peer may still be booting.
  i=0
  until ping -c 1 -W 1 "$SOCKGATE_VM_PEER" >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -gt 180 ] && fail "peer $SOCKGATE_VM_PEER did not answer ping"
    sleep 0.5
  done
fi

echo "SOCKGATE_VM_READY name=${SOCKGATE_VM_NAME:-} uptime=$(cut -d' ' -f1 /proc/uptime)s kernel=$(uname -r)"
rm -f /tmp/rc
{ chroot $R /bin/sh $CTL/cmd.sh </dev/null; echo $? >/tmp/rc; } 2>&1 | cat
rc=$(cat /tmp/rc 2>/dev/null)
finish "${rc:-125}"
