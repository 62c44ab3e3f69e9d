"""A stock Debian 12 guest configured only by virtproof's cloud-init user-data runs the suites'
memory workloads (issue 12 item 9), under qemu TCG, with nothing of KubeVirt in the way.

- The disk: Debian 12 with cloud-init, built by ``virtproof.premigrate.fixtures.cloudimage`` with
  mmdebstrap (cached); no user, host key or virtproof file in it.
- The seed: the user-data the KubeVirt backend puts in each VM's cloud-init Secret
  (``manifests.cloud_init_user_data`` with ``cloudinit.workload_files()``: the run's client key, a
  pinned host key, vp-memcheck, vp-dirty, usleep) on a ``cidata`` vfat disk, as KubeVirt's
  ``cloudInitNoCloud`` volume hands it to the guest.
- The boot: ``qemu-system-x86_64 -accel tcg`` (``--accel kvm`` where KVM works), virtio disk and
  NIC, user networking with SSH forwarded to 127.0.0.1.
- The proof: SSH in as the cloud-init user with the run's key, the host key checked against the
  pinned one (``virtproof.lab.guest.GuestSession``); the suites' own commands then start
  vp-memcheck and verify every page (``suites.engines.integrity``), corrupt one page and see it
  found, start vp-dirty as the migration suite does (its pid, ``kill -0`` by the same user) and
  see it rewrite its region; the HTTP responder answers on port 80.

    .venv/bin/python benchmarks/bench_cloudinit.py [--accel tcg|kvm] [--json]

Prints each step's seconds; exit 0 when every check passed, 1 when one failed, 2 when it could
not run. Nothing is left behind (qemu killed, the work directory removed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from virtproof.core.ports import free_port
from virtproof.lab.guest import GuestSession, wait_for_banner
from virtproof.lab.images.cloudinit import workload_files
from virtproof.lab.kubevirt.keys import run_keys
from virtproof.lab.kubevirt.manifests import CloudInit, cloud_init_user_data
from virtproof.lab.platform import Endpoint, GuestAccess
from virtproof.premigrate.fixtures.bootdisk import FixtureBuildError
from virtproof.premigrate.fixtures.cloudimage import cloud_disk, nocloud_seed, overlay
from virtproof.scenarios.migration import MemcheckWorkload
from virtproof.suites.engines.integrity import corrupt_memcheck, start_memcheck, stop_memcheck, verify_memcheck

USER = "debian"
BOOT_TIMEOUT_S = 900.0


def run(accel: str, memory_mib: int = 1024) -> dict[str, Any]:
    steps: dict[str, float] = {}
    checks: dict[str, bool] = {}
    started = time.monotonic()
    disk = cloud_disk()
    steps["image_s"] = round(time.monotonic() - started, 1)
    with tempfile.TemporaryDirectory(prefix="vp-bench-cloudinit-") as tmp:
        work = Path(tmp)
        keys = run_keys(work / "keys")
        user_data = cloud_init_user_data(CloudInit(USER, keys.client_public, keys.host_private_pem, keys.host_public,
                                                   files=workload_files()))
        steps["user_data_kib"] = round(len(user_data.encode()) / 1024, 1)
        seed = nocloud_seed(work / "seed.img", user_data, "vp-cloudinit-1", "vp-cloudinit")
        root = overlay(disk, work / "root.qcow2")
        ssh_port, http_port = free_port(), free_port()
        console = work / "console.log"
        qemu = subprocess.Popen(
            ["qemu-system-x86_64", "-accel", accel, "-m", str(memory_mib), "-smp", "2", "-nodefaults",
             "-display", "none", "-serial", f"file:{console}",
             "-drive", f"file={root},if=virtio,format=qcow2", "-drive", f"file={seed},if=virtio,format=raw",
             "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22,hostfwd=tcp:127.0.0.1:{http_port}-:80",
             "-device", "virtio-net-pci,netdev=n0", "-device", "virtio-rng-pci"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        booted = time.monotonic()
        try:
            endpoint = Endpoint("127.0.0.1", ssh_port)
            wait_for_banner(endpoint, BOOT_TIMEOUT_S, alive=lambda: qemu.poll() is None)
            steps["boot_to_ssh_banner_s"] = round(time.monotonic() - booted, 1)
            access = GuestAccess(USER, work / "keys" / "id_ed25519", keys.host_public)
            session = _login(endpoint, access, time.monotonic() + 300)  # cloud-init may still write the user
            steps["boot_to_login_s"] = round(time.monotonic() - booted, 1)
            checks["host_key_pinned_by_cloud_init"] = True  # GuestSession refuses any other key
            with session:
                def sh(command: str) -> str:
                    return session.run(command, timeout=300).stdout

                sh("cloud-init status --wait >/dev/null 2>&1 || true")
                steps["boot_to_cloud_init_done_s"] = round(time.monotonic() - booted, 1)
                modes = sh("stat -c '%n %a %U' /usr/local/bin/vp-memcheck /usr/local/bin/vp-dirty "
                           "/usr/local/bin/usleep")
                checks["files_written_0755_root"] = all(line.endswith(" 755 root") for line in modes.split("\n")
                                                        if line) and modes.count("\n") == 3
                checks["login_user_is_not_root"] = sh("id -u").strip() != "0"
                workload = MemcheckWorkload(kind="memcheck", mib=32, rate_mibps=8, hot_pages=16)
                t0 = time.monotonic()
                pid = start_memcheck(sh, workload)
                report = verify_memcheck(sh)
                steps["memcheck_start_and_verify_s"] = round(time.monotonic() - t0, 1)
                checks["memcheck_runs_and_verifies_clean"] = pid.isdigit() and report.bad_pages_total == 0 \
                    and report.mib == 32
                corrupt_memcheck(sh, 7, "flip")
                damaged = verify_memcheck(sh)
                checks["memcheck_finds_a_corrupted_page"] = damaged.bad_pages_total >= 1
                stop_memcheck(sh)
                # vp-dirty as suites/engines/migration.py start_guest starts it
                out = sh("setsid vp-dirty 16 50 >/dev/null 2>&1 </dev/null &"
                         " i=0; while [ ! -s /run/vp-dirty.pid ] && [ $i -lt 50 ]; do usleep 100000; i=$((i+1)); done;"
                         " cat /run/vp-dirty.pid")
                dirty_pid = out.strip().splitlines()[-1] if out.strip() else ""
                time.sleep(2)
                alive = sh(f"kill -0 {dirty_pid} 2>/dev/null && echo workload-running || echo workload-gone")
                size = sh("stat -c %s /dev/shm/vp-dirty 2>/dev/null || echo 0").strip()
                checks["vp_dirty_runs_as_the_user"] = dirty_pid.isdigit() and "workload-running" in alive \
                    and int(size or 0) >= 1024 * 1024
                sh(f"kill {dirty_pid} 2>/dev/null; true")
            checks["http_responder_answers"] = _http_ok(http_port)
        finally:
            qemu.kill()
            qemu.wait(30)
        steps["total_s"] = round(time.monotonic() - started, 1)
        tail = console.read_text(errors="replace")[-3000:] if console.exists() else ""
    return {"accel": accel, "steps": steps, "checks": checks, "ok": all(checks.values()),
            "console_tail": tail if not all(checks.values()) else ""}


def _login(endpoint: Endpoint, access: GuestAccess, deadline: float) -> GuestSession:
    while True:
        try:
            return GuestSession(endpoint, access, timeout=30)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def _http_ok(port: int) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                return bool(response.status == 200 and response.read().strip())
        except OSError:  # refused, reset, timed out: not up yet
            time.sleep(1)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accel", choices=("tcg", "kvm"), default="tcg")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        result = run(args.accel)
    except (FixtureBuildError, OSError, subprocess.SubprocessError) as exc:
        print(f"bench_cloudinit: cannot run: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, value in result["steps"].items():
            print(f"{name:32} {value}")
        for name, ok in result["checks"].items():
            print(f"{name:32} {'ok' if ok else 'FAILED'}")
        if result["console_tail"]:
            print(result["console_tail"])
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
