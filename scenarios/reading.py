"""Reading a scenario file calmly, whatever it turns out to be.

virtproof runs as root on files users hand it, so before any YAML is parsed the file must be a
regular file (not a directory, FIFO, device or a symlink loop), at most ``MAX_BYTES``, text
without NUL bytes, and UTF-8. After composing, the YAML must not nest deeper than the parser can
follow nor expand (through anchors and aliases) to more than ``MAX_NODES`` nodes: a
"billion laughs" file is a few hundred bytes that would otherwise take minutes and gigabytes
to validate. Every refusal is one ``ScenarioError`` line naming the file.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

import yaml

from virtproof.scenarios.base import ScenarioError

MAX_BYTES = 1024 * 1024
MAX_NODES = 100_000
MAX_FLOW_DEPTH = 64  # [ and { nesting; PyYAML's scanner reads a deep flow collection ahead, slowly
_FLOW = re.compile(r"""[\[\]{}]|"(?:\\.|[^"\\])*"|'(?:[^']|'')*'|#[^\n]*""")

_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}  # fmt: skip


def read_text(path: Path) -> str:
    """The file's text; ScenarioError if it is not a small UTF-8 text file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ScenarioError(path, None, "", "no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ScenarioError(path, None, "", "a symlink loop, not a file") from None
        raise ScenarioError(path, None, "", f"cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise ScenarioError(path, None, "", f"is {kind}, not a scenario file")
    if info.st_size > MAX_BYTES:
        raise ScenarioError(path, None, "", f"is {info.st_size} bytes; a scenario is at most {MAX_BYTES} bytes")
    try:
        # O_NONBLOCK: if the path was swapped for a FIFO since the stat, opening it does not hang.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise ScenarioError(path, None, "", f"cannot read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ScenarioError(path, None, "", "is not a regular file")
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ScenarioError(path, None, "", f"is more than {MAX_BYTES} bytes; a scenario is at most that")
    return decode(data, path)


def decode(data: bytes, path: Path | str) -> str:
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ScenarioError(path, None, "", f"binary data (a NUL byte at offset {nul}), not YAML")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = f"byte 0x{data[exc.start]:02x} at offset {exc.start}"
        raise ScenarioError(path, None, "", f"not UTF-8 text ({bad})") from None


def compose(text: str, path: Path | str) -> yaml.Node | None:
    """The YAML node graph of ``text``, refused when it nests too deep or expands too far."""
    if len(text) > MAX_BYTES:
        raise ScenarioError(path, None, "", f"is more than {MAX_BYTES} characters; a scenario is at most that")
    if flow_depth(text) > MAX_FLOW_DEPTH:
        raise ScenarioError(path, None, "", f"nested more than {MAX_FLOW_DEPTH} brackets deep; not a scenario")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise ScenarioError(path, None, "", "nested too deeply to be a scenario") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ScenarioError(path, line, "", f"invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(path, None, "", f"invalid YAML: {str(exc).splitlines()[0]}") from None
    if node is not None:
        size = expanded_size(node, MAX_NODES)
        if size < 0:
            raise ScenarioError(path, None, "", "a YAML alias refers to its own anchor (a recursive document); refused")
        if size > MAX_NODES:
            raise ScenarioError(
                path, None, "", f"expands to more than {MAX_NODES} YAML nodes (anchors and aliases); refused"
            )
    return node


def flow_depth(text: str) -> int:
    """The deepest nesting of ``[`` and ``{`` outside quoted strings and comments."""
    depth = deepest = 0
    for match in _FLOW.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth = max(0, depth - 1)
    return deepest


def expanded_size(root: yaml.Node, limit: int) -> int:
    """How many nodes ``root`` stands for once every alias is expanded (stops counting past ``limit``);
    -1 for a recursive document (an alias inside its own anchor).

    Aliased nodes are the same objects, so each distinct node's size is computed once; the walk
    is iterative, so a deep tree costs no Python stack.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if children_done or not children:
            open_nodes.discard(key)
            sizes[key] = min(limit + 1, 1 + sum(sizes.get(id(c), 0) for c in children))
            continue
        if key in open_nodes:
            return -1
        open_nodes.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes:
                return -1
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []
