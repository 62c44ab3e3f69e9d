"""Hostile and broken scenario files: each gets one line naming the file and exit code 2, in
bounded memory (1 GiB of address space), never a traceback or a hang (a case still running after
60 s is reported as hung; nothing here times anything); and text from outside is never terminal
markup."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtproof.scenarios.base import ScenarioError
from virtproof.scenarios.model import load_scenario, parse_scenario
from virtproof.scenarios.reading import MAX_BYTES

MEMORY_LIMIT = 1024 * 1024 * 1024  # the CLI gets 1 GiB of address space; a bomb would need far more


def _bomb(levels: int = 9) -> str:
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 10) + "]")
    return "name: bomb\nlab: {kind: qemu}\nsuites: {boot: {}}\n" + "\n".join(lines) + "\n"


def _hostile(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path given to the CLI, what its one error line must say)."""
    cases: dict[str, tuple[Path, str]] = {}

    def write(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    cases["alias bomb"] = (write("bomb.yaml", _bomb().encode()), "expands to more than")
    cases["deep flow nesting"] = (write("deep.yaml", b"[" * 200_000), "brackets deep")
    block = "".join(" " * i + "k:\n" for i in range(1200)).encode()
    cases["deep block nesting"] = (write("block.yaml", block), "nested too deeply")
    cases["multi-megabyte"] = (write("big.yaml", b"# pad\n" * (MAX_BYTES // 6 + 10)), "a scenario is at most")
    cases["binary garbage"] = (write("garbage.yaml", bytes(range(256)) * 64), "binary data")
    cases["not UTF-8"] = (write("latin1.yaml", "name: caf\xe9\n".encode("latin-1")), "not UTF-8")
    directory = tmp_path / "dir.yaml"
    directory.mkdir()
    cases["a directory"] = (directory, "is a directory")
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    cases["a FIFO"] = (fifo, "is a FIFO")
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(tmp_path / "loop2.yaml")
    (tmp_path / "loop2.yaml").symlink_to(loop)
    cases["a symlink loop"] = (loop, "symlink loop")
    cases["recursive alias"] = (write("rec.yaml", b"name: r\nlab: &x [*x]\n"), "refers to its own anchor")
    cases["missing"] = (tmp_path / "nothing.yaml", "no such file")
    return cases


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def test_hostile_scenario_files_get_one_line_and_exit_2(tmp_path: Path, virtproof_cmd: list[str]) -> None:
    failures = []
    for name, (path, expected) in _hostile(tmp_path).items():
        try:
            proc = subprocess.run(
                [*virtproof_cmd, "validate", str(path)], capture_output=True, text=True, timeout=60, check=False,
                preexec_fn=_limited,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            failures.append(f"{name}: still running after 60 s (a hang)")
            continue
        lines = proc.stdout.strip().splitlines() + proc.stderr.strip().splitlines()
        if proc.returncode != 2 or len(lines) != 1 or str(path) not in lines[0] or expected not in lines[0]:
            failures.append(f"{name}: exit {proc.returncode}: {lines[-5:]}")
    assert failures == []


def test_the_memory_bound_is_real() -> None:
    """The control for the bound above: under it, 2 GiB cannot be had."""
    proc = subprocess.run(
        [sys.executable, "-c", "bytearray(2 * 1024 ** 3)"], capture_output=True, text=True, timeout=60, check=False,
        preexec_fn=_limited,
    )  # fmt: skip
    assert proc.returncode != 0 and "MemoryError" in proc.stderr, proc.stderr[-2000:]


def test_a_bomb_in_memory_is_refused_before_validation() -> None:
    with pytest.raises(ScenarioError, match="expands to more than"):
        parse_scenario(_bomb(12), "bomb.yaml")


def test_anchors_within_reason_still_work(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "name: anchors\nlabs:\n  - &lab {kind: qemu, nodes: 2}\n  - {<<: *lab, accel: tcg}\nsuites: {boot: {}}\n"
    )
    scenario = load_scenario(path).scenario
    assert [lab.nodes for lab in scenario.labs] == [2, 2]


def test_outside_text_is_never_terminal_markup(tmp_path: Path, virtproof_cmd: list[str], project_root: Path) -> None:
    """A results path like ``[/tmp/x]`` once crashed the CLI with rich's MarkupError."""
    scenario = tmp_path / "existing.yaml"
    scenario.write_text(
        f"name: markup\nlab: {{kind: existing, kubeconfig: {tmp_path / 'no-kubeconfig'}}}\nsuites: {{boot: {{}}}}\n"
    )
    results = tmp_path / "r[/tmp/x]"
    proc = subprocess.run(
        [*virtproof_cmd, "run", str(scenario), "--results", str(results)],
        capture_output=True, text=True, timeout=120, check=False, cwd=project_root,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr and "MarkupError" not in proc.stderr, proc.stderr[-2000:]
    assert "r[/tmp/x]" in proc.stderr.replace("\n", ""), proc.stderr[-2000:]
    assert proc.returncode == 3, proc.stderr[-2000:]


_TOKENS = [*"ab:-[]{}&*!|>'\"#%@`,?\n \t0123456789.~", "name: ", "lab: ", "kind: ", "qemu", "suites: ", "&x ", "*x"]
_yaml_ish = st.lists(st.sampled_from(_TOKENS), max_size=120).map("".join)


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(text=_yaml_ish)
def test_fuzzed_scenario_text_is_a_scenario_error_or_a_scenario(text: str) -> None:
    try:
        parse_scenario(text, "fuzz.yaml")
    except ScenarioError as exc:
        assert str(exc).startswith("fuzz.yaml"), exc
        assert "\n" not in str(exc).strip(), exc


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30,
))  # fmt: skip
def test_fuzzed_structures_under_a_scenario_skeleton(data: object) -> None:
    for key in ("lab", "guest", "suites", "slo"):
        body = {"name": "fuzz", "lab": {"kind": "qemu"}, "suites": {"boot": {}}, key: data}
        try:
            parse_scenario(yaml.safe_dump(body), "fuzz.yaml")
        except ScenarioError as exc:
            assert str(exc).startswith("fuzz.yaml"), exc
