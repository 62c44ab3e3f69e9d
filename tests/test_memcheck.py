"""vp-memcheck, the guest memory-integrity checker: built from its C source, it finds every kind of
damage done to its region behind its back, counts each once, and ships in the micro image and as
a cloud-init ``write_files`` entry. Run here on the host (the same static binary the guests get)."""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from virtproof.lab.images import memcheck
from virtproof.lab.images.micro import GuestImage, cache_root_default


def _cpio_names(path: Path) -> set[str]:
    listing = subprocess.run(["cpio", "-it", "--quiet"], input=gzip.decompress(path.read_bytes()),
                             capture_output=True, check=True).stdout  # fmt: skip
    return set(listing.decode().split())


@pytest.fixture(scope="module")
def binary() -> Path:
    return memcheck.build_binary(cache_root_default())


class Region:
    """A vp-memcheck workload on this host with its files in a temporary directory."""

    def __init__(self, binary: Path, directory: Path) -> None:
        self.binary = binary
        self.region, pid, report = directory / "region", directory / "pid", directory / "report"
        self.files = {
            "run": ["-f", str(self.region), "-p", str(pid), "-o", str(report)],
            "verify": ["-p", str(pid), "-o", str(report)],
            "stop": ["-p", str(pid)],
            "corrupt": ["-f", str(self.region)],
        }

    def __call__(self, command: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(self.binary), command, *self.files[command], *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if check:
            assert proc.returncode in (0, 1), proc.stderr
        return proc

    def verify(self) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(self("verify").stdout)
        return report


@pytest.fixture
def region(binary: Path, tmp_path: Path) -> Iterator[Region]:
    r = Region(binary, tmp_path)
    assert r("run", "-m", "8", "-r", "4").returncode == 0
    yield r
    assert r("stop").returncode == 0
    assert not r.region.exists(), "stop leaves the region behind"


def test_the_binary_is_static_and_small(binary: Path) -> None:
    head = binary.read_bytes()[:64]
    assert head[:4] == b"\x7fELF" and head[4] == 2  # 64-bit ELF
    ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    assert "not a dynamic executable" in ldd.stdout + ldd.stderr or "statically linked" in ldd.stdout + ldd.stderr
    assert binary.stat().st_size < 1024 * 1024


def test_a_clean_region_verifies_clean(region: Region) -> None:
    report = region.verify()
    assert report["bad_pages"] == 0 and report["bad_pages_total"] == 0 and report["pages"] == 8 * 256
    assert report["bad"] == [] and report["sweep_bad"] == []
    assert region("verify").returncode == 0


@pytest.mark.parametrize(("how", "expect"), [
    ("stale", {"holds_page": 300, "word": 1}),    # the previous generation: a lost dirty page
    ("swap", {"holds_page": 301, "word": 1}),     # another page's content
    ("zero", {"holds": "zeros", "word": 0}),
    ("flip", {"holds_page": 300, "word": 256}),   # one bit in the middle of the page
])  # fmt: skip
def test_damage_behind_its_back_is_found_described_and_counted_once(
    region: Region, how: str, expect: dict[str, object]
) -> None:
    before = region.verify()
    region("corrupt", "-P", "300", "-x", how)
    report = region.verify()
    found = report["bad"] + report["sweep_bad"]
    assert report["bad_pages"] + report["sweep_bad_pages"] == 1, report
    assert report["bad_pages_total"] == 1
    (bad,) = found
    assert bad["page"] == 300 and int(bad["offset"], 16) // 4096 == 300
    for key, value in expect.items():
        assert bad[key] == value, (key, bad)
    if how == "stale":
        assert bad["holds_gen"] != bad["expected_gen"]
    assert region("verify").returncode == 1  # a bad page was found, ever
    again = region.verify()  # repaired: not found a second time
    assert again["bad_pages"] == 0 and again["sweep_bad_pages"] == 0 and again["bad_pages_total"] == 1
    assert before["seq"] < report["seq"] < again["seq"]


def test_stop_without_a_workload_and_corrupt_outside_the_region_are_clear(binary: Path, tmp_path: Path) -> None:
    r = Region(binary, tmp_path)
    assert r("stop").returncode == 0
    proc = r("verify", check=False)
    assert proc.returncode == 2 and "no workload pid" in proc.stderr
    assert r("run", "-m", "1").returncode == 0
    try:
        proc = r("corrupt", "-P", "256", check=False)
        assert proc.returncode == 2 and "not inside" in proc.stderr
    finally:
        r("stop")


def test_bench_measures_verification_time_per_gib(binary: Path) -> None:
    out = subprocess.run([str(binary), "bench", "-m", "64", "-n", "1"], capture_output=True, text=True, check=True,
                         timeout=120).stdout  # fmt: skip
    row = json.loads(out.splitlines()[0])
    assert row["bad"] == 0 and row["verify_s_per_gib"] > 0 and row["mib"] == 64


def test_the_micro_image_carries_it(micro_image: GuestImage) -> None:
    assert micro_image.initrd is not None
    names = _cpio_names(micro_image.initrd)
    for needed in ("usr/bin/vp-memcheck", "etc/virtproof/boot.d/50-memcheck", "www/cgi-bin/memcheck",
                   "www/cgi-bin/dmesg"):  # fmt: skip
        assert needed in names, needed
    meta = json.loads((micro_image.directory / "image.json").read_text())
    assert meta["memcheck"] == memcheck.GUEST_PATH and len(meta["memcheck_sha256"]) == 64
    assert meta["memcheck_compiler"].startswith(("musl-gcc", "gcc"))


def test_the_image_digest_covers_its_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    compiler = memcheck.find_compiler()
    key = memcheck.binary_key(compiler)
    changed = tmp_path / memcheck.SOURCE
    changed.write_bytes(memcheck.source_bytes() + b"\n/* changed */\n")
    monkeypatch.setattr(memcheck, "source_bytes", changed.read_bytes)
    assert memcheck.binary_key(compiler) != key


def test_cloud_init_write_files_installs_the_same_binary(binary: Path) -> None:
    entry = memcheck.cloud_init_write_files(binary)
    assert entry["path"] == "/usr/local/bin/vp-memcheck" and entry["permissions"] == "0755"
    assert entry["encoding"] == "gz+b64"
    assert gzip.decompress(base64.b64decode(entry["content"])) == binary.read_bytes()
    doc = yaml.safe_load("#cloud-config\n" + yaml.safe_dump({"write_files": [entry]}))
    assert doc["write_files"][0]["content"] == entry["content"]
    assert len(entry["content"]) < 1_000_000  # fits a Secret (KubeVirt's inline userData is capped at 2 KiB)
    assert memcheck.cloud_init_write_files() == memcheck.cloud_init_write_files(binary)  # built and cached
    assert os.access(binary, os.X_OK)
