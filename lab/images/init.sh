#!/bin/sh
# /init of the virtproof micro guest (busybox). Kernel command line parameters:
#   vp.name=NAME        hostname, also served at http://GUEST/name
#   vp.key=BASE64       base64 of an authorized_keys line for root (the run's client key)
#   vp.ip=ADDR/PREFIX   static address for eth0 (else DHCP); vp.gw=ADDR default route
#   root=DEV|UUID=..|LABEL=..   mount that root file system and switch_root into its /init
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /tmp /run
mount -t devpts devpts /dev/pts
mount -t tmpfs -o size=50% tmpfs /dev/shm

NAME=micro KEY= IP= GW= ROOT=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    vp.name=*) NAME="${arg#vp.name=}" ;;
    vp.key=*) KEY="${arg#vp.key=}" ;;
    vp.ip=*) IP="${arg#vp.ip=}" ;;
    vp.gw=*) GW="${arg#vp.gw=}" ;;
    root=*) ROOT="${arg#root=}" ;;
  esac
done

for m in $(cat /etc/virtproof/modules); do insmod "/lib/modules/$m" 2>/dev/null; done

if [ -n "$ROOT" ] && [ ! -e /etc/virtproof/switched ]; then
  dev= i=0
  while [ $i -lt 100 ]; do
    case "$ROOT" in
      UUID=*|LABEL=*) dev=$(findfs "$ROOT" 2>/dev/null) ;;
      *) [ -b "$ROOT" ] && dev="$ROOT" ;;
    esac
    [ -n "$dev" ] && break
    sleep 0.1; i=$((i + 1))
  done
  if [ -z "$dev" ]; then
    echo "virtproof: root device $ROOT not found" > /dev/console
    while :; do sleep 3600; done
  fi
  mkdir -p /newroot
  mount "$dev" /newroot && echo "virtproof: root $dev mounted" > /dev/console
  mkdir -p /newroot/etc/virtproof && touch /newroot/etc/virtproof/switched
  mount --move /dev /newroot/dev; umount /dev/pts 2>/dev/null
  umount /proc /sys 2>/dev/null
  exec switch_root /newroot /init
fi

hostname "$NAME"
echo "$NAME" > /www/name
ip link set lo up
ip link set eth0 up 2>/dev/null
if [ -n "$IP" ]; then
  ip addr add "$IP" dev eth0
  [ -n "$GW" ] && ip route add default via "$GW"
else
  udhcpc -i eth0 -q -n -t 20 -T 1 -s /etc/virtproof/udhcpc.sh >/dev/null 2>&1
fi
if [ -n "$KEY" ]; then
  echo "$KEY" | base64 -d > /root/.ssh/authorized_keys
  chmod 600 /root/.ssh/authorized_keys
fi
for hook in /etc/virtproof/boot.d/*; do [ -x "$hook" ] && "$hook" & done  # e.g. the V2V boot probe
dropbear -r /etc/dropbear/dropbear_ed25519_host_key -s -p 22
httpd -p 80 -h /www
echo "virtproof: ready $NAME" > /dev/console
while :; do sleep 3600; done
