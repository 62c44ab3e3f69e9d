#!/bin/sh
# GET /cgi-bin/dmesg: the guest kernel's log, for checks without SSH.
echo "Content-Type: text/plain"
echo
dmesg
