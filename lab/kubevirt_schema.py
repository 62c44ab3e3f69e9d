"""Validate Kubernetes objects against KubeVirt's and CDI's OpenAPI (swagger 2.0) documents.

The swagger ``definitions`` become one JSON Schema per document (``$ref: #/definitions/X``
resolves inside it). Two Kubernetes encodings swagger types too narrowly are widened:
``Quantity`` and ``IntOrString`` accept a string or a number. In ``strict`` mode (the default,
like ``kubectl --validate=strict``) an object with declared properties rejects unknown keys.

    schemas = load_schemas(Path("../shared/kubevirt"))
    errors = schemas.validate("v1.VirtualMachine", vm)   # or the module-level validate()
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

DOCUMENTS = {"kubevirt": "kubevirt-openapi.json", "cdi": "cdi-openapi.json"}
_WIDE_FORMATS = {"int-or-string", "quantity"}


class SchemaUnavailable(FileNotFoundError):
    """The shared schema documents are not where they were looked for."""


def _drop_nulls(node: Any) -> Any:
    """Kubernetes decodes ``null`` as "not set"; so does this validator."""
    if isinstance(node, dict):
        return {k: _drop_nulls(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_drop_nulls(v) for v in node]
    return node


def _widen(node: Any, strict: bool) -> Any:
    if isinstance(node, dict):
        out = {k: _widen(v, strict) for k, v in node.items()}
        fmt = out.get("format")
        if (isinstance(fmt, str) and fmt in _WIDE_FORMATS) or (
            out.get("type") == "string" and "Quantity is a fixed-point" in str(out.get("description", ""))
        ):
            out["type"] = ["string", "number"]
        if (
            strict
            and out.get("type") == "object"
            and isinstance(out.get("properties"), dict)
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_widen(v, strict) for v in node]
    return node


@dataclass
class _Document:
    name: str
    definitions: dict[str, Any]
    strict: bool
    validators: dict[str, jsonschema.Draft4Validator] = field(default_factory=dict)

    def validator(self, kind: str) -> jsonschema.Draft4Validator:
        if kind not in self.validators:
            schema = {"definitions": self.definitions, "$ref": f"#/definitions/{kind}"}
            self.validators[kind] = jsonschema.Draft4Validator(schema)
        return self.validators[kind]


@dataclass
class SchemaSet:
    """The loaded documents; ``validate`` finds the one defining ``kind_definition``."""

    directory: Path
    documents: list[_Document]

    def kinds(self) -> list[str]:
        return sorted({k for d in self.documents for k in d.definitions})

    def validate(self, kind_definition: str, obj: dict[str, Any]) -> list[str]:
        """Errors (``path: message``) of ``obj`` against definition ``kind_definition``
        (e.g. ``v1.VirtualMachine``, ``v1beta1.DataVolume``; prefix ``cdi:`` to pick CDI's)."""
        doc_name, _, kind = kind_definition.rpartition(":")
        for doc in self.documents:
            if (not doc_name or doc.name == doc_name) and kind in doc.definitions:
                errors = sorted(doc.validator(kind).iter_errors(_drop_nulls(obj)), key=lambda e: list(e.absolute_path))
                return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]
        raise KeyError(f"no definition {kind_definition!r} in {self.directory}")


_loaded: dict[tuple[Path, bool], SchemaSet] = {}


def default_shared_dir() -> Path:
    """``../shared/kubevirt`` next to the project checkout."""
    return Path(__file__).resolve().parents[2] / "shared" / "kubevirt"


def load_schemas(shared_dir: Path | None = None, *, strict: bool = True) -> SchemaSet:
    """Load (once per directory) the KubeVirt and CDI documents from ``shared_dir``."""
    directory = (shared_dir or default_shared_dir()).resolve()
    key = (directory, strict)
    if key in _loaded:
        return _loaded[key]
    documents = []
    for name, filename in DOCUMENTS.items():
        path = directory / filename
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SchemaUnavailable(f"{path}: KubeVirt/CDI schema not found") from None
        definitions = _widen(copy.deepcopy(raw.get("definitions", {})), strict)
        documents.append(_Document(name, definitions, strict))
    schemas = SchemaSet(directory, documents)
    _loaded[key] = schemas
    return schemas


def validate(kind_definition: str, obj: dict[str, Any]) -> list[str]:
    """Validate against the most recently loaded schemas (loading the default location if none)."""
    schemas = next(reversed(_loaded.values())) if _loaded else load_schemas()
    return schemas.validate(kind_definition, obj)
