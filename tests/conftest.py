"""Fixtures shared by virtproof's own tests: the project paths, the micro image, leftover checks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.images.micro import GuestImage
from lab.images.store import ImageStore

ROOT = Path(__file__).resolve().parent.parent
SHARED_KUBEVIRT = ROOT.parent / "shared" / "kubevirt"


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def virtproof_cmd() -> list[str]:
    """The installed console script, run as a user would."""
    exe = Path(sys.executable).with_name("virtproof")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "virtproof"]


@pytest.fixture(scope="session")
def micro_image() -> GuestImage:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    return ImageStore.default().get("micro")


@pytest.fixture(scope="session")
def shared_kubevirt() -> Path:
    if not (SHARED_KUBEVIRT / "kubevirt-openapi.json").exists():
        pytest.skip(f"KubeVirt schemas not found at {SHARED_KUBEVIRT}")
    return SHARED_KUBEVIRT


def _leftovers(marker: str) -> list[str]:
    found = []
    ps = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True, check=False).stdout
    found += [f"process: {line}" for line in ps.splitlines() if marker in line]
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    found += [f"netns: {line}" for line in ns.splitlines() if marker in line]
    state = Path(os.environ.get("VIRTPROOF_STATE") or "/tmp/virtproof-state") / "labs"
    if state.is_dir():
        found += [f"dir: {p}" for p in state.iterdir() if marker in p.name]
    return found


@pytest.fixture(scope="session")
def leftovers() -> Callable[[str], list[str]]:
    """``leftovers(marker)``: qemu processes, namespaces and state dirs whose names carry ``marker``."""
    return _leftovers


def needs_root() -> pytest.MarkDecorator:
    return pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
