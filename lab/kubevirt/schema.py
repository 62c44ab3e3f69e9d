"""Validate Kubernetes objects against KubeVirt's and CDI's OpenAPI (swagger 2.0) documents.

The documents of the releases virtproof supports ship with it as package data
(``schemas/<component>-<version>-openapi.json.gz``: KubeVirt v1.9.0 and v1.8.4, CDI v1.66.0,
each ``api/openapi-spec/swagger.json`` at that release tag); objects are validated against the
release in use. The swagger ``definitions`` become one JSON Schema per document
(``$ref: #/definitions/X`` resolves inside it). Two Kubernetes encodings swagger types too
narrowly are widened: ``Quantity`` and ``IntOrString`` accept a string or a number. In
``strict`` mode (the default, like ``kubectl --validate=strict``) an object with declared
properties rejects unknown keys.

    schemas = load_schemas(kubevirt="v1.9.0", cdi="v1.66.0")
    errors = schemas.validate("v1.VirtualMachine", vm)
"""

from __future__ import annotations

import gzip
import json
import threading
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import jsonschema

from virtproof.scenarios.kubevirt import CDI_VERSION, KUBEVIRT_VERSION

# (component, release) -> bundled document
BUNDLED = {
    ("kubevirt", "v1.9.0"): "kubevirt-v1.9.0-openapi.json.gz",
    ("kubevirt", "v1.8.4"): "kubevirt-v1.8.4-openapi.json.gz",
    ("cdi", "v1.66.0"): "cdi-v1.66.0-openapi.json.gz",
}
_WIDE_FORMATS = {"int-or-string", "quantity"}


class SchemaUnavailable(LookupError):
    """No bundled schema for that component release."""


def bundled_releases(component: str) -> list[str]:
    return sorted(v for c, v in BUNDLED if c == component)


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

    releases: dict[str, str]  # component -> release, e.g. {"kubevirt": "v1.9.0", "cdi": "v1.66.0"}
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
        raise KeyError(f"no definition {kind_definition!r} in {self.releases}")


_loaded: dict[tuple[str, str, bool], SchemaSet] = {}
_lock = threading.Lock()


def _bundled_definitions(component: str, release: str) -> dict[str, Any]:
    try:
        name = BUNDLED[(component, release)]
    except KeyError:
        known = ", ".join(bundled_releases(component)) or "none"
        raise SchemaUnavailable(f"no bundled {component} {release} schema (bundled: {known})") from None
    raw = json.loads(gzip.decompress(resources.files(__package__).joinpath("schemas", name).read_bytes()))
    definitions: dict[str, Any] = raw.get("definitions", {})
    return definitions


def load_schemas(kubevirt: str = KUBEVIRT_VERSION, cdi: str = CDI_VERSION, *, strict: bool = True) -> SchemaSet:
    """The bundled KubeVirt and CDI documents of those releases (loaded once per process)."""
    key = (kubevirt, cdi, strict)
    with _lock:
        if key not in _loaded:
            documents = [
                _Document(component, _widen(_bundled_definitions(component, release), strict), strict)
                for component, release in (("kubevirt", kubevirt), ("cdi", cdi))
            ]
            _loaded[key] = SchemaSet({"kubevirt": kubevirt, "cdi": cdi}, documents)
        return _loaded[key]


def validate(kind_definition: str, obj: dict[str, Any]) -> list[str]:
    """Validate against the pinned releases' schemas."""
    return load_schemas().validate(kind_definition, obj)
