"""``virtproof premigrate`` bad input: one clear line, exit 2, before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtproof.cli import main
from virtproof.scenarios.model import load_scenario

ROOT = Path(__file__).resolve().parents[1]


def test_missing_source_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["premigrate", str(tmp_path / "nope.vmdk"), "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "nope.vmdk: no such file" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_unknown_format_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"hello " * 2000)
    assert main(["premigrate", str(junk), "--results", str(tmp_path / "r")]) == 2
    assert "unknown format" in capsys.readouterr().err


def test_broken_ova_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.ova"
    bad.write_bytes(b"\0" * 10)
    assert main(["premigrate", str(bad), "--results", str(tmp_path / "r")]) == 2
    assert "bad.ova" in capsys.readouterr().err


def test_bad_flag_is_exit_2(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["premigrate", "--target", "vmware", str(tmp_path)])
    assert exc.value.code == 2


def test_premigration_scenario_loads() -> None:
    loaded = load_scenario(ROOT / "scenarios" / "premigration.yaml")
    suite = loaded.scenario.suites.v2v
    assert suite is not None and len(suite.sources) >= 5
    assert {s.expect for s in suite.sources} >= {"ready", "blocked", "needs-fixes"}
    assert any(s.fix for s in suite.sources)


def test_v2v_scenario_errors_name_the_field(tmp_path: Path) -> None:
    from virtproof.scenarios.model import ScenarioError

    path = tmp_path / "s.yaml"
    path.write_text(
        "name: x\nlab: {kind: qemu}\nsuites:\n  v2v:\n    sources:\n      - {fixture: micro-virtio, path: /x}\n"
    )
    with pytest.raises(ScenarioError, match=r"s.yaml:6: suites.v2v.sources\[0\]: give exactly one"):
        load_scenario(path)


@pytest.mark.qemu
def test_sigterm_stops_every_tool_and_says_so(tmp_path: Path) -> None:
    """SIGTERM in the middle of a source: the boot proof's qemu and any qemu-img / virt-v2v are
    killed, the run reads as incomplete, one line says so, exit 143, nothing is left running."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from virtproof.premigrate.fixtures.catalog import fixture_path
    from virtproof.reports.results import read_manifest

    source = fixture_path("micro-virtio", "vmdk")
    exe = [sys.executable, "-m", "virtproof"]
    proc = subprocess.Popen([*exe, "premigrate", str(source), "--results", str(tmp_path / "r")],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)  # fmt: skip
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if ": converting" in line or ": booting" in line or not line:
            break
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    try:
        rest = proc.communicate(timeout=120)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("premigrate did not stop within 120 s of SIGTERM") from None
    assert proc.returncode == 143, "".join(seen) + rest
    assert "Traceback" not in rest and "interrupted by SIGTERM" in rest, rest
    run = next((tmp_path / "r").iterdir())
    assert read_manifest(run)["status"] == "incomplete"
    left = subprocess.run(["pgrep", "-af", f"vp-v2v-{run.name}"], capture_output=True, text=True).stdout
    assert "qemu" not in left and "virt-v2v" not in left, left
    assert os.path.exists(source)
