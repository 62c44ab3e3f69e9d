"""The swagger -> JSON Schema validator (virtproof.lab.kubevirt.schema) and the VM/DataVolume we generate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from virtproof.lab.kubevirt.schema import load_schemas, validate
from virtproof.premigrate.manifests import GIB, ManifestInvalid, VmShape, build_manifests, k8s_name, virtual_machine

EXAMPLES = Path(__file__).resolve().parent / "data" / "kubevirt"  # KubeVirt's and CDI's own example manifests
KINDS = {
    "VirtualMachine": "kubevirt:v1.VirtualMachine",
    "VirtualMachineInstance": "kubevirt:v1.VirtualMachineInstance",
    "DataVolume": "cdi:v1beta1.DataVolume",
    "VirtualMachineInstanceMigration": "kubevirt:v1.VirtualMachineInstanceMigration",
}


def _examples() -> list[tuple[str, dict[str, object]]]:
    out = []
    for path in sorted([*EXAMPLES.glob("examples/*.yaml"), *EXAMPLES.glob("cdi-examples/*.yaml")]):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") in KINDS:
                out.append((f"{path.parent.name}/{path.name}", doc))
    return out


def test_upstream_examples_validate_strictly() -> None:
    schemas = load_schemas()
    examples = _examples()
    assert len(examples) > 20
    failures = {name: schemas.validate(KINDS[str(doc["kind"])], doc) for name, doc in examples}
    assert {k: v for k, v in failures.items() if v} == {}


def test_unknown_and_misplaced_fields_are_rejected() -> None:
    load_schemas()
    vm = virtual_machine(VmShape("x", 1, 512, "bios", GIB))
    vm["spec"]["template"]["spec"]["domain"]["resources"]["cpu"] = {"cores": 2}  # virt-v2v 2.2's mistake
    errors = validate("v1.VirtualMachine", vm)
    assert errors and "cpu" in errors[0] and errors[0].startswith("spec.template.spec.domain.resources")
    vm = virtual_machine(VmShape("x", 1, 512, "bios", GIB))
    vm["spec"]["template"]["spec"]["domain"]["cpu"]["cores"] = "two"
    assert any("cores" in e for e in validate("v1.VirtualMachine", vm))
    with pytest.raises(KeyError):
        validate("v1.NoSuchThing", {})


def test_generated_manifests_are_valid_and_keep_what_was_asked() -> None:
    schemas = load_schemas()
    dv, vm = build_manifests(VmShape("web01", 2, 1024, "uefi", 2 * GIB + 1, mac="00:50:56:8a:3c:01"), schemas)
    assert dv["kind"] == "DataVolume" and dv["spec"]["storage"]["resources"]["requests"]["storage"] == "3Gi"
    domain = vm["spec"]["template"]["spec"]["domain"]
    assert domain["firmware"]["bootloader"] == {"efi": {"secureBoot": False}}
    assert domain["devices"]["interfaces"][0]["macAddress"] == "00:50:56:8a:3c:01"
    assert domain["devices"]["interfaces"][0]["model"] == "virtio"
    assert vm["spec"]["template"]["spec"]["volumes"][0]["dataVolume"]["name"] == dv["metadata"]["name"]
    _, bios = build_manifests(VmShape("db", 1, 512, "bios", GIB, bus="scsi"), schemas)
    assert bios["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["disk"]["bus"] == "scsi"
    assert "macAddress" not in bios["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0]


def test_a_generator_bug_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    import virtproof.premigrate.manifests as manifests

    original = manifests.virtual_machine

    def broken(shape: VmShape, namespace: str | None = None) -> dict[str, object]:
        vm = original(shape, namespace)
        vm["spec"]["runStrategy"] = 3  # type: ignore[index]
        return vm

    monkeypatch.setattr(manifests, "virtual_machine", broken)
    with pytest.raises(ManifestInvalid, match="runStrategy"):
        manifests.build_manifests(VmShape("x", 1, 512, "bios", GIB), load_schemas())


def test_k8s_names() -> None:
    assert k8s_name("Debian 12_VMware.export") == "debian-12-vmware-export"
    assert k8s_name("___") == "vm"
    assert len(k8s_name("a" * 200)) <= 63
