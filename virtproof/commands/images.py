"""``virtproof images build|list``: guest images built locally from distribution packages."""

from __future__ import annotations

import argparse
import sys

from rich.text import Text

from virtproof.core.errors import EXIT_OK, UsageError
from virtproof.lab.images.debs import PackageError
from virtproof.lab.images.store import BUILDERS, ImageNotFound, ImageStore
from virtproof.terminal import status_updater, stderr_console


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("images", help="build or list guest images (cache: ~/.cache/virtproof)")
    isub = p.add_subparsers(dest="images_command", metavar="ACTION", required=True)
    b = isub.add_parser("build", help="build an image from Debian packages (cached by content hash)")
    b.add_argument("name", nargs="?", default="micro", help=f"image name (one of: {', '.join(sorted(BUILDERS))})")
    b.add_argument("--rebuild", action="store_true", help="build again even if cached")
    b.set_defaults(func=build)
    ls = isub.add_parser("list", help="list built images")
    ls.set_defaults(func=list_images)


def build(args: argparse.Namespace) -> int:
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


def list_images(args: argparse.Namespace) -> int:
    images = ImageStore.default().list()
    if not images:
        print("no images built yet; run `virtproof images build micro`", file=sys.stderr)
    for image in images:
        size = sum(p.stat().st_size for p in image.directory.iterdir() if p.is_file())
        print(
            f"{image.name:12} {image.digest[:16]}  {size / 2**20:7.1f} MiB  kernel {image.kernel_version}  "
            f"{image.directory}"
        )
    return EXIT_OK
