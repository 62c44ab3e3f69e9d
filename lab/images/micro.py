"""The micro guest: Debian's cloud kernel and an initramfs of busybox, dropbear and virtio modules.

Everything comes from Debian packages fetched with ``apt-get download`` into the cache and
unpacked there; nothing is installed on the host. The one thing compiled here is vp-memcheck
(``memcheck.py``: the guest memory-integrity checker, a static binary built from its C source
with musl-gcc or gcc), shipped as ``/usr/bin/vp-memcheck`` with a boot hook and two CGIs.
The dropbear host key is generated at build time (with the unpacked ``dropbearkey``) and its
public half is pinned in ``image.json``. The archive is deterministic for a given file tree
(sorted entries, mtime 0, root-owned); the image is cached under the hash of its inputs (package
hashes, init scripts, module list, vp-memcheck's source and compiler).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from virtproof.lab.images import cpio, memcheck
from virtproof.lab.images.cacheroot import cache_root_default as cache_root_default  # where images are cached
from virtproof.lab.images.debs import Deb, DebCache, PackageError, resolve_dependency, unpack
from virtproof.lab.images.elf import interpreter, load_order, needed_libraries

BUILDER_VERSION = "1"
HERE = resources.files(__package__)  # the guest scripts ship as package data beside this module
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib")
BASE_PACKAGES = [
    "busybox-static",
    "dropbear-bin",
    "libc6",
    "libcrypt1",
    "libtomcrypt1",
    "libtommath1",
    "libgmp10",
    "zlib1g",
]

# Transport first: virtio_net/virtio_blk do not depend on virtio_pci, but without it no device appears.
VIRTIO_MODULES = ("virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi", "virtio_rng", "sd_mod")
LEGACY_MODULES = ("ata_piix", "vmw_pvscsi", "vmxnet3", "sd_mod")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class GuestImage:
    """A built guest: kernel + initramfs (micro) or a disk; and the pinned SSH host key."""

    name: str
    digest: str
    directory: Path
    kernel: Path | None
    initrd: Path | None
    disk: Path | None
    host_key: str
    kernel_version: str
    user: str = "root"
    builder_digest: str = ""

    @classmethod
    def load(cls, directory: Path) -> GuestImage:
        meta = json.loads((directory / "image.json").read_text())

        def opt(key: str) -> Path | None:
            return directory / meta[key] if meta.get(key) else None

        return cls(
            name=meta["name"],
            digest=meta["digest"],
            directory=directory,
            kernel=opt("kernel"),
            initrd=opt("initrd"),
            disk=opt("disk"),
            host_key=meta["host_key"],
            kernel_version=meta["kernel_version"],
            user=meta.get("user", "root"),
            builder_digest=meta.get("builder_digest", ""),
        )


@dataclass(frozen=True)
class StagedPackages:
    """Packages unpacked into ``root``; ``kernel_version`` names lib/modules/<version>."""

    root: Path
    kernel_version: str
    package_digests: tuple[str, ...]

    @property
    def modules_root(self) -> Path:
        return self.root / "lib/modules" / self.kernel_version

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.kernel_version}"


def fetch_packages(cache_root: Path, progress: Progress = lambda _: None) -> list[Deb]:
    """Download (cached) the kernel, busybox, dropbear and its libraries as .deb files."""
    kernel_pkg = resolve_dependency("linux-image-cloud-amd64", "linux-image-")
    progress(f"fetching {kernel_pkg} and {len(BASE_PACKAGES)} packages with apt-get download")
    return DebCache(cache_root).fetch([kernel_pkg, *BASE_PACKAGES])


def stage_packages(debs: list[Deb], dest: Path, progress: Progress = lambda _: None) -> StagedPackages:
    """Unpack ``debs`` into ``dest``."""
    progress("unpacking packages")
    unpack(debs, dest)
    versions = sorted(p.name for p in (dest / "lib/modules").iterdir())
    if len(versions) != 1:
        raise PackageError(f"expected one kernel among the packages, found {versions}")
    return StagedPackages(dest, versions[0], tuple(sorted(d.sha256 for d in debs)))


def _find_library(stage: Path, soname: str) -> Path:
    for sub in LIB_DIRS:
        candidate = stage / sub / soname
        if candidate.exists():
            return candidate
    raise PackageError(f"library {soname} not found in the unpacked packages")


def _resolve_in(stage: Path, path: Path) -> Path:
    """Follow symlinks inside an unpacked tree, reading absolute targets relative to ``stage``."""
    for _ in range(40):
        if not path.is_symlink():
            return path
        target = os.readlink(path)
        path = stage / target.lstrip("/") if target.startswith("/") else path.parent / target
    raise PackageError(f"symlink loop at {path}")


def _copy_with_libraries(stage: Path, tree: Path, binaries: Sequence[str]) -> None:
    """Copy binaries (paths relative to the stage) and their shared-library closure into ``tree``."""
    pending = [stage / b for b in binaries]
    done: set[str] = set()
    while pending:
        src = pending.pop()
        rel = src.relative_to(stage).as_posix()
        if rel in done:
            continue
        done.add(rel)
        dest = tree / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        real_src = _resolve_in(stage, src)
        shutil.copyfile(real_src, dest)
        os.chmod(dest, 0o755)
        for soname in needed_libraries(real_src):
            pending.append(_find_library(stage, soname))
        interp = interpreter(real_src)
        if interp:
            real = _resolve_in(stage, stage / interp.lstrip("/"))
            pending.append(real)
            link = tree / interp.lstrip("/")
            if not link.exists() and real != stage / interp.lstrip("/"):
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to("/" + real.relative_to(stage).as_posix())


def _busybox_links(stage: Path, tree: Path) -> None:
    busybox = stage / "bin/busybox"
    applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True).stdout
    for applet in applets.split():
        link = tree / applet
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")


def generate_host_key(stage: Path, dest: Path) -> str:
    """Make a dropbear ed25519 host key with the unpacked dropbearkey; return its public line."""
    loader = _resolve_in(stage, stage / "lib64/ld-linux-x86-64.so.2")
    lib_path = ":".join(str(stage / d) for d in LIB_DIRS[:2])
    proc = subprocess.run(
        [str(loader), "--library-path", lib_path, str(stage / "usr/bin/dropbearkey"), "-t", "ed25519", "-f", str(dest)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise PackageError(f"dropbearkey failed: {proc.stderr.strip()}")
    for line in proc.stdout.splitlines():
        if line.startswith("ssh-ed25519 "):
            return " ".join(line.split()[:2])
    raise PackageError("dropbearkey printed no public key")


def stage_tree(staged: StagedPackages, tree: Path, modules: Sequence[str]) -> str:
    """Lay out the micro guest's file tree in ``tree``; return the pinned host public key.

    ``modules`` are loaded by /init in dependency order (names not found are built in).
    Reusable for disk variants: the same tree can be a root file system.
    """
    stage = staged.root
    for d in ("proc", "sys", "dev", "tmp", "run", "root/.ssh", "etc/dropbear", "etc/virtproof", "www", "newroot"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    os.chmod(tree / "root", 0o700)
    os.chmod(tree / "root/.ssh", 0o700)
    os.chmod(tree / "tmp", 0o1777)
    (tree / "bin").mkdir(exist_ok=True)
    shutil.copyfile(stage / "bin/busybox", tree / "bin/busybox")
    os.chmod(tree / "bin/busybox", 0o755)
    _busybox_links(stage, tree)
    _copy_with_libraries(stage, tree, ["usr/sbin/dropbear"])
    ordered = load_order(list(modules), staged.modules_root)
    module_list = []
    for info in ordered:
        rel = info.path.relative_to(staged.modules_root).as_posix()
        dest = tree / "lib/modules" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(info.path, dest)
        module_list.append(rel)
    (tree / "etc/virtproof/modules").write_text("\n".join(module_list) + "\n")
    for name, target in (
        ("init.sh", "init"),
        ("udhcpc.sh", "etc/virtproof/udhcpc.sh"),
        ("vp-dirty.sh", "bin/vp-dirty"),
    ):
        dest = tree / target
        dest.unlink(missing_ok=True)
        dest.write_bytes(HERE.joinpath(name).read_bytes())
        os.chmod(dest, 0o755)
    (tree / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (tree / "etc/group").write_text("root:x:0:\n")
    (tree / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    os.chmod(tree / "etc/shadow", 0o600)
    (tree / "etc/shells").write_text("/bin/sh\n")
    (tree / "www/index.html").write_text("virtproof micro guest\n")
    return generate_host_key(stage, tree / "etc/dropbear/dropbear_ed25519_host_key")


def add_memcheck(tree: Path, binary: Path) -> None:
    """vp-memcheck in the micro tree: the binary, its boot hook (``vp.memcheck=MIB[,MIBPS[,HOT]]``)
    and the CGIs ``/cgi-bin/memcheck`` (verify) and ``/cgi-bin/dmesg`` for checks without SSH."""
    files = {
        memcheck.GUEST_PATH.lstrip("/"): binary.read_bytes(),
        "etc/virtproof/boot.d/50-memcheck": HERE.joinpath("memcheck-boot.sh").read_bytes(),
        "www/cgi-bin/memcheck": HERE.joinpath("cgi-memcheck.sh").read_bytes(),
        "www/cgi-bin/dmesg": HERE.joinpath("cgi-dmesg.sh").read_bytes(),
    }
    for target, content in files.items():
        dest = tree / target
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(content)
        os.chmod(dest, 0o755)


def inputs_digest(debs: Sequence[Deb], modules: Sequence[str], extra: str = "") -> str:
    """The cache key of an image: package hashes, module list, init scripts, builder code."""
    h = hashlib.sha256()
    h.update(f"builder={BUILDER_VERSION}\nmodules={','.join(modules)}\n{extra}\n".encode())
    for digest in sorted(d.sha256 for d in debs):
        h.update(digest.encode())
    h.update(sources_digest().encode())
    return h.hexdigest()


def sources_digest() -> str:
    """Hash of the builder's own files: an image built by other code is stale."""
    h = hashlib.sha256()
    for name in ("init.sh", "udhcpc.sh", "vp-dirty.sh", "micro.py", "cpio.py", "elf.py", "memcheck.py",
                 memcheck.SOURCE, "memcheck-boot.sh", "cgi-memcheck.sh", "cgi-dmesg.sh"):
        h.update((HERE / name).read_bytes())
    return h.hexdigest()


