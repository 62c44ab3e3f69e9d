"""``virtproof images build|export|list``: guest images built locally from distribution packages, and the
control plane of the sim-kubevirt lab (``images build control-plane``), built from the Go module proxy."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.text import Text

from virtproof.core.errors import EXIT_OK, UsageError
from virtproof.lab.images.debs import PackageError
from virtproof.lab.images.store import BUILDERS, ImageNotFound, ImageStore
from virtproof.terminal import status_updater, stderr_console


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("images", help="build or list guest images (cache: ~/.cache/virtproof)")
    isub = p.add_subparsers(dest="images_command", metavar="ACTION", required=True)
    b = isub.add_parser("build", help="build an image from Debian packages (cached by content hash)")
    b.add_argument("name", nargs="?", default="micro",
                   help=f"image name (one of: {', '.join(sorted(BUILDERS))}, {CONTROL_PLANE})")
    b.add_argument("--rebuild", action="store_true", help="build again even if cached")
    for component in ("kubernetes", "kubevirt", "etcd"):
        b.add_argument(f"--{component}-version", metavar="VERSION",
                       help=f"{CONTROL_PLANE} only: the {component} version (default: the pinned one)")
    b.set_defaults(func=build)
    e = isub.add_parser("export", help="export an image for a platform: micro as a KubeVirt containerDisk")
    e.add_argument("name", choices=["micro"], help="the image (micro)")
    e.add_argument("--containerdisk", metavar="OUT.tar", type=Path, required=True,
                   help="write an OCI image archive (push: skopeo copy oci-archive:OUT.tar docker://REF)")
    e.add_argument("--tag", default="virtproof/micro:latest", help="the archive's image reference")
    e.set_defaults(func=export)
    ls = isub.add_parser("list", help="list built images")
    ls.set_defaults(func=list_images)


CONTROL_PLANE = "control-plane"


def build(args: argparse.Namespace) -> int:
    if args.name == CONTROL_PLANE:
        return build_control_plane(args)
    if args.kubernetes_version or args.kubevirt_version or args.etcd_version:
        raise UsageError(f"--kubernetes-version, --kubevirt-version and --etcd-version are for {CONTROL_PLANE}")
    console = stderr_console()
    store = ImageStore.default()
    try:
        with console.status(Text(f"building {args.name}")) as status:
            image = store.build(args.name, rebuild=args.rebuild, progress=status_updater(status))
    except ImageNotFound as exc:
        raise UsageError(str(exc)) from None
    except PackageError as exc:
        print(f"virtproof: image build failed: {exc}", file=sys.stderr)
        return 1
    print(f"{image.name} {image.digest[:16]} {image.directory}")
    return EXIT_OK


def build_control_plane(args: argparse.Namespace) -> int:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler, virt-api, virt-controller and
    KubeVirt's manifest generator, cached by versions and sources; exit 3 when this host cannot build."""
    from virtproof.lab.controlplane import build as cp

    versions = cp.Versions(etcd=args.etcd_version or cp.PINNED.etcd,
                           kubernetes=args.kubernetes_version or cp.PINNED.kubernetes,
                           kubevirt=args.kubevirt_version or cp.PINNED.kubevirt)
    cp.check_versions(versions)
    console = stderr_console()
    if console.is_terminal:
        with console.status(Text(f"building the control plane ({versions.slug})")) as status:
            result = cp.build(versions, rebuild=args.rebuild, progress=status_updater(status))
    else:  # CI logs: a line now and then, not a spinner
        last = [0.0]

        def progress(message: str) -> None:
            now = time.monotonic()
            if now - last[0] >= 30:
                last[0] = now
                print(f"virtproof: {message}", file=sys.stderr, flush=True)

        result = cp.build(versions, rebuild=args.rebuild, progress=progress)
    made = result.build
    how = "cached" if result.cached else f"built in {_duration(result.seconds)}"
    print(f"{CONTROL_PLANE} {made.versions.slug} {made.key[:16]} {made.directory} ({how})")
    return EXIT_OK


def export(args: argparse.Namespace) -> int:
    """The micro guest as a containerDisk archive, its keys beside it, and the scenario entry."""
    from virtproof.micro_export import export_micro_containerdisk

    out: Path = args.containerdisk
    console = stderr_console()
    with console.status(Text(f"exporting {args.name} as a containerDisk")):
        made = export_micro_containerdisk(out, args.tag)
    size = made.archive.path.stat().st_size / 2**20
    print(f"{made.archive.path} ({size:.1f} MiB, {made.archive.tag}, manifest {made.archive.manifest_digest})")
    print(f"push it:  skopeo copy oci-archive:{made.archive.path} docker://REGISTRY/virtproof/micro:latest")
    print("then in the scenario's lab (kind existing, kind or kubeadm):")
    print(f"  images:\n    micro:\n      container_disk: REGISTRY/virtproof/micro:latest\n"
          f"      cloud_init: false\n      user: root\n      private_key: {made.private_key.resolve()}\n"
          f"      host_key: '{made.host_key}'")
    return EXIT_OK


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def list_images(args: argparse.Namespace) -> int:
    from virtproof.lab.controlplane.build import list_builds

    images = ImageStore.default().list()
    planes = list_builds()
    if not images and not planes:
        print("no images built yet; run `virtproof images build micro`", file=sys.stderr)
    for image in images:
        size = sum(p.stat().st_size for p in image.directory.iterdir() if p.is_file())
        print(
            f"{image.name:12} {image.digest[:16]}  {size / 2**20:7.1f} MiB  kernel {image.kernel_version}  "
            f"{image.directory}"
        )
    for plane in planes:
        info = plane.info
        v = plane.versions
        print(f"{CONTROL_PLANE:12} {plane.key[:16]}  {plane.size_bytes / 2**20:7.1f} MiB  "
              f"Kubernetes {v.kubernetes}, KubeVirt {v.kubevirt}, etcd {v.etcd}, "
              f"{info.get('go', '?')}, built in {_duration(float(info.get('seconds', 0)))}  {plane.directory}")
    return EXIT_OK
