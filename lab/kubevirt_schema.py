"""Validate objects against KubeVirt's and CDI's OpenAPI (swagger 2.0) definitions.

``load_schemas(shared_dir)`` reads ``kubevirt-openapi.json`` and ``cdi-openapi.json`` from
``shared_dir`` (``../shared/kubevirt``); ``validate(definition_name, obj)`` returns the list of
problems (empty when ``obj`` is valid), e.g. ``validate("v1.VirtualMachine", vm)``.

Validation is strict like ``kubectl --validate=strict``: an object schema with ``properties``
and no ``additionalProperties`` rejects unknown fields. ``int-or-string`` accepts both, and
``nullable`` accepts null. Definitions are looked up in the KubeVirt document first, then CDI.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema

KUBEVIRT_FILE = "kubevirt-openapi.json"
CDI_FILE = "cdi-openapi.json"


class SchemaUnavailable(FileNotFoundError):
    """The shared schema files are not where they were expected."""


def _tighten(node: Any) -> Any:
    """Copy a swagger schema node into what jsonschema should enforce."""
    if isinstance(node, list):
        return [_tighten(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("description", "default", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
                   "x-kubernetes-map-type", "x-kubernetes-preserve-unknown-fields"):
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _tighten(sub) for name, sub in value.items()}
        else:
            out[key] = _tighten(value)
    if out.get("format") == "int-or-string":
        out.pop("type", None)
        out["type"] = ["integer", "string"]
    if node.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if "properties" in out and "additionalProperties" not in out \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if "$ref" in out and len(out) > 1:
        # draft 4 ignores siblings of $ref; keep the ref and nothing else
        out = {"$ref": out["$ref"]}
    return out


class _Schemas:
    def __init__(self, documents: list[Mapping[str, Any]]) -> None:
        self.documents = [
            {"definitions": {name: _tighten(d) for name, d in doc.get("definitions", {}).items()}}
            for doc in documents
        ]
        self._validators: dict[str, jsonschema.protocols.Validator] = {}

    def validator(self, name: str) -> jsonschema.protocols.Validator:
        cached = self._validators.get(name)
        if cached is not None:
            return cached
        for doc in self.documents:
            if name in doc["definitions"]:
                root: dict[str, Any] = dict(doc)
                root["$ref"] = f"#/definitions/{name}"
                validator = jsonschema.Draft4Validator(root)
                self._validators[name] = validator
                return validator
        raise KeyError(f"no definition {name!r} in the KubeVirt or CDI schema")


_LOADED: dict[Path, _Schemas] = {}
_CURRENT: list[_Schemas] = []


def load_schemas(shared_dir: Path | str) -> None:
    """Load the KubeVirt and CDI documents from ``shared_dir``; later ``validate`` uses them."""
    shared = Path(shared_dir).resolve()
    schemas = _LOADED.get(shared)
    if schemas is None:
        docs: list[Mapping[str, Any]] = []
        for filename in (KUBEVIRT_FILE, CDI_FILE):
            path = shared / filename
            try:
                docs.append(json.loads(path.read_text(encoding="utf-8")))
            except FileNotFoundError:
                raise SchemaUnavailable(f"{path}: schema file not found") from None
        schemas = _Schemas(docs)
        _LOADED[shared] = schemas
    _CURRENT[:] = [schemas]


def default_shared_dir() -> Path:
    """``../shared/kubevirt`` next to the project root."""
    return Path(__file__).resolve().parent.parent.parent / "shared" / "kubevirt"


def validate(definition_name: str, obj: Any) -> list[str]:
    """Problems found validating ``obj`` against ``definition_name``; empty when valid."""
    if not _CURRENT:
        load_schemas(default_shared_dir())
    validator = _CURRENT[0].validator(definition_name)
    problems = []
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in error.absolute_path) or "(root)"
        problems.append(f"{where}: {error.message}")
    return problems
