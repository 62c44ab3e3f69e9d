"""``virtproof images build control-plane``: etcd, Kubernetes and KubeVirt's controllers, built from
the Go module proxy at pinned versions and cached.

Two Go modules ship as package data (``gomod/``), each with its ``go.sum``, so a build verifies
every module against recorded hashes and never asks the checksum database:

- ``gomod/etcd``: requires ``go.etcd.io/etcd/server/v3`` (its module root is ``package main``).
- ``gomod/cp``: one module for ``k8s.io/kubernetes`` (every staging module pinned to the matching
  v0.34.x) and ``kubevirt.io/kubevirt``, so kube-apiserver, kube-controller-manager, kube-scheduler,
  virt-api, virt-controller and ``kubevirt-manifests`` (ours: prints the CRDs, RBAC, webhooks and
  APIServices virt-operator would create, from KubeVirt's own generator code) come from one
  ``go build`` and the shared packages compile once. ``stubs/`` stands in for
  ``kubevirt.io/virt-template-*`` v0.2.0, which the proxy refuses (403).

A build lands in ``<cache root>/control-plane/<versions>-<key>/`` (``bin/``, ``manifests/``, and
``build.json`` written last: its presence is the cache marker). The key hashes the versions, the
module files and the build flags, not the Go toolchain, so a lab can start from a cached build on
a host without Go. ``GOCACHE`` lives under the cache root as well (``control-plane/gocache``): a
CI machine that keeps the cache root rebuilds in seconds.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from virtproof.core.errors import LabUnavailable, UsageError
from virtproof.lab.images.micro import cache_root_default
from virtproof.scenarios.kubevirt import CONTROL_PLANE_ETCD, CONTROL_PLANE_KUBERNETES, KUBEVIRT_VERSION

Progress = Callable[[str], None]

# Bump when the layout of a build or the way it is made changes (old builds are then not used).
BUILD_FORMAT = 2
GO_MINIMUM = (1, 26)


@dataclass(frozen=True)
class Versions:
    etcd: str = CONTROL_PLANE_ETCD
    kubernetes: str = CONTROL_PLANE_KUBERNETES
    kubevirt: str = KUBEVIRT_VERSION

    @property
    def slug(self) -> str:
        return f"k8s-{self.kubernetes}-kubevirt-{self.kubevirt}-etcd-{self.etcd}"


PINNED = Versions()

# What the version stamps say (``-X`` link flags; without them /version reports v0.0.0-master).
# The KubeVirt commit and dates are the origin the module proxy reports for these tags.
_STAMPS: dict[str, dict[str, str]] = {
    "kubernetes:v1.34.4": {"buildDate": "2026-02-10T12:53:36Z"},
    "kubevirt:v1.9.0": {"gitCommit": "79d34c1762169e5b0370ec491cef5ca12e6b504c", "buildDate": "2026-07-27T15:21:17Z"},
}
# The module templates are written for exactly these versions (their go.mod and go.sum pin them).
SUPPORTED: dict[str, tuple[str, ...]] = {
    "etcd": (CONTROL_PLANE_ETCD,),
    "kubernetes": (CONTROL_PLANE_KUBERNETES,),
    "kubevirt": (KUBEVIRT_VERSION,),
}

ETCD_PACKAGE = "go.etcd.io/etcd/server/v3"
CP_PACKAGES: dict[str, str] = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "virt-api": "kubevirt.io/kubevirt/cmd/virt-api",
    "virt-controller": "kubevirt.io/kubevirt/cmd/virt-controller",
    "kubevirt-manifests": "./cmd/kubevirt-manifests",
}
BINARIES: tuple[str, ...] = ("etcd", *CP_PACKAGES)
# kubevirt-manifests -type T > manifests/T.yaml
MANIFEST_TYPES: tuple[str, ...] = ("crds", "rbac", "webhooks", "apiservices", "kv-cr")
KUBEVIRT_NAMESPACE = "kubevirt"
EXPECTED_CRDS = 20  # NewKubeVirtCrd + the 19 of install.GenerateCurrentInstallStrategy


class BuildFailed(LabUnavailable):
    """Go is missing or too old, a module could not be fetched, or the build failed (exit 3)."""


def check_versions(versions: Versions) -> None:
    """UsageError (exit 2) for a version this virtproof cannot build."""
    for component, allowed in SUPPORTED.items():
        value = getattr(versions, component)
        if value not in allowed:
            raise UsageError(f"{component} {value}: not a version virtproof can build "
                             f"(its Go modules pin {', '.join(allowed)})")


def _ldflags(versions: Versions) -> str:
    k8s, kv = versions.kubernetes, versions.kubevirt
    major, minor = k8s.lstrip("v").split(".")[:2]
    kstamp = _STAMPS.get(f"kubernetes:{k8s}", {})
    vstamp = _STAMPS.get(f"kubevirt:{kv}", {})
    base, kvbase = "k8s.io/component-base/version", "kubevirt.io/client-go/version"
    flags = ["-s", "-w",
             f"-X {base}.gitVersion={k8s}", f"-X {base}.gitMajor={major}", f"-X {base}.gitMinor={minor}",
             f"-X {base}.gitTreeState=clean", f"-X {base}.buildDate={kstamp.get('buildDate', '')}",
             f"-X {kvbase}.gitVersion={kv}", f"-X {kvbase}.gitCommit={vstamp.get('gitCommit', '')}",
             f"-X {kvbase}.gitTreeState=clean", f"-X {kvbase}.buildDate={vstamp.get('buildDate', '')}"]
    return " ".join(flags)


# --- the module templates ---------------------------------------------------------------


def _templates() -> Traversable:
    return resources.files("virtproof.lab.controlplane") / "gomod"


def _walk(node: Traversable, prefix: str = "") -> Iterator[tuple[str, Traversable]]:
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        rel = f"{prefix}{child.name}"
        if child.is_dir():
            if child.name != "__pycache__":
                yield from _walk(child, rel + "/")
        else:
            yield rel, child


def template_files() -> dict[str, bytes]:
    """Relative path -> content of every file of the Go module templates."""
    return {rel: node.read_bytes() for rel, node in _walk(_templates())}


def source_key(versions: Versions = PINNED) -> str:
    """What a build depends on: versions, module files, packages, flags, format."""
    digest = hashlib.sha256()
    recipe = {"format": BUILD_FORMAT, "versions": asdict(versions), "ldflags": _ldflags(versions),
              "etcd": ETCD_PACKAGE, "cp": CP_PACKAGES, "manifests": MANIFEST_TYPES}
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    for rel, data in sorted(template_files().items()):
        digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


# --- the cache ----------------------------------------------------------------------------


def cache_dir(cache_root: Path | None = None) -> Path:
    return (cache_root or cache_root_default()) / "control-plane"


def gocache_dir(cache_root: Path | None = None) -> Path:
    return cache_dir(cache_root) / "gocache"


@dataclass(frozen=True)
class ControlPlaneBuild:
    """A finished build: its binaries, the manifests KubeVirt's generator printed, and build.json."""

    directory: Path
    versions: Versions
    key: str
    info: dict[str, Any]

    def binary(self, name: str) -> Path:
        if name not in BINARIES:
            raise KeyError(name)
        return self.directory / "bin" / name

    def manifest(self, kind: str) -> Path:
        """The generator's output as it printed it (YAML)."""
        return self.directory / "manifests" / f"{kind}.yaml"

    def manifests(self, kind: str) -> list[dict[str, Any]]:
        """The same objects, read from the JSON copy made at build time (parsing 4 MB of YAML takes seconds)."""
        docs = json.loads((self.directory / "manifests" / f"{kind}.json").read_text())
        return [d for d in docs if isinstance(d, dict)]

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.directory / "bin").iterdir() if p.is_file())

    @classmethod
    def load(cls, directory: Path) -> ControlPlaneBuild:
        info = json.loads((directory / "build.json").read_text())
        return cls(directory, Versions(**info["versions"]), str(info["key"]), info)

    def complete(self) -> bool:
        return all(self.binary(n).is_file() for n in BINARIES) and all(
            self.manifest(t).is_file() and self.manifest(t).with_suffix(".json").is_file() for t in MANIFEST_TYPES)


