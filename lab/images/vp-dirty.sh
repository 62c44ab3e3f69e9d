#!/bin/sh
# vp-dirty MIB [MIBPS]: rewrite MIB MiB of /dev/shm forever, at most MIBPS MiB/s (0: flat out).
# Start it detached over SSH: setsid vp-dirty 48 0 >/dev/null 2>&1 < /dev/null &
MIB=${1:-32} RATE=${2:-0}
dd if=/dev/urandom of=/dev/shm/vp-chunk bs=1M count=1 2>/dev/null
echo $$ > /run/vp-dirty.pid
i=0
while :; do
  dd if=/dev/shm/vp-chunk of=/dev/shm/vp-dirty bs=1M seek=$i count=1 conv=notrunc 2>/dev/null
  i=$(( (i + 1) % MIB ))
  [ "$RATE" -gt 0 ] && usleep $((1000000 / RATE))
done
