"""Values that reach a shell (kind, kubeadm over SSH) are typed by the scenario schema and quoted by
the step builders: shell metacharacters in any of them are refused, or run nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtproof.lab.clusters.kind import KindCluster
from virtproof.lab.clusters.kubeadm import cluster_steps
from virtproof.lab.clusters.steps import LocalExecutor
from virtproof.scenarios.kubevirt import KindLab, KubeadmLab
from virtproof.scenarios.model import ScenarioError, parse_scenario

EVIL = "x$(touch /tmp/vp-pwned)`id`;rm -rf /tmp/vp-x|&>"

PLANE = "{address: 10.0.0.1, key: /k, role: control-plane}"
# field -> (the lab section with {v} where the value goes, an honest value that must be accepted)
FIELDS = {
    "kubeadm host address": ("{kind: kubeadm, hosts: [{address: '{v}', key: /k, role: control-plane}]}", "ok-1"),
    "kubeadm host user": ("{kind: kubeadm, hosts: [{address: h, user: '{v}', key: /k, role: control-plane}]}", "ok"),
    "kubeadm pod_cidr": ("{kind: kubeadm, pod_cidr: '{v}', hosts: [PLANE]}", "10.1.0.0/16"),
    "kubeadm kubernetes_version": ("{kind: kubeadm, kubernetes_version: '{v}', hosts: [PLANE]}", "1.34"),
    "kind cluster_name": ("{kind: kind, cluster_name: '{v}'}", "ok-1"),
    "kind node_image": ("{kind: kind, node_image: '{v}'}", "kindest/node:v1.34.0"),
    "kind kubevirt_version": ("{kind: kind, kubevirt_version: '{v}'}", "v1.9.0"),
    "namespace": ("{kind: existing, namespace: '{v}'}", "ok-1"),
    "node_address": ("{kind: existing, node_address: '{v}'}", "192.0.2.10"),
    "image container_disk": ("{kind: existing, images: {micro: {container_disk: '{v}'}}}", "quay.io/a/b:1"),
    "image http": ("{kind: existing, images: {micro: {http: 'http://h/{v}'}}}", "disk.img"),
    "image user": ("{kind: existing, images: {micro: {container_disk: a/b, user: '{v}'}}}", "fedora"),
    "image storage_class": ("{kind: existing, images: {micro: {container_disk: a/b, storage_class: '{v}'}}}", "local"),
}


def _scenario(field: str, value: str) -> str:
    template = FIELDS[field][0].replace("PLANE", PLANE).replace("{v}", value)
    return f"name: evil\nlab: {template}\nsuites: {{boot: {{}}}}\n"


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_shell_metacharacters_are_refused_by_the_schema(field: str) -> None:
    with pytest.raises(ScenarioError):
        parse_scenario(_scenario(field, EVIL), "evil.yaml")
    parse_scenario(_scenario(field, FIELDS[field][1]), "ok.yaml")  # an honest value passes


def test_paths_in_kind_steps_are_quoted_so_nothing_runs(tmp_path: Path) -> None:
    """The kind lab's state directory (from $VIRTPROOF_STATE) reaches its shell steps quoted."""
    marker = tmp_path / "pwned"
    state = tmp_path / f"state $(touch {marker}) `touch {marker}`"
    spec = parse_scenario("name: k\nlab: {kind: kind}\nsuites: {boot: {}}\n").lab
    assert isinstance(spec, KindLab)
    cluster = KindCluster(spec, state, lambda: False)
    for step in cluster.steps(use_emulation=True)[:1]:
        LocalExecutor().execute(step.check or "true", None, 30)
    assert not marker.exists()


def test_kubeadm_init_quotes_what_it_interpolates() -> None:
    spec = parse_scenario(
        f"name: k\nlab: {{kind: kubeadm, pod_cidr: 10.9.0.0/16, hosts: [{PLANE}]}}\n"
        "suites: {boot: {}}\n"
    ).lab
    assert isinstance(spec, KubeadmLab)
    init = next(s for s in cluster_steps(spec, True) if s.name == "kubeadm-init")
    assert "--pod-network-cidr=10.9.0.0/16 " in init.run and "--apiserver-advertise-address=10.0.0.1 " in init.run