def build_dir(versions: Versions = PINNED, cache_root: Path | None = None) -> Path:
    return cache_dir(cache_root) / f"{versions.slug}-{source_key(versions)[:16]}"


def find_build(versions: Versions = PINNED, cache_root: Path | None = None) -> ControlPlaneBuild | None:
    """The cached build of these versions from the current sources, or None."""
    directory = build_dir(versions, cache_root)
    try:
        found = ControlPlaneBuild.load(directory)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if found.complete() and found.key == source_key(versions) else None


def list_builds(cache_root: Path | None = None) -> list[ControlPlaneBuild]:
    root = cache_dir(cache_root)
    if not root.is_dir():
        return []
    found = []
    for marker in sorted(root.glob("*/build.json")):
        try:
            found.append(ControlPlaneBuild.load(marker.parent))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


# --- Go -----------------------------------------------------------------------------------


def go_version(go: str = "go") -> str:
    """``go1.26.8``; BuildFailed when Go is missing or older than 1.26."""
    exe = shutil.which(go)
    if exe is None:
        raise BuildFailed(f"`{go}` not found: building the control plane needs Go "
                          f"{'.'.join(map(str, GO_MINIMUM))} or newer on PATH")
    try:
        out = subprocess.run([exe, "env", "GOVERSION"], capture_output=True, text=True, timeout=60,
                             env=_go_env(None)).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildFailed(f"`{exe} env GOVERSION` failed: {exc}") from None
    match = re.match(r"go(\d+)\.(\d+)", out)
    if not match:
        raise BuildFailed(f"`{exe} env GOVERSION` printed {out!r}, not a Go version")
    if (int(match.group(1)), int(match.group(2))) < GO_MINIMUM:
        raise BuildFailed(f"{exe} is {out}; the control plane needs Go {'.'.join(map(str, GO_MINIMUM))} or newer")
    return out


