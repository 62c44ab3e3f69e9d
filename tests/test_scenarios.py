"""Scenario files: every shipped one loads; broken ones get one clear line naming file, line, field."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from virtproof.scenarios.model import ScenarioError, load_scenario, parse_mib, parse_scenario

GOOD = """\
name: t
lab:
  kind: qemu
  nodes: 2
guest:
  memory: 256Mi
suites:
  boot:
    count: 2
    concurrency: 2
slo:
  - metric: boot.time_to_ssh_s
    stat: p95
    max: 30
"""

# (scenario text, expected one-line error after "x.yaml:")
BROKEN: list[tuple[str, str]] = [
    ("name: t\nlab: {kind: qemu}\nsuites:\n  boot:\n    count: 0\n", "5: suites.boot.count: must be at least 1"),
    ("name: t\nlab: {kind: qemu, nodes: 0}\nsuites: {boot: {}}\n", "2: lab.nodes: must be at least 1"),
    ("name: t\nlab: {kind: qemu, nodes: 99}\nsuites: {boot: {}}\n", "2: lab.nodes: must be at most 16"),
    ("name: t\nlab: {kind: vmware}\nsuites: {boot: {}}\n", "2: lab: unknown kind 'vmware'; expected one of 'qemu'"),
    ("name: t\nlab: {nodes: 2}\nsuites: {boot: {}}\n", "2: lab: needs 'kind'"),
    (
        "name: t\nlab: {kind: qemu, accel: hvf}\nsuites: {boot: {}}\n",
        "2: lab.accel: must be one of 'auto', 'kvm' or 'tcg'",
    ),
    (
        "name: t\nlab: {kind: qemu, network: bridge}\nsuites: {boot: {}}\n",
        "2: lab.network: must be one of 'netns' or 'loopback'",
    ),
    ("name: t\nlab: {kind: qemu, colour: red}\nsuites: {boot: {}}\n", "2: lab.colour: unknown key"),
    ("name: t\nlab: {kind: qemu}\nsuites: {}\n", "3: suites: names no suite; add one of: boot"),
    ("name: t\nlab: {kind: qemu}\nsuites: {bench: {}}\n", "3: suites.bench: unknown key"),
    ("name: t\nlab: {kind: qemu}\n", "1: suites: is required"),
    ("lab: {kind: qemu}\nsuites: {boot: {}}\n", "1: name: is required"),
    ("name: Bad Name\nlab: {kind: qemu}\nsuites: {boot: {}}\n", "1: name: must match ^[a-z0-9][a-z0-9-]*$"),
    ("name: t\nlab: {kind: qemu}\nguest: {memory: 64}\nsuites: {boot: {}}\n", "3: guest.memory: must be at least 80"),
    (
        "name: t\nlab: {kind: qemu}\nguest: {memory: lots}\nsuites: {boot: {}}\n",
        "3: guest.memory: must be a size such as 256 or 256Mi or 1Gi",
    ),
    ("name: t\nlab: {kind: qemu}\nguest: {cpus: two}\nsuites: {boot: {}}\n", "3: guest.cpus: must be a whole number"),
    (
        "name: t\nlab: {kind: qemu}\nsuites:\n  boot:\n    count: 2\n    concurrency: 3\n",
        "4: suites.boot: concurrency (3) is more than count (2)",
    ),
    (
        "name: t\nlab: {kind: qemu}\nsuites:\n  boot:\n    timeout_s: -1\n",
        "5: suites.boot.timeout_s: must be more than 0",
    ),
    (
        "name: t\nlab: {kind: qemu}\nsuites: {boot: {}}\nslo:\n  - {metric: boot.time_to_ssh_s}\n",
        "5: slo[0]: needs max or min",
    ),
    (
        "name: t\nlab: {kind: qemu}\nsuites: {boot: {}}\nslo:\n  - {metric: m, stat: p42, max: 1}\n",
        "5: slo[0].stat: must be one of 'p50', 'p95', 'p99', 'max', 'min', 'mean' or 'count'",
    ),
    ("name: t\nlab: {kind: qemu}\nsuites: {boot: {}}\nslo: {metric: m}\n", "4: slo: must be a list"),
    ("name: t\nname: u\nlab: {kind: qemu}\nsuites: {boot: {}}\n", "2: name: duplicate key (first at line 1)"),
    ("name: t\nlab: {kind: qemu\nsuites: {boot: {}}\n", "3: invalid YAML: expected ',' or '}', but got ':'"),
    ("- just\n- a list\n", "1: a scenario must be a mapping"),
    (
        "name: t\nlab: {kind: qemu}\nsuites:\n  boot:\n    check_devices: maybe\n",
        "5: suites.boot.check_devices: must be true or false",
    ),
]


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.glob("scenarios/*.yaml")), ids=lambda p: p.name)
def test_every_shipped_scenario_loads(path: Path) -> None:
    loaded = load_scenario(path)
    assert loaded.scenario.name
    assert len(loaded.sha256) == 64


def test_a_good_scenario_parses_with_defaults() -> None:
    scenario = parse_scenario(GOOD, "x.yaml")
    assert scenario.lab.kind == "qemu" and scenario.lab.nodes == 2 and scenario.lab.accel == "auto"
    assert scenario.guest.memory == 256 and scenario.guest.cpus == 1
    assert scenario.suites.boot is not None and scenario.suites.boot.count == 2
    assert scenario.suites.enabled()[0] == "boot"


@pytest.mark.parametrize(
    ("text", "expected"), BROKEN, ids=[e.split(":")[1].strip() + f"-{i}" for i, (_, e) in enumerate(BROKEN)]
)
def test_broken_scenario_names_file_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "x.yaml")
    message = str(info.value)
    assert "\n" not in message
    if expected.endswith(("expected one of 'qemu'", "add one of: boot")):  # lists that grow with backends
        assert message.startswith(f"x.yaml:{expected}")
    else:
        assert message == f"x.yaml:{expected}"


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ScenarioError, match=r"empty.yaml: empty scenario$"):
        load_scenario(empty)
    with pytest.raises(ScenarioError, match=r"nope.yaml: no such file$"):
        load_scenario(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("value", "mib"), [(256, 256), ("256Mi", 256), ("1Gi", 1024), ("2G", 2048), ("96", 96)])
def test_sizes(value: object, mib: int) -> None:
    assert parse_mib(value) == mib


def test_validate_command_exit_codes(tmp_path: Path, virtproof_cmd: list[str], project_root: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN[0][0])
    ok = subprocess.run(
        [*virtproof_cmd, "validate", str(project_root / "scenarios/quickstart.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok: ")
    res = subprocess.run([*virtproof_cmd, "validate", str(bad)], capture_output=True, text=True, check=False)
    assert res.returncode == 2
    assert res.stderr.strip() == f"{bad}:5: suites.boot.count: must be at least 1"
    assert "Traceback" not in res.stderr


def test_run_with_a_broken_scenario_exits_2_before_anything_starts(tmp_path: Path, virtproof_cmd: list[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN[1][0])
    res = subprocess.run(
        [*virtproof_cmd, "run", str(bad), "--results", str(tmp_path / "r")], capture_output=True, text=True, check=False
    )
    assert res.returncode == 2
    assert res.stderr.strip().endswith(f"{bad}:2: lab.nodes: must be at least 1")
    assert not (tmp_path / "r").exists()


def test_unknown_suite_flag_is_a_usage_error(tmp_path: Path, virtproof_cmd: list[str], project_root: Path) -> None:
    res = subprocess.run(
        [
            *virtproof_cmd,
            "run",
            str(project_root / "scenarios/quickstart.yaml"),
            "--suite",
            "nosuch",
            "--results",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2
    assert "--suite nosuch: not in" in res.stderr