def build_micro(cache_root: Path, *, rebuild: bool = False, progress: Progress = lambda _: None) -> GuestImage:
    """Build (or reuse from the cache) the micro guest image."""
    images = cache_root / "images"
    images.mkdir(parents=True, exist_ok=True)
    with open(images / ".micro.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time (xdist workers, parallel runs)
        debs = fetch_packages(cache_root, progress)
        compiler = memcheck.find_compiler()
        digest = inputs_digest(debs, VIRTIO_MODULES + LEGACY_MODULES, f"memcheck={memcheck.binary_key(compiler)}")
        target = images / f"micro-{digest[:16]}"
        if (target / "image.json").exists() and not rebuild:
            progress(f"micro image {digest[:16]} is cached")
            return GuestImage.load(target)
        with tempfile.TemporaryDirectory(prefix="virtproof-build-", dir=cache_root) as tmp:
            staged = stage_packages(debs, Path(tmp) / "stage", progress)
            progress("staging the initramfs tree")
            tree = Path(tmp) / "tree"
            host_key = stage_tree(staged, tree, VIRTIO_MODULES + LEGACY_MODULES)
            progress(f"compiling vp-memcheck ({compiler.identity})")
            checker = memcheck.build_binary(cache_root, compiler)
            add_memcheck(tree, checker)
            out = Path(tmp) / "out"
            out.mkdir()
            progress("packing initramfs")
            cpio.write_cpio(tree, out / "initrd.img", devices=(cpio.DeviceNode("/dev/console", 5, 1),))
            shutil.copyfile(staged.vmlinuz, out / "vmlinuz")
            size = (out / "initrd.img").stat().st_size + (out / "vmlinuz").stat().st_size
            meta: dict[str, object] = {
                "name": "micro",
                "digest": digest,
                "kernel": "vmlinuz",
                "initrd": "initrd.img",
                "disk": None,
                "host_key": host_key,
                "kernel_version": staged.kernel_version,
                "user": "root",
                "builder_digest": sources_digest(),
                "initrd_sha256": hashlib.sha256((out / "initrd.img").read_bytes()).hexdigest(),
                "memcheck": memcheck.GUEST_PATH,
                "memcheck_sha256": hashlib.sha256(checker.read_bytes()).hexdigest(),
                "memcheck_compiler": compiler.identity,
                "size_bytes": size,
                "built_at": datetime.now(UTC).isoformat(),
            }
            (out / "image.json").write_text(json.dumps(meta, indent=2) + "\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(out, target)
            progress(f"built micro image {digest[:16]} ({size // 1024} KiB)")
            return GuestImage.load(target)
