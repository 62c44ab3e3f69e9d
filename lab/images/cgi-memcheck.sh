#!/bin/sh
# GET /cgi-bin/memcheck: `vp-memcheck verify` (its JSON report, then {"exit": N}), for checks without SSH.
echo "Content-Type: application/json"
echo
vp-memcheck verify -t 120 2>&1
echo "{\"exit\": $?}"