def _go_env(gocache: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GOOS", "GOARCH", "GOFLAGS", "GOWORK")}
    env.update({
        "CGO_ENABLED": "0",
        # -mod=readonly: go.mod and go.sum are never rewritten; a module missing from go.sum fails
        # the build instead of being looked up in the checksum database.
        "GOFLAGS": "-mod=readonly -buildvcs=false",
        "GOWORK": "off",
        "GOTOOLCHAIN": "local",
    })
    if gocache is not None:
        env["GOCACHE"] = str(gocache)
    return env


_IMPORT_PATH = re.compile(r"^[A-Za-z0-9_.~/+-]+$")


@dataclass
class _Step:
    name: str  # what it builds, for messages
    workdir: Path
    args: list[str]
    packages: list[str]
    expected: int = 0  # packages in the build graph (what a cold build compiles), 0 unknown


def _run_go(step: _Step, exe: str, env: dict[str, str], log: Path, progress: Progress,
            started: float) -> int:
    """Run one ``go build -v``; report compiled packages; BuildFailed with go's last lines."""
    tail: collections.deque[str] = collections.deque(maxlen=400)
    compiled = downloads = 0
    last_report = 0.0
    with open(log, "a") as logf:
        logf.write(f"$ (cd {step.workdir} && {exe} {' '.join(step.args)})\n")
        logf.flush()
        proc = subprocess.Popen([exe, *step.args], cwd=step.workdir, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                logf.write(line)
                line = line.rstrip("\n")
                tail.append(line)
                if line.startswith("go: downloading "):
                    downloads += 1
                elif _IMPORT_PATH.match(line):
                    compiled += 1
                now = time.monotonic()
                if now - last_report >= 1.0:
                    last_report = now
                    progress(_progress_text(step, compiled, downloads, now - started))
            code = proc.wait()
        except BaseException:
            _kill_group(proc)
            raise
    if code != 0:
        errors = [ln.strip() for ln in tail
                  if ln.strip() and not _IMPORT_PATH.match(ln.strip()) and not ln.startswith("go: downloading ")]
        last = " | ".join(errors[-4:]) or f"exit status {code}"
        raise BuildFailed(f"building {step.name} failed (go exited {code}): {last[-1500:]} (full log: {log})")
    return compiled


def _progress_text(step: _Step, compiled: int, downloads: int, elapsed: float) -> str:
    if step.args[:1] == ["list"]:
        what = f"building {step.name}"
    elif step.expected:
        what = (f"building {step.name}: {compiled}/{step.expected} packages compiled "
                f"({min(100, 100 * compiled // step.expected)} %; cached ones are skipped)")
    else:
        what = f"building {step.name}: {compiled} packages compiled"
    if downloads:
        what += f", {downloads} modules downloaded"
    return f"{what}, {_clock(elapsed)} elapsed"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


@dataclass(frozen=True)
class BuildResult:
    build: ControlPlaneBuild
    cached: bool
    seconds: float


def build(versions: Versions = PINNED, *, rebuild: bool = False, cache_root: Path | None = None,
          progress: Progress = lambda _: None, go: str = "go") -> BuildResult:
    """The cached build of ``versions``, building it first when there is none (or ``rebuild``)."""
    started = time.monotonic()
    check_versions(versions)
    if not rebuild:
        found = find_build(versions, cache_root)
        if found is not None:
            return BuildResult(found, True, time.monotonic() - started)
    version = go_version(go)
    exe = shutil.which(go) or go
    root = cache_dir(cache_root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # one build at a time (parallel runs, xdist workers)
            progress("waiting for another control-plane build to finish")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not rebuild:
            found = find_build(versions, cache_root)
            if found is not None:
                return BuildResult(found, True, time.monotonic() - started)
        made = _build_locked(versions, exe, version, cache_root, progress, started)
    return BuildResult(made, False, time.monotonic() - started)


def _build_locked(versions: Versions, exe: str, version: str, cache_root: Path | None, progress: Progress,
                  started: float) -> ControlPlaneBuild:
    key = source_key(versions)
    final = build_dir(versions, cache_root)
    work = final.with_name(final.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    src, out = work / "src", work / "out"
    for rel, data in template_files().items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (out / "bin").mkdir(parents=True)
    (out / "manifests").mkdir()
    # kept outside the work directory, so that a failed build's log stays for reading
    log = cache_dir(cache_root) / "logs" / f"{final.name}.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text("")
    gocache = gocache_dir(cache_root)
    gocache.mkdir(parents=True, exist_ok=True)
    env = _go_env(gocache)
    jobs = str(max(1, os.cpu_count() or 1))
    common = ["build", "-v", "-p", jobs, "-trimpath"]
    steps = [
        _Step(f"etcd {versions.etcd}", src / "etcd",
              [*common, "-ldflags=-s -w", "-o", str(out / "bin" / "etcd"), ETCD_PACKAGE], [ETCD_PACKAGE]),
        _Step(f"Kubernetes {versions.kubernetes} and KubeVirt {versions.kubevirt}", src / "cp",
              [*common, f"-ldflags={_ldflags(versions)}", "-o", str(out / "bin") + "/", *CP_PACKAGES.values()],
              list(CP_PACKAGES.values())),
    ]
    timings: dict[str, float] = {}
    compiled: dict[str, int] = {}
    try:
        for label, step in zip(("etcd", "cp"), steps, strict=True):
            t0 = time.monotonic()
            # The packages a cold build compiles (and the modules it needs, downloaded now).
            listing = _Step(f"{step.name}: resolving modules", step.workdir, ["list", "-deps", *step.packages], [])
            step.expected = _run_go(listing, exe, env, log, progress, started)
            compiled[label] = _run_go(step, exe, env, log, progress, started)
            timings[label] = round(time.monotonic() - t0, 1)
        progress("generating KubeVirt's manifests with its own code")
        crds = _generate_manifests(out, log)
        info = {
            "format": BUILD_FORMAT, "key": key, "versions": asdict(versions), "go": version,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.monotonic() - started, 1), "step_seconds": timings,
            "packages_compiled": compiled, "kubevirt_crds": crds,
            "binaries": {n: (out / "bin" / n).stat().st_size for n in BINARIES},
        }
        shutil.copy(log, out / "build.log")
        (out / "build.json").write_text(json.dumps(info, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(out, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _prune(final)
    return ControlPlaneBuild.load(final)


def _prune(current: Path) -> None:
    """Remove builds of the same versions from other sources or formats (each is about 0.5 GB):
    nothing uses them (processes of a lab still running keep their binaries open)."""
    slug = current.name.rsplit("-", 1)[0]
    for other in current.parent.glob(f"{slug}-*"):
        if other != current and other.is_dir() and not other.name.endswith(".building"):
            shutil.rmtree(other, ignore_errors=True)


def _generate_manifests(out: Path, log: Path) -> int:
    gen = out / "bin" / "kubevirt-manifests"
    crds = 0
    for kind in MANIFEST_TYPES:
        try:
            proc = subprocess.run([str(gen), "-type", kind, "-namespace", KUBEVIRT_NAMESPACE],
                                  capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            raise BuildFailed(f"kubevirt-manifests -type {kind}: {exc}") from None
        if proc.returncode != 0:
            with open(log, "a") as logf:
                logf.write(proc.stderr)
            raise BuildFailed(f"kubevirt-manifests -type {kind} exited {proc.returncode}: "
                              f"{proc.stderr.strip()[-500:]}")
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        try:
            docs = [d for d in yaml.load_all(proc.stdout, Loader=loader) if isinstance(d, dict)]
        except yaml.YAMLError as exc:
            raise BuildFailed(f"kubevirt-manifests -type {kind} printed invalid YAML: {exc}") from None
        if not docs:
            raise BuildFailed(f"kubevirt-manifests -type {kind} printed nothing")
        if kind == "crds":
            crds = sum(1 for d in docs if d.get("kind") == "CustomResourceDefinition")
            if crds != EXPECTED_CRDS:
                raise BuildFailed(f"kubevirt-manifests printed {crds} CRDs, expected {EXPECTED_CRDS}")
        (out / "manifests" / f"{kind}.yaml").write_text(proc.stdout)
        (out / "manifests" / f"{kind}.json").write_text(json.dumps(docs))
    return crds
