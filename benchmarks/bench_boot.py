"""Boot benchmark: time-to-SSH of the micro guest with a bare qemu command vs through virtproof.

Both boot the same kernel and initramfs with the same devices under the same accelerator, on
loopback, alternating so that machine noise hits both alike; both are timed from just before
the process starts to the SSH banner, read by the same poller. Prints the medians and their
ratio: the harness's overhead (goal: at most 5 %).

    .venv/bin/python benchmarks/bench_boot.py [--runs N]
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import subprocess
import tempfile
import time

from virtproof.core.ports import free_port
from virtproof.lab.factory import open_lab
from virtproof.lab.guest import wait_for_banner
from virtproof.lab.images.store import ImageStore
from virtproof.lab.platform import Endpoint, VMSpec
from virtproof.lab.qemu.platform import QemuPlatform, client_key_path
from virtproof.scenarios.model import parse_scenario

SCENARIO = "name: bench-boot\nlab: {kind: qemu, nodes: 1, network: loopback, accel: auto}\nsuites: {boot: {}}\n"


def bare_boot(platform: QemuPlatform, accel: str) -> float:
    image = ImageStore.default().get("micro")
    key = base64.b64encode(client_key_path(platform.state).with_suffix(".pub").read_bytes().strip()).decode()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="vp-bench-bare-") as tmp:
        argv = [
            "qemu-system-x86_64",
            "-machine",
            "q35",
            "-accel",
            "tcg,tb-size=64" if accel == "tcg" else "kvm",
            "-cpu",
            "max" if accel == "tcg" else "host",
            "-smp",
            "1",
            "-m",
            "256",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            f"file:{tmp}/console.log",
            "-kernel",
            str(image.kernel),
            "-initrd",
            str(image.initrd),
            "-append",
            f"console=ttyS0 quiet panic=-1 vp.name=bare vp.key={key} vp.ip=10.0.2.15/24 vp.gw=10.0.2.2",
            "-netdev",
            f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device",
            "virtio-net-pci,netdev=n0",
            "-object",
            "rng-random,id=rng0,filename=/dev/urandom",
            "-device",
            "virtio-rng-pci,rng=rng0",
        ]
        start = time.time()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ready = wait_for_banner(Endpoint("127.0.0.1", port), 120, alive=lambda: proc.poll() is None)
        finally:
            proc.kill()
            proc.wait()
    return ready - start


def harness_boot(platform: QemuPlatform, n: int) -> float:
    vm = platform.create_vm(VMSpec(f"bench-{n}", memory_mib=256, scratch_disk_mib=0))
    try:
        created = vm.timeline.get("created")
        assert created is not None
        platform.wait_running(vm, 60)
        ready = wait_for_banner(vm.ssh_endpoint(), 120, alive=vm.alive)
        return ready - created.timestamp
    finally:
        platform.delete_vm(vm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    handle = open_lab(parse_scenario(SCENARIO), f"bench-boot-{os.getpid()}")
    platform = handle.up()
    assert isinstance(platform, QemuPlatform)
    bare: list[float] = []
    harness: list[float] = []
    try:
        for i in range(args.runs):
            bare.append(bare_boot(platform, platform.accel))
            harness.append(harness_boot(platform, i))
            print(f"run {i + 1}/{args.runs}: bare {bare[-1]:.3f} s   virtproof {harness[-1]:.3f} s", flush=True)
    finally:
        platform.close()
        handle.down()
    mb, mh = statistics.median(bare), statistics.median(harness)
    print(f"\naccel {platform.accel}, {args.runs} boots each, time to SSH banner (median)")
    print(f"  bare qemu   {mb:.3f} s   (min {min(bare):.3f}, max {max(bare):.3f})")
    print(f"  virtproof   {mh:.3f} s   (min {min(harness):.3f}, max {max(harness):.3f})")
    print(f"  ratio virtproof/bare = {mh / mb:.3f}  (goal <= 1.05)")


if __name__ == "__main__":
    main()
