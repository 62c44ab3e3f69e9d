"""Scenario files: their schema (pydantic) and a loader whose errors name file, line and field.

A scenario has Rally-style sections: ``lab`` (what is under test), ``guest`` (the VM shape),
``suites`` (each suite's parameters and its runner: ``count``, ``concurrency``) and ``slo``
(the gates). Unknown keys are errors everywhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from virtproof.scenarios.base import ScenarioError as ScenarioError  # the loader's error, re-exported
from virtproof.scenarios.base import Strict, SuiteRunner
from virtproof.scenarios.base import parse_mib as parse_mib
from virtproof.scenarios.density import DensitySuite
from virtproof.scenarios.kubevirt import ExistingLab, KindLab, KubeadmLab, SimKubeVirtLab
from virtproof.scenarios.migration import MigrationSuite
from virtproof.scenarios.reading import compose, read_text
from virtproof.scenarios.scale import ScaleSuite
from virtproof.scenarios.v2v import V2VSuite

# --- lab --------------------------------------------------------------------------------


class QemuLab(Strict):
    """The embedded lab: nodes are network namespaces (or loopback addresses), VMs are qemu."""

    kind: Literal["qemu"]
    nodes: int = Field(2, ge=1, le=16)
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    network: Literal["netns", "loopback"] = "netns"
    machine: Literal["q35", "pc"] = "q35"
    tb_size_mib: int = Field(64, ge=16, le=1024)
    # qemu < 9.0 loses dirty pages in TCG live migrations (virtproof.lab.qemu.defects): "auto" gives
    # every guest 8 KiB more RAM there, which avoids it; "off" does not (to show the defect).
    tcg_migration_workaround: Literal["auto", "off"] = "auto"


LabSpec = Annotated[QemuLab | KindLab | KubeadmLab | ExistingLab | SimKubeVirtLab, Field(discriminator="kind")]


# --- guest ------------------------------------------------------------------------------


class Guest(Strict):
    image: str = "micro"
    cpus: int = Field(1, ge=1, le=64)
    memory: int = Field(256, ge=80, le=1024 * 1024, description="MiB (or '256Mi', '1Gi')")

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: object) -> int:
        return parse_mib(value)


# --- suites -----------------------------------------------------------------------------


class BootSuite(SuiteRunner):
    """Boot ``count`` guests, ``concurrency`` at once; time to running, SSH and a command."""

    check_devices: bool = True




class Suites(Strict):
    boot: BootSuite | None = None
    density: DensitySuite | None = None
    migration: MigrationSuite | None = None
    v2v: V2VSuite | None = None
    scale: ScaleSuite | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> Suites:
        if not any(getattr(self, name) is not None for name in type(self).model_fields):
            raise ValueError("names no suite; add one of: " + ", ".join(type(self).model_fields))
        return self

    def enabled(self) -> list[str]:
        return [name for name in type(self).model_fields if getattr(self, name) is not None]


# --- SLOs -------------------------------------------------------------------------------


Stat = Literal["p50", "p95", "p99", "max", "min", "mean", "count"]


class SLO(Strict):
    metric: str = Field(min_length=1)
    stat: Stat = "p95"
    max: float | None = None
    min: float | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    # A ratio gate: stat(metric) / stat(ratio_to), same stat and labels, checked against max/min.
    ratio_to: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _has_bound(self) -> SLO:
        if self.max is None and self.min is None:
            raise ValueError("needs max or min")
        return self


class Scenario(Strict):
    name: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str = ""
    lab: LabSpec
    # A bake-off: the same suites on each of these labs, then one comparison (``virtproof run``).
    # With ``labs`` and no ``lab``, ``lab`` is the first of them.
    labs: list[LabSpec] = Field(default_factory=list)
    guest: Guest = Field(default_factory=Guest)
    suites: Suites
    slo: list[SLO] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _lab_from_labs(cls, data: Any) -> Any:
        if isinstance(data, dict) and "labs" in data:
            if "lab" in data:
                raise ValueError("give either lab or labs, not both")
            labs = data["labs"]
            if isinstance(labs, list) and labs:
                data = {**data, "lab": labs[0]}
        return data

    def for_lab(self, index: int) -> Scenario:
        """This scenario with ``labs[index]`` as its only lab."""
        return self.model_copy(update={"lab": self.labs[index], "labs": []})

    @field_validator("suites")
    @classmethod
    def _suites_fit_lab(cls, suites: Suites, info: ValidationInfo) -> Suites:
        lab, guest = info.data.get("lab"), info.data.get("guest")
        if suites.migration is not None:
            nodes, why = (lab.nodes, "") if isinstance(lab, QemuLab | SimKubeVirtLab) else (None, "")
            if isinstance(lab, KindLab | KubeadmLab):  # an existing cluster's nodes are known only at run time
                nodes, why = lab.schedulable_nodes
            suites.migration.check(nodes, guest.memory if guest else None, why)
        return suites


# --- loading ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedScenario:
    path: Path
    text: str
    sha256: str
    scenario: Scenario


class _LineMap:
    """Maps field paths (tuples of keys and indexes) to the YAML line where they start."""

    def __init__(self) -> None:
        self.lines: dict[tuple[str | int, ...], int] = {}

    def walk(self, node: yaml.Node, path: tuple[str | int, ...], file: str) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)  # a key's own line wins over its value's
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, _ in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
                if key in seen:
                    raise ScenarioError(
                        file,
                        key_node.start_mark.line + 1,
                        _dotted(path + (key,)),
                        f"duplicate key (first at line {seen[key]})",
                    )
                seen[key] = key_node.start_mark.line + 1
                self.lines[path + (key,)] = key_node.start_mark.line + 1
                self.walk(_, path + (key,), file)
        elif isinstance(node, yaml.SequenceNode):
            for index, child in enumerate(node.value):
                self.walk(child, path + (index,), file)

    def line_for(self, loc: tuple[str | int, ...]) -> int | None:
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _num(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _message(error: Any) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "greater_than_equal":
        return f"must be at least {_num(ctx['ge'])}"
    if kind == "greater_than":
        return f"must be more than {_num(ctx['gt'])}"
    if kind == "less_than_equal":
        return f"must be at most {_num(ctx['le'])}"
    if kind == "less_than":
        return f"must be less than {_num(ctx['lt'])}"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "is required"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "must be a whole number"
    if kind in ("float_parsing", "float_type"):
        return "must be a number"
    if kind in ("bool_parsing", "bool_type"):
        return "must be true or false"
    if kind in ("string_type",):
        return "must be a string"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "must be a mapping"
    if kind == "list_type":
        return "must be a list"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}"
    if kind == "union_tag_invalid":
        key = str(ctx.get("discriminator", "'kind'")).strip("'")
        return f"unknown {key} {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"needs '{ctx.get('discriminator', 'kind').strip(chr(39))}'"
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


def _scenario_error(path: Path, lines: _LineMap, exc: ValidationError, data: object) -> ScenarioError:
    error = exc.errors()[0]
    loc = tuple(error["loc"])
    if not isinstance(data, dict):
        return ScenarioError(path, lines.line_for(loc), _dotted(loc), _message(error))
    if loc[:1] == ("lab",) and "lab" not in data and isinstance(data.get("labs"), list):
        loc = ("labs", 0, *loc[1:])  # ``lab`` was taken from ``labs[0]``: point at what the user wrote
    # A discriminated union puts its tag into the location (lab.qemu.nodes): drop it.
    if len(loc) > 1 and loc[0] == "lab" and isinstance(data.get("lab"), dict) and loc[1] == data["lab"].get("kind"):
        loc = loc[:1] + loc[2:]
    labs = data.get("labs")
    if len(loc) > 2 and loc[0] == "labs" and isinstance(loc[1], int) and isinstance(labs, list):
        entry = labs[loc[1]] if loc[1] < len(labs) else None
        if isinstance(entry, dict) and loc[2] == entry.get("kind"):
            loc = loc[:2] + loc[3:]
    return ScenarioError(path, lines.line_for(loc), _dotted(loc), _message(error))


def parse_scenario(text: str, path: Path | str = "<scenario>") -> Scenario:
    path = Path(path)
    node = compose(text, path)  # refuses bombs and deep nesting before anything walks the tree
    if node is None:
        raise ScenarioError(path, None, "", "empty scenario")
    if not isinstance(node, yaml.MappingNode):
        raise ScenarioError(path, node.start_mark.line + 1, "", "a scenario must be a mapping")
    lines = _LineMap()
    lines.walk(node, (), str(path))
    try:
        data = yaml.safe_load(text)  # the text passed compose(): small, shallow, no alias bomb
    except yaml.MarkedYAMLError as exc:  # e.g. a tag SafeLoader does not construct (!python/...)
        mark = exc.problem_mark or exc.context_mark
        raise ScenarioError(path, mark.line + 1 if mark else None, "", f"invalid YAML: {exc.problem or exc}") from None
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise _scenario_error(path, lines, exc, data) from None


def load_scenario(path: Path | str) -> LoadedScenario:
    """Read and validate a scenario file; raise ScenarioError with file:line: field: message."""
    path = Path(path)
    text = read_text(path)
    scenario = parse_scenario(text, path)
    return LoadedScenario(path, text, hashlib.sha256(text.encode()).hexdigest(), scenario)
