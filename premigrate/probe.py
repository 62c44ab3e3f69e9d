"""The boot probe: a tiny script put into a throw-away overlay of the disk to be booted.

At boot it prints, on the serial console, the sha256 of files checksummed at inspection time
and whether the network came up; the harness reads those lines. No credentials are needed,
and the converted disk itself is never touched (the overlay is deleted after the boot).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any, Literal

MARK = "VIRTPROOF-PROBE"
SCRIPT_PATH = "/usr/local/sbin/virtproof-probe"
UNIT_PATH = "/etc/systemd/system/virtproof-probe.service"
MICRO_HOOK = "/etc/virtproof/boot.d/50-probe"

InitSystem = Literal["systemd", "micro", "sysv", "unknown"]


def probe_script(files: list[str], net_wait_s: int = 45) -> str:
    quoted = " ".join(shlex.quote(f) for f in files)
    return f"""#!/bin/sh
# virtproof boot probe (only in a temporary overlay)
c=/dev/ttyS0
p() {{ echo "{MARK} $*" > $c; }}
p begin
for f in {quoted}; do
  if [ -r "$f" ]; then s=$(sha256sum "$f"); p sha256 "${{s%% *}}" "$f"; else p missing "$f"; fi
done
i=0
while [ $i -lt {net_wait_s} ]; do
  a=$(ip -4 addr show scope global 2>/dev/null | while read k v rest; do [ "$k" = inet ] && echo "$v"; done)
  if [ -n "$a" ]; then p net-up $a $(ls /sys/class/net | tr '\\n' ' '); break; fi
  sleep 1; i=$((i + 1))
done
[ $i -ge {net_wait_s} ] && p net-down $(ls /sys/class/net | tr '\\n' ' ')
p end
"""


UNIT = f"""[Unit]
Description=virtproof boot probe
After=local-fs.target

[Service]
Type=simple
ExecStart={SCRIPT_PATH}

[Install]
WantedBy=multi-user.target
"""


def install_probe(g: Any, init: InitSystem, files: list[str]) -> bool:
    """Write the probe into the mounted (read-write) overlay. False: no way to hook this init."""
    script = probe_script(files)
    if init == "systemd":
        g.mkdir_p("/usr/local/sbin")
        g.write(SCRIPT_PATH, script.encode())
        g.chmod(0o755, SCRIPT_PATH)
        g.write(UNIT_PATH, UNIT.encode())
        g.mkdir_p("/etc/systemd/system/multi-user.target.wants")
        g.ln_sf(UNIT_PATH, "/etc/systemd/system/multi-user.target.wants/virtproof-probe.service")
        return True
    if init == "micro":
        g.mkdir_p("/etc/virtproof/boot.d")
        g.write(MICRO_HOOK, script.encode())
        g.chmod(0o755, MICRO_HOOK)
        return True
    return False


@dataclass(frozen=True)
class ProbeReport:
    begun: bool
    ended: bool
    checksums: dict[str, str]
    missing: tuple[str, ...]
    net_up: str | None  # "10.0.2.15/24 enp1s0 lo"
    net_down: str | None


_LINE = re.compile(rf"{MARK} (\S+) ?([^\r\n\x1b]*)")


def parse_probe(console: str) -> ProbeReport:
    checksums: dict[str, str] = {}
    missing: list[str] = []
    begun = ended = False
    net_up = net_down = None
    for match in _LINE.finditer(console):
        kind, rest = match.group(1), match.group(2).strip()
        if kind == "begin":
            begun = True
        elif kind == "end":
            ended = True
        elif kind == "sha256":
            parts = rest.split(None, 1)
            if len(parts) == 2:
                checksums[parts[1]] = parts[0]
        elif kind == "missing":
            missing.append(rest)
        elif kind == "net-up":
            net_up = rest
        elif kind == "net-down":
            net_down = rest
    return ProbeReport(begun, ended, checksums, tuple(missing), net_up, net_down)
