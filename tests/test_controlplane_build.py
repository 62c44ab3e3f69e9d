"""``virtproof images build control-plane``: cached by versions and sources, progress, and one
line with the right exit code for a version it cannot build, a failing build, Go missing or old.

The pipeline (go list, go build, the manifest generator, the cache marker) runs against a fake
``go`` whose every call is logged; the real build (cached by ``.ci/run`` before the tests) is
checked to be reused without running Go at all.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from virtproof.core.errors import EXIT_LAB, EXIT_OK, EXIT_USAGE, UsageError
from virtproof.lab.controlplane import build as cp

from controlplane_support import control_plane

FAKE_GO = textwrap.dedent('''\
    #!{python}
    """A stand-in for go: logs each call; FAKE_GO_FAIL makes go build fail like a compile error."""
    import os, sys
    from pathlib import Path
    args = sys.argv[1:]
    with open(os.environ["FAKE_GO_LOG"], "a") as log:
        log.write(" ".join(args) + "\\n")
    if args[:2] == ["env", "GOVERSION"]:
        print(os.environ.get("FAKE_GO_VERSION", "go1.26.8"))
        sys.exit(0)
    if args[:2] == ["list", "-deps"]:
        for i in range(10):
            print(f"example.com/pkg{{i}}")
        sys.exit(0)
    if args[:1] == ["build"]:
        print("example.com/pkg0", file=sys.stderr)
        if os.environ.get("FAKE_GO_FAIL"):
            print("go: downloading example.com/broken v1.0.0", file=sys.stderr)
            print("example.com/broken/x.go:12:3: undefined: Foo", file=sys.stderr)
            sys.exit(1)
        out = args[args.index("-o") + 1]
        packages = [a for a in args[args.index("-o") + 2:]]
        targets = [Path(out) / p.rsplit("/", 1)[-1] for p in packages] if out.endswith("/") else [Path(out)]
        for target in targets:
            body = "#!/bin/sh\\nexit 0\\n"
            if target.name == "kubevirt-manifests":
                body = "#!{python}\\n" + open(os.environ["FAKE_GENERATOR"]).read()
            target.write_text(body)
            target.chmod(0o755)
        sys.exit(0)
    sys.exit(f"fake go: unexpected {{args}}")
''')

FAKE_GENERATOR = textwrap.dedent('''\
    import sys
    kind = sys.argv[sys.argv.index("-type") + 1]
    if kind == "crds":
        for i in range(20):
            print(f"---\\napiVersion: apiextensions.k8s.io/v1\\nkind: CustomResourceDefinition\\n"
                  f"metadata: {{name: r{i}.kubevirt.io}}")
    else:
        print(f"---\\napiVersion: v1\\nkind: ConfigMap\\nmetadata: {{name: {kind}}}")
''')


@pytest.fixture
def fake_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake ``go`` first on PATH, an empty cache root; returns the call log."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    go = bindir / "go"
    go.write_text(FAKE_GO.format(python=sys.executable))
    go.chmod(go.stat().st_mode | stat.S_IEXEC)
    generator = tmp_path / "generator.py"
    generator.write_text(FAKE_GENERATOR)
    log = tmp_path / "go-calls.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_GO_LOG", str(log))
    monkeypatch.setenv("FAKE_GENERATOR", str(generator))
    monkeypatch.setenv("VIRTPROOF_CACHE", str(tmp_path / "cache"))
    return log


def test_a_build_is_cached_and_the_second_call_runs_no_go(fake_go: Path) -> None:
    messages: list[str] = []
    first = cp.build(progress=messages.append)
    assert not first.cached
    calls = fake_go.read_text().splitlines()
    assert sum(c.startswith("build ") for c in calls) == 2  # etcd, then one go build for the rest
    cp_build = next(c for c in calls if c.startswith("build ") and "kube-apiserver" in c)
    for package in cp.CP_PACKAGES.values():
        assert package in cp_build
    assert "-X k8s.io/component-base/version.gitVersion=v1.34.4" in cp_build
    assert "-X kubevirt.io/client-go/version.gitVersion=v1.9.0" in cp_build
    made = first.build
    assert made.complete() and (made.directory / "build.json").is_file()
    assert json.loads((made.directory / "build.json").read_text())["kubevirt_crds"] == 20
    assert len(made.manifests("crds")) == 20
    assert any("packages compiled" in m and "%" in m for m in messages), messages
    assert any("elapsed" in m for m in messages)

    marker = (made.directory / "build.json").stat().st_mtime_ns
    started = time.monotonic()
    second = cp.build(progress=messages.append)
    assert second.cached and second.build.directory == made.directory
    assert time.monotonic() - started < 1.0
    assert fake_go.read_text().splitlines() == calls  # go was not run at all, not even `go env`
    assert (made.directory / "build.json").stat().st_mtime_ns == marker

    again = cp.build(rebuild=True)
    assert not again.cached
    assert sum(c.startswith("build ") for c in fake_go.read_text().splitlines()) == 4


def test_the_go_sources_ship_with_their_go_sum() -> None:
    files = cp.template_files()
    for module in ("etcd", "cp"):
        assert f"{module}/go.mod" in files and f"{module}/go.sum" in files and f"{module}/tools.go" in files
    assert "cp/cmd/kubevirt-manifests/main.go" in files
    for stub in ("virt-template-api", "virt-template-client-go", "virt-template-engine"):
        assert f"cp/stubs/{stub}/go.mod" in files
    gomod = files["cp/go.mod"].decode()
    assert "k8s.io/kubernetes v1.34.4" in gomod and "kubevirt.io/kubevirt v1.9.0" in gomod
    assert "go.etcd.io/etcd/server/v3 v3.6.16" in files["etcd/go.mod"].decode()
    # every module the graph uses has its hash recorded: a build never asks the checksum database
    assert b"kubevirt.io/kubevirt v1.9.0 h1:" in files["cp/go.sum"]
    assert cp.source_key() == cp.source_key()
    assert cp.source_key(cp.Versions(kubernetes="v1.34.3")) != cp.source_key()


def test_a_version_it_cannot_build_is_bad_input() -> None:
    with pytest.raises(UsageError, match=r"kubernetes v1\.99\.0: not a version virtproof can build"):
        cp.check_versions(cp.Versions(kubernetes="v1.99.0"))


def _cli(virtproof_cmd: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*virtproof_cmd, "images", *args], capture_output=True, text=True, timeout=300,
                          check=False, env=dict(os.environ))


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one error line (progress lines may come before it), and no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    prefixes = ("virtproof: error:", "virtproof: lab unavailable:")
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith(prefixes)]
    assert len(errors) == 1, proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == errors[0]
    return errors[0]


def test_cli_builds_then_reuses_and_lists(fake_go: Path, virtproof_cmd: list[str]) -> None:
    first = _cli(virtproof_cmd, "build", "control-plane")
    assert first.returncode == EXIT_OK, first.stderr
    assert "control-plane k8s-v1.34.4-kubevirt-v1.9.0-etcd-v3.6.16" in first.stdout
    assert "(built in " in first.stdout
    second = _cli(virtproof_cmd, "build", "control-plane")
    assert second.returncode == EXIT_OK and "(cached)" in second.stdout
    listed = _cli(virtproof_cmd, "list")
    assert listed.returncode == EXIT_OK
    assert "control-plane" in listed.stdout and "Kubernetes v1.34.4, KubeVirt v1.9.0, etcd v3.6.16" in listed.stdout


def test_cli_failing_build_shows_gos_last_lines(fake_go: Path, virtproof_cmd: list[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_GO_FAIL", "1")
    proc = _cli(virtproof_cmd, "build", "control-plane")
    assert proc.returncode == EXIT_LAB
    line = _one_line(proc)
    assert "building etcd v3.6.16 failed" in line and "undefined: Foo" in line, line
    assert "downloading" not in line
    log = Path(line.rsplit("(full log: ", 1)[1].rstrip(")"))
    assert "undefined: Foo" in log.read_text()
    assert cp.find_build() is None
    assert not list((Path(os.environ["VIRTPROOF_CACHE"]) / "control-plane").glob("*.building"))


def test_cli_without_go(tmp_path: Path, virtproof_cmd: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("VIRTPROOF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(empty))
    proc = subprocess.run([sys.executable, "-m", "virtproof", "images", "build", "control-plane"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == EXIT_LAB
    assert "`go` not found" in _one_line(proc)


def test_cli_with_an_old_go(fake_go: Path, virtproof_cmd: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_GO_VERSION", "go1.22.5")
    proc = _cli(virtproof_cmd, "build", "control-plane")
    assert proc.returncode == EXIT_LAB
    assert "go1.22.5; the control plane needs Go 1.26 or newer" in _one_line(proc)


@pytest.mark.parametrize("flag", ["--kubernetes-version", "--kubevirt-version", "--etcd-version"])
def test_cli_version_that_does_not_exist(fake_go: Path, virtproof_cmd: list[str], flag: str) -> None:
    proc = _cli(virtproof_cmd, "build", "control-plane", flag, "v9.9.9")
    assert proc.returncode == EXIT_USAGE
    assert "v9.9.9: not a version virtproof can build" in _one_line(proc)
    assert fake_go.read_text() == ""  # refused before Go is asked anything


def test_version_flags_are_for_the_control_plane_only(virtproof_cmd: list[str]) -> None:
    proc = _cli(virtproof_cmd, "build", "micro", "--kubernetes-version", "v1.34.4")
    assert proc.returncode == EXIT_USAGE


def test_the_real_build_is_reused_without_go(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The build .ci/run made: found by the cache marker, used with no Go on PATH."""
    control_plane_build = control_plane()
    monkeypatch.setenv("PATH", str(tmp_path))
    started = time.monotonic()
    result = cp.build()
    assert result.cached and result.build.directory == control_plane_build.directory
    assert time.monotonic() - started < 1.0
    info = result.build.info
    assert info["versions"] == {"etcd": "v3.6.16", "kubernetes": "v1.34.4", "kubevirt": "v1.9.0"}
    assert info["kubevirt_crds"] == 20
    version = subprocess.run([str(result.build.binary("kube-apiserver")), "--version"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    assert version.strip() == "Kubernetes v1.34.4"
    crds = yaml.safe_load_all(result.build.manifest("kv-cr").read_text())
    assert [d["kind"] for d in crds if d] == ["KubeVirt"]
