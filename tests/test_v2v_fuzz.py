"""Fuzzing the OVF/OVA reader (premigrate/ova.py) with generated input: a bounded number of
cases, each must end in an ``OvfInfo``/``OvaContents`` or a ``BadSource`` (one line), never
another exception, and none may take over 2 s (hypothesis' deadline)."""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtproof.premigrate.fixtures.ova import MAC, OVF_TEMPLATE
from virtproof.premigrate.imagefile import BadSource
from virtproof.premigrate.ova import check_ova, open_ova, ovf_meta, parse_ovf
from virtproof.premigrate.vmware import concerns

FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow], database=None)
GOOD_OVF = OVF_TEMPLATE.format(disk="d.vmdk", disk_size=512, capacity_mib=1, name="t", mac=MAC)
TAGS = ["Envelope", "VirtualSystem", "VirtualHardwareSection", "Item", "References", "File", "DiskSection", "Disk"]
RASD = ["ResourceType", "VirtualQuantity", "AllocationUnits", "HostResource", "Parent", "InstanceID", "Address"]


def _one_line(exc: BadSource) -> None:
    assert "\n" not in str(exc).strip(), str(exc)


def _parse(text: str) -> None:
    try:
        info = parse_ovf(text)
    except BadSource as exc:
        _one_line(exc)
        return
    concerns(ovf_meta(info), "t")  # what the pipeline does next must not fail either


@FUZZ
@given(st.text(max_size=4000))
def test_parse_ovf_takes_any_text(text: str) -> None:
    _parse(text)


@FUZZ
@given(st.data())
def test_parse_ovf_takes_mutated_ovfs(data: st.DataObject) -> None:
    """The fixture's OVF with values replaced, elements cut out or duplicated, text spliced in."""
    text = GOOD_OVF
    for _ in range(data.draw(st.integers(1, 6))):
        action = data.draw(st.sampled_from(["value", "cut", "dup", "splice", "tag"]))
        if action == "value":
            tag = data.draw(st.sampled_from(RASD))
            value = data.draw(st.one_of(st.text(max_size=30), st.integers().map(str), st.sampled_from(
                ["1e400", "nan", "-1", "inf", "0x10", "99999999999999999999", "byte * 2^99", ""])))  # fmt: skip
            text = text.replace(f"<rasd:{tag}>", f"<rasd:{tag}>{value}", 1)
        elif action == "cut":
            start = data.draw(st.integers(0, len(text)))
            text = text[:start] + text[start + data.draw(st.integers(0, 400)) :]
        elif action == "dup":
            start = data.draw(st.integers(0, len(text)))
            chunk = text[start : start + data.draw(st.integers(0, 800))]
            text = text[:start] + chunk * data.draw(st.integers(1, 4)) + text[start:]
        elif action == "splice":
            at = data.draw(st.integers(0, len(text)))
            text = text[:at] + data.draw(st.text(max_size=60)) + text[at:]
        else:
            tag = data.draw(st.sampled_from(TAGS))
            text = text.replace(f"<{tag}", f"<{data.draw(st.sampled_from(TAGS))}", 1)
    _parse(text)


def _tar(entries: list[tuple[str, str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, content in entries:
            info = tarfile.TarInfo(name)
            info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
                         "link": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE}[kind]  # fmt: skip
            if kind == "file":
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                info.linkname = "/etc/shadow"
                tar.addfile(info)
    return out.getvalue()


NAMES = st.one_of(
    st.sampled_from(["t.ovf", "t.mf", "d.vmdk", "../d.vmdk", "/etc/x", "a/../../b", "./t.ovf", "C:\\x", "x.cert"]),
    st.text(alphabet="abc./\\-_", min_size=1, max_size=20),
)
CONTENT = st.one_of(
    st.just(GOOD_OVF.encode()),
    st.just(b"SHA256(d.vmdk)= " + b"0" * 64 + b"\n"),
    st.binary(max_size=600),
)


KINDS = st.sampled_from(["file", "file", "file", "dir", "sym", "link", "fifo", "chr"])


@FUZZ
@given(st.lists(st.tuples(NAMES, KINDS, CONTENT), max_size=6), st.integers(0, 4000), st.booleans())
def test_ova_reader_takes_any_tar(entries: list[tuple[str, str, bytes]], cut: int, truncate: bool) -> None:
    blob = _tar(entries)
    if truncate:
        blob = blob[: max(0, len(blob) - cut)]
    with tempfile.TemporaryDirectory(prefix="vp-fuzz-") as tmp:
        path = Path(tmp) / "f.ova"
        path.write_bytes(blob)
        work = Path(tmp) / "work"
        work.mkdir()
        for reader in (check_ova, lambda p: open_ova(p, work)):
            try:
                reader(path)
            except BadSource as exc:
                _one_line(exc)
        written = {p.name for p in work.iterdir()}
        assert all(name.startswith("disk") for name in written), written  # nothing else, nowhere else
        assert {p.name for p in Path(tmp).iterdir()} == {"f.ova", "work"}


@FUZZ
@given(st.binary(max_size=3000))
def test_ova_reader_takes_any_bytes(blob: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="vp-fuzz-") as tmp:
        path = Path(tmp) / "f.ova"
        path.write_bytes(blob)
        try:
            check_ova(path)
        except BadSource as exc:
            _one_line(exc)
