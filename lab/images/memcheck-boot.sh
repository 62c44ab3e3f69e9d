#!/bin/sh
# /etc/virtproof/boot.d/50-memcheck: with the kernel parameter vp.memcheck=MIB[,MIBPS[,HOT]], start
# `vp-memcheck run -m MIB -r MIBPS -H HOT` at boot (the standalone reproducer's guests use it; the
# migration suite starts vp-memcheck over SSH instead).
V=
for arg in $(cat /proc/cmdline); do case "$arg" in vp.memcheck=*) V="${arg#vp.memcheck=}" ;; esac; done
[ -n "$V" ] || exit 0
MIB=${V%%,*} RATE=0 HOT=16
case "$V" in *,*,*) R=${V#*,}; RATE=${R%%,*}; HOT=${R#*,} ;; *,*) RATE=${V#*,} ;; esac
if vp-memcheck run -m "$MIB" -r "$RATE" -H "$HOT"; then
  echo "virtproof: memcheck $MIB MiB at $RATE MiB/s, $HOT hot pages (pid $(cat /dev/shm/vp-memcheck.pid))" > /dev/console
else
  echo "virtproof: memcheck failed to start" > /dev/console
fi
