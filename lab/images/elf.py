"""ELF facts the image builder needs: shared-library dependencies and kernel module metadata."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile


def needed_libraries(binary: Path) -> list[str]:
    """DT_NEEDED entries of ``binary`` (empty for a static binary)."""
    with open(binary, "rb") as fh:
        elf = ELFFile(fh)
        for section in elf.iter_sections():
            if isinstance(section, DynamicSection):
                return [str(tag.needed) for tag in section.iter_tags() if tag.entry.d_tag == "DT_NEEDED"]  # type: ignore[attr-defined]
    return []


def interpreter(binary: Path) -> str | None:
    with open(binary, "rb") as fh:
        elf = ELFFile(fh)
        for segment in elf.iter_segments():
            if segment.header.p_type == "PT_INTERP":
                return str(segment.get_interp_name())  # type: ignore[attr-defined]
    return None


@dataclass(frozen=True)
class ModuleInfo:
    name: str
    path: Path
    depends: tuple[str, ...]


def module_name(path: Path) -> str:
    name = path.name
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.replace("-", "_")


def module_info(path: Path) -> ModuleInfo:
    """Read ``depends=`` from an (uncompressed) module's .modinfo section."""
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        section = elf.get_section_by_name(".modinfo")
        raw = section.data() if section is not None else b""
    depends: tuple[str, ...] = ()
    for item in raw.split(b"\0"):
        if item.startswith(b"depends="):
            value = item[len(b"depends=") :].decode()
            depends = tuple(d.replace("-", "_") for d in value.split(",") if d)
    return ModuleInfo(module_name(path), path, depends)


def load_order(wanted: list[str], modules_root: Path) -> list[ModuleInfo]:
    """``wanted`` plus their dependencies, each after what it depends on.

    Names may use ``-`` or ``_``; a name with no module file is taken as built in and skipped.
    """
    index = {module_name(p): p for p in modules_root.rglob("*.ko*")}
    ordered: list[ModuleInfo] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen or name not in index:
            return
        if name in chain:
            raise ValueError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
        info = module_info(index[name])
        for dep in info.depends:
            visit(dep, chain + (name,))
        seen.add(name)
        ordered.append(info)

    for name in wanted:
        visit(name, ())
    return ordered
