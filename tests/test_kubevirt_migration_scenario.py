"""The migration suite's KubeVirt scenario fields (issue 12, items 6 and 12).

A migration suite on a lab with one node VMs can run on (item 12).

Where the scenario says how many nodes VMs get (kind: ``workers``, the control plane being
tainted; kubeadm: the worker hosts, or the untainted control plane alone), a migration suite
that needs two is a scenario error: exit 2, one line naming the file, the line and the field,
before anything is made. An ``existing`` cluster's nodes are known only when the run attaches:
there the suite skips, saying why (tests/test_kubevirt_backend.py checks that message on a real
control plane).

``lab.guest_network_reachable`` (item 6): where the harness runs inside the cluster's pod
network (or reaches the guests' bridge/Multus network), the prober also measures each guest on
its own address; the sim-kubevirt lab declares it itself (tests/test_sim_kubevirt_run.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from virtproof.lab.clusters.handle import KubeVirtLabHandle
from virtproof.scenarios.model import ScenarioError, parse_scenario

MIGRATION = "suites:\n  migration:\n    pattern: sequential\n"
KIND = "name: k\nlab:\n  kind: kind\n  workers: {workers}\n" + MIGRATION
KUBEADM = ("name: k\nlab:\n  kind: kubeadm\n  hosts:\n"
           "    - {{address: 10.0.0.1, key: k, role: control-plane}}\n{workers}" + MIGRATION)
WORKER = "    - {{address: 10.0.0.{i}, key: k}}\n"


def _kubeadm(workers: int) -> str:
    return KUBEADM.format(workers="".join(WORKER.format(i=i + 2).replace("{{", "{").replace("}}", "}")
                                          for i in range(workers)))


@pytest.mark.parametrize(("text", "line", "why"), [
    (KIND.format(workers=1), 5, "the lab has 1 schedulable node (lab.workers: 1; the control plane is tainted)"),
    (_kubeadm(1), 7, "the lab has 1 schedulable node (1 worker host(s) in lab.hosts; the control plane is tainted)"),
    (_kubeadm(0), 6, "the lab has 1 schedulable node (lab.hosts has only the control plane)"),
])
def test_one_schedulable_node_and_a_migration_suite_is_a_scenario_error(text: str, line: int, why: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, "s.yaml")
    message = str(err.value)
    assert message == f"s.yaml:{line}: suites: migration: pattern sequential needs at least 2 nodes; {why}", message


def test_two_schedulable_nodes_or_an_existing_cluster_are_fine() -> None:
    assert parse_scenario(KIND.format(workers=2)).suites.migration is not None
    assert parse_scenario(_kubeadm(2)).suites.migration is not None
    existing = "name: k\nlab: {kind: existing}\n" + MIGRATION  # its nodes are known only at run time
    assert parse_scenario(existing).suites.migration is not None


def test_validate_exits_2_with_one_line(tmp_path: Path, virtproof_cmd: list[str]) -> None:
    scenario = tmp_path / "kind-one-worker.yaml"
    scenario.write_text(KIND.format(workers=1))
    proc = subprocess.run([*virtproof_cmd, "validate", str(scenario)], capture_output=True, text=True, check=False,
                          timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (f"{scenario}:5: suites: migration: pattern sequential needs at least 2 nodes; "
                                   "the lab has 1 schedulable node (lab.workers: 1; the control plane is tainted)")


def test_guest_network_reachable_reaches_the_backend_config() -> None:
    text = "name: k\nlab: {{kind: existing{extra}}}\n" + MIGRATION
    default = KubeVirtLabHandle(parse_scenario(text.format(extra="")), "gnr-1").config()
    assert default.guest_network_reachable is False  # the harness outside the pod network: Service only
    declared = parse_scenario(text.format(extra=", guest_network_reachable: true"))
    assert KubeVirtLabHandle(declared, "gnr-2").config().guest_network_reachable is True
