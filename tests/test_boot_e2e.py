"""End to end on real qemu: the quickstart runs, failures and signals clean up, pinned keys hold.

These boot real guests (TCG where KVM does not work), so they are marked ``qemu``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from virtproof.lab.factory import open_lab
from virtproof.lab.guest import GuestSession, HostKeyMismatch, generate_client_key, wait_for_banner
from virtproof.lab.images.micro import GuestImage
from virtproof.lab.platform import GuestAccess, VMSpec
from virtproof.lab.qemu.lab import QemuLabHandle
from virtproof.lab.qemu.platform import QemuPlatform, QemuVM
from virtproof.reports.results import effective_status, load_runs, read_manifest
from virtproof.scenarios.model import parse_scenario

from cli_run import CliRun

pytestmark = pytest.mark.qemu

BOOT_METRICS = {"boot.time_to_running_s", "boot.time_to_ssh_s", "boot.time_to_command_s"}


def _scenario(
    tmp_path: Path, name: str, network: str = "netns", count: int = 2, timeout: float = 120, nodes: int = 2
) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nlab: {{kind: qemu, nodes: {nodes}, accel: auto, network: {network}}}\n"
        f"guest: {{image: micro, cpus: 1, memory: 160Mi}}\n"
        f"suites:\n  boot: {{count: {count}, concurrency: 1, timeout_s: {timeout}}}\n"
    )
    return path


def test_quickstart_runs_end_to_end(
    root: None,
    project_root: Path,
    virtproof_run: Callable[..., CliRun],
    micro_image: GuestImage,
    leftovers: Callable[[str], list[str]],
) -> None:
    run = virtproof_run(project_root / "scenarios/quickstart.yaml")
    assert run.code == 0, run.output()
    run_dir = run.run_dir()
    assert run.proc.stdout.strip().splitlines()[-1] == str(run_dir)
    manifest = read_manifest(run_dir)
    assert manifest["status"] == "passed"
    assert manifest["scenario"]["name"] == "quickstart" and len(manifest["scenario"]["sha256"]) == 64
    assert manifest["host"]["accelerator"] in ("kvm", "tcg")
    assert manifest["host"]["cores"] and manifest["host"]["memory_mib"] and manifest["host"]["qemu"]
    assert manifest["versions"]["virtproof"]
    df = load_runs([run_dir])
    boot = df[df["metric"].isin(BOOT_METRICS)]
    assert boot.groupby("metric").size().to_dict() == dict.fromkeys(BOOT_METRICS, 3)
    assert set(boot["label.accel"]) == {manifest["host"]["accelerator"]}
    assert set(boot["label.platform"]) == {"qemu"} and set(boot["label.image"]) == {"micro"}
    assert boot["label.vm"].nunique() == 3 and set(boot["label.node"]) <= {"node0", "node1"}
    for vm, rows in boot.groupby("label.vm"):
        by = dict(zip(rows["metric"], rows["value"], strict=True))
        assert 0 < by["boot.time_to_running_s"] < by["boot.time_to_ssh_s"] < by["boot.time_to_command_s"], vm
    for name in ("report.html", "summary.md", "junit.xml", "stats.csv", "outcomes.jsonl"):
        assert (run_dir / name).exists(), name
    assert leftovers(manifest["run_id"]) == []


def test_loopback_nodes_work_without_namespaces(
    tmp_path: Path,
    virtproof_run: Callable[..., CliRun],
    micro_image: GuestImage,
    leftovers: Callable[[str], list[str]],
) -> None:
    run = virtproof_run(_scenario(tmp_path, "loop", network="loopback", count=1))
    assert run.code == 0, run.output()
    run_dir = run.run_dir()
    assert read_manifest(run_dir)["lab"]["network"] == "loopback"
    ssh = load_runs([run_dir]).query("metric == 'boot.time_to_ssh_s'")
    assert len(ssh) == 1
    assert leftovers(run_dir.name) == []


def test_a_guest_that_never_answers_fails_is_recorded_and_cleaned_up(
    root: None,
    tmp_path: Path,
    virtproof_run: Callable[..., CliRun],
    micro_image: GuestImage,
    leftovers: Callable[[str], list[str]],
) -> None:
    # 0.3 s is far less than any guest needs to boot: every VM must fail, and be removed.
    run = virtproof_run(_scenario(tmp_path, "tooslow", count=2, timeout=0.3))
    assert run.code == 1, run.output()
    run_dir = run.run_dir()
    assert read_manifest(run_dir)["status"] == "failed"
    assert "did not come up" in run.proc.stdout and "serial console" in run.proc.stdout
    failed = load_runs([run_dir]).query("metric == 'boot.failed'")
    assert len(failed) == 2 and set(failed["value"]) == {1.0}
    outcomes = [json.loads(line) for line in (run_dir / "outcomes.jsonl").read_text().splitlines()]
    assert {o["outcome"] for o in outcomes if "test_guest_boots" in o["nodeid"]} == {"failed"}
    assert leftovers(run_dir.name) == []


def _start_run_and_wait_for_a_guest(
    tmp_path: Path, virtproof_cmd: list[str], project_root: Path
) -> tuple[subprocess.Popen[str], Path]:
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [*virtproof_cmd, "run", str(_scenario(tmp_path, "sig", count=4)), "--results", str(results)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=project_root,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if results.exists() and any(results.iterdir()):
            (run_dir,) = results.iterdir()
            ps = subprocess.run(
                ["pgrep", "-f", f"guest=vp-{run_dir.name}-"], capture_output=True, text=True, check=False
            )
            if ps.stdout.strip():
                return proc, run_dir
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("no guest started within 180 s")


def test_sigterm_mid_run_tears_everything_down(
    root: None,
    tmp_path: Path,
    virtproof_cmd: list[str],
    project_root: Path,
    micro_image: GuestImage,
    leftovers: Callable[[str], list[str]],
) -> None:
    proc, run_dir = _start_run_and_wait_for_a_guest(tmp_path, virtproof_cmd, project_root)
    assert leftovers(run_dir.name), "the run should have a qemu process and namespaces by now"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 143
    manifest = read_manifest(run_dir)
    assert manifest["status"] == "incomplete"
    assert leftovers(run_dir.name) == []


def test_lab_clean_removes_what_a_killed_run_left_and_only_that(
    root: None,
    tmp_path: Path,
    virtproof_cmd: list[str],
    project_root: Path,
    micro_image: GuestImage,
    leftovers: Callable[[str], list[str]],
) -> None:
    bystander = QemuLabHandle(
        parse_scenario(_scenario(tmp_path, "by").read_text()).lab,  # type: ignore[arg-type]
        parse_scenario(_scenario(tmp_path, "by").read_text()).guest,
        f"bystander-{os.getpid()}",
    )
    bystander.up().close()
    try:
        proc, run_dir = _start_run_and_wait_for_a_guest(tmp_path, virtproof_cmd, project_root)
        proc.kill()  # SIGKILL: no cleanup runs in the harness
        proc.wait(30)
        assert leftovers(run_dir.name), "a SIGKILLed run leaves its lab behind"
        assert effective_status(read_manifest(run_dir)) == "incomplete"
        clean = subprocess.run(
            [*virtproof_cmd, "lab", "clean"], capture_output=True, text=True, timeout=120, check=False
        )
        assert clean.returncode == 0, clean.stderr
        assert leftovers(run_dir.name) == []
        assert leftovers(bystander.lab_id), "lab clean must not touch a lab whose owner is alive"
    finally:
        bystander.down()
    assert leftovers(bystander.lab_id) == []


@pytest.fixture(scope="module")
def loopback_vm(micro_image: GuestImage) -> Iterator[tuple[QemuPlatform, QemuVM]]:
    scenario = parse_scenario("name: keys\nlab: {kind: qemu, nodes: 1, network: loopback}\nsuites: {boot: {}}\n")
    handle = open_lab(scenario, f"keys-{os.getpid()}")
    platform = handle.up()
    assert isinstance(platform, QemuPlatform)
    try:
        vm = platform.create_vm(VMSpec("keys-vm", memory_mib=160))
        platform.wait_running(vm, 60)
        wait_for_banner(vm.ssh_endpoint(), 120, alive=vm.alive)
        yield platform, vm
    finally:
        platform.close()
        handle.down()


def test_the_pinned_host_key_is_accepted(loopback_vm: tuple[QemuPlatform, QemuVM]) -> None:
    platform, vm = loopback_vm
    with GuestSession(vm.ssh_endpoint(), platform.guest_access("micro")) as session:
        assert session.run("hostname", check=True).stdout.strip() == "keys-vm"


def test_a_host_key_mismatch_is_refused(loopback_vm: tuple[QemuPlatform, QemuVM], tmp_path: Path) -> None:
    platform, vm = loopback_vm
    right = platform.guest_access("micro")
    wrong_key = generate_client_key(tmp_path / "other")  # any other ed25519 key stands in for an impostor
    wrong = GuestAccess(right.user, right.private_key, " ".join(wrong_key.split()[:2]))
    with pytest.raises(HostKeyMismatch, match="is not the pinned"):
        GuestSession(vm.ssh_endpoint(), wrong, timeout=30)


def test_the_run_client_key_is_private(loopback_vm: tuple[QemuPlatform, QemuVM]) -> None:
    platform, _ = loopback_vm
    key = platform.guest_access("micro").private_key
    assert key.stat().st_mode & 0o777 == 0o600
