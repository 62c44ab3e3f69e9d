"""The kubeadm lab's step runner over real SSH: the micro guest under qemu is the host."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from virtproof.lab.clusters.kubeadm import KubeadmCluster
from virtproof.lab.clusters.ssh import SSHError, SSHExecutor
from virtproof.lab.clusters.steps import Step, StepFailed, run_steps
from virtproof.lab.factory import open_lab
from virtproof.lab.guest import wait_for_banner
from virtproof.lab.images.micro import GuestImage
from virtproof.lab.platform import VMSpec
from virtproof.lab.qemu.platform import QemuPlatform
from virtproof.scenarios.model import parse_scenario

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def host(micro_image: GuestImage, leftovers: Callable[[str], list[str]]) -> Iterator[SSHExecutor]:
    lab_id = f"kvssh-{secrets.token_hex(3)}"
    scenario = parse_scenario("name: kvssh\nlab: {kind: qemu, nodes: 1, network: loopback}\n"
                              "guest: {image: micro, memory: 160Mi}\nsuites: {boot: {}}\n")
    handle = open_lab(scenario, lab_id)
    platform = handle.up()
    assert isinstance(platform, QemuPlatform)
    try:
        vm = platform.create_vm(VMSpec(name="host", memory_mib=160, scratch_disk_mib=0))
        wait_for_banner(vm.ssh_endpoint(), 120)
        access = platform.guest_access("micro")
        ep = vm.ssh_endpoint()
        ex = SSHExecutor(ep.host, access.user, access.private_key, ep.port, access.host_key,
                         platform.state.directory / "known_hosts")
        yield ex
        ex.close()
    finally:
        platform.close()
        handle.down()
    assert leftovers(lab_id) == []


def test_steps_run_over_ssh_idempotently_with_retries(host: SSHExecutor) -> None:
    flaky = ("n=$(cat /tmp/vp-count 2>/dev/null || echo 0); echo $((n+1)) > /tmp/vp-count; "
             "[ $n -ge 1 ] && echo done > /tmp/vp-flaky")
    steps = [
        Step("flaky", flaky, check="test -f /tmp/vp-flaky", retries=2, host="h"),
        Step("manifest", "cat > /tmp/vp-manifest.yaml", stdin="kind: KubeVirt\n",
             check="grep -q KubeVirt /tmp/vp-manifest.yaml", host="h"),
    ]
    first = run_steps(steps, lambda _: host, backoff_s=0.05)
    assert first.entries == [("flaky", "retried 1"), ("manifest", "done")]
    again = run_steps(steps, lambda _: host, backoff_s=0.05)
    assert again.entries == [("flaky", "skipped"), ("manifest", "skipped")]
    assert host.execute("cat /tmp/vp-count; cat /tmp/vp-manifest.yaml", None, 30).output == "2\nkind: KubeVirt\n"


def test_a_failing_step_names_the_host_and_output(host: SSHExecutor) -> None:
    with pytest.raises(StepFailed, match=r"step broken on root@[\d.]+:\d+ failed \(exit 7\): no such"):
        run_steps([Step("broken", "echo no such thing >&2; exit 7", host="h")], lambda _: host, backoff_s=0.01)


def test_kubeadm_prerequisite_step_runs_its_check_on_the_host(host: SSHExecutor, tmp_path: Path) -> None:
    # The micro guest is no kubeadm host: the real first step's check fails, the step runs and
    # fails with the host's own error, which the runner reports with the step name.
    text = ("name: k\nlab:\n  kind: kubeadm\n  hosts: [{address: 127.0.0.1, key: /k, role: control-plane}]\n"
            "suites: {boot: {}}\n")
    cluster = KubeadmCluster(parse_scenario(text).lab, tmp_path)  # type: ignore[arg-type]
    from virtproof.lab.clusters.kubeadm import host_steps

    step = host_steps(cluster.spec.hosts[0], "1.34")[0]
    with pytest.raises(StepFailed, match=r"step kernel-prereqs on root@[\d.]+:\d+ failed \(exit 1\): modprobe"):
        run_steps([step], lambda _: host, backoff_s=0.01)


def test_wrong_pinned_host_key_is_refused(host: SSHExecutor) -> None:
    other = SSHExecutor(host.address, host.user, host.key, host.port,
                        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
                        host.known_hosts)
    with pytest.raises(SSHError, match="not the pinned one"):
        other.execute("true", None, 10)


def test_emulation_is_decided_on_the_workers_where_vms_run(host: SSHExecutor, tmp_path: Path) -> None:
    """Issue 12 item 13: the control plane is never asked; each worker is, over real SSH (the micro
    guest has no /dev/kvm, so the answer is 'emulate')."""
    text = ("name: k\nlab:\n  kind: kubeadm\n  hosts: [{address: 10.9.9.1, key: /k, role: control-plane},\n"
            "    {address: 127.0.0.1, port: 22, key: /k}, {address: 127.0.0.2, port: 22, key: /k}]\n"
            "suites: {boot: {}}\n")
    cluster = KubeadmCluster(parse_scenario(text).lab, tmp_path)  # type: ignore[arg-type]
    assert [h.address for h in cluster.runs_vms()] == ["127.0.0.1", "127.0.0.2"]
    asked: list[str] = []
    cluster._executors = {f"{h.address}:22": host for h in cluster.runs_vms()}  # both workers are the guest
    said: list[str] = []
    for worker in cluster.runs_vms():
        asked.append(worker.address)
        assert cluster.kvm_on(worker, said.append) is False
    assert asked == ["127.0.0.1", "127.0.0.2"]
    assert said == ["127.0.0.1: KVM not available", "127.0.0.2: KVM not available"]
