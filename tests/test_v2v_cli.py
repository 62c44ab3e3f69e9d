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
