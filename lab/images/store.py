"""Where built guest images live (``~/.cache/virtproof/images``) and how suites find them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from virtproof.lab.images.micro import GuestImage, build_micro, cache_root_default, sources_digest

Builder = Callable[..., GuestImage]

# Image name -> builder. Other builders (disk variants, V2V fixtures) register here.
BUILDERS: dict[str, Builder] = {"micro": build_micro}
# Image name -> digest of its builder's sources, for images whose builder records one.
CURRENT_SOURCES: dict[str, Callable[[], str]] = {"micro": sources_digest}


class ImageNotFound(LookupError):
    """No such image name, or it is not built and building was not allowed."""


@dataclass(frozen=True)
class ImageStore:
    root: Path

    @classmethod
    def default(cls) -> ImageStore:
        return cls(cache_root_default())

    def list(self) -> list[GuestImage]:
        images_dir = self.root / "images"
        if not images_dir.is_dir():
            return []
        found = [GuestImage.load(d) for d in images_dir.iterdir() if (d / "image.json").exists()]
        return sorted(found, key=lambda i: (i.name, (i.directory / "image.json").stat().st_mtime))

    def latest(self, name: str) -> GuestImage | None:
        """The newest image of that name built by the current builder code (others are stale)."""
        current = CURRENT_SOURCES.get(name)
        matching = [i for i in self.list() if i.name == name and (current is None or i.builder_digest == current())]
        return matching[-1] if matching else None

    def build(
        self, name: str, *, rebuild: bool = False, progress: Callable[[str], None] = lambda _: None
    ) -> GuestImage:
        if name not in BUILDERS:
            raise ImageNotFound(f"unknown image {name!r}; known: {', '.join(sorted(BUILDERS))}")
        return BUILDERS[name](self.root, rebuild=rebuild, progress=progress)

    def get(self, name: str, *, progress: Callable[[str], None] = lambda _: None) -> GuestImage:
        """The newest built image of that name, building it first if there is none."""
        return self.latest(name) or self.build(name, progress=progress)
