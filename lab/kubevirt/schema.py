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

Against a cluster the cluster's own truth comes first: ``cluster_schemas`` reads the OpenAPI v3
document the API server publishes for each group-version (``/openapi/v3/apis/kubevirt.io/v1``:
the CRDs' own structural schemas, ``components.schemas`` with ``x-kubernetes-group-version-kind``)
and validates whole objects by their apiVersion and kind; a group the server does not publish
falls back to the bundled document of the release the cluster runs.
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
from collections.abc import Callable
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
# The groups virtproof sends objects of, and the bundled document that defines them (its
# definitions are named "<version>.<Kind>").
BUNDLED_GROUPS = {"kubevirt.io": "kubevirt", "migrations.kubevirt.io": "kubevirt", "cdi.kubevirt.io": "cdi"}
CLUSTER_GROUP_VERSIONS = ("kubevirt.io/v1", "migrations.kubevirt.io/v1alpha1", "cdi.kubevirt.io/v1beta1")
log = logging.getLogger("virtproof.lab.kubevirt")


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
    openapi_v3: bool = False  # definitions are an OpenAPI v3 document's components.schemas

    def validator(self, kind: str) -> jsonschema.Draft4Validator:
        if kind not in self.validators:
            if self.openapi_v3:
                schema: dict[str, Any] = {"components": {"schemas": self.definitions},
                                          "$ref": f"#/components/schemas/{kind}"}
            else:
                schema = {"definitions": self.definitions, "$ref": f"#/definitions/{kind}"}
            self.validators[kind] = jsonschema.Draft4Validator(schema)
        return self.validators[kind]

    def errors(self, kind: str, obj: dict[str, Any]) -> list[str]:
        errors = sorted(self.validator(kind).iter_errors(_drop_nulls(obj)), key=lambda e: list(e.absolute_path))
        return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]


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
                return doc.errors(kind, obj)
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


@dataclass(frozen=True)
class _Source:
    document: _Document
    names: dict[str, str]  # kind -> definition name in the document
    origin: str  # "cluster /openapi/v3/apis/kubevirt.io/v1" or "bundled kubevirt v1.9.0"


@dataclass
class ObjectSchemas:
    """Whole objects validated by their apiVersion and kind, each group-version against one
    document: the cluster's own, else the bundled one of the cluster's release."""

    sources: dict[str, _Source]  # "group/version" -> where its schemas come from

    def origin(self, api_version: str) -> str | None:
        source = self.sources.get(api_version)
        return source.origin if source else None

    def covers(self, obj: dict[str, Any]) -> bool:
        source = self.sources.get(str(obj.get("apiVersion") or ""))
        return source is not None and str(obj.get("kind") or "") in source.names

    def validate(self, obj: dict[str, Any]) -> list[str]:
        """Errors of ``obj``; SchemaUnavailable when no document here defines its kind."""
        api_version, kind = str(obj.get("apiVersion") or ""), str(obj.get("kind") or "")
        source = self.sources.get(api_version)
        if source is None or kind not in source.names:
            raise SchemaUnavailable(f"no schema for {kind} {api_version} (have: {', '.join(self.sources) or 'none'})")
        return source.document.errors(source.names[kind], obj)


def openapi_v3_document(name: str, doc: dict[str, Any], strict: bool = True) -> tuple[_Document, dict[str, str]]:
    """An API server's OpenAPI v3 document of one group-version: its schemas, and kind ->
    schema name from each schema's ``x-kubernetes-group-version-kind``."""
    schemas = ((doc.get("components") or {}).get("schemas")) or {}
    names: dict[str, str] = {}
    gv = name.removeprefix("/openapi/v3/apis/").removeprefix("/openapi/v3/api/")  # "kubevirt.io/v1", core "v1"
    for schema_name, schema in schemas.items():
        for gvk in (schema or {}).get("x-kubernetes-group-version-kind") or []:
            if f"{gvk.get('group') or ''}/{gvk.get('version')}".lstrip("/") == gv and gvk.get("kind"):
                names[str(gvk["kind"])] = str(schema_name)
    return _Document(name, _widen(schemas, strict), strict, openapi_v3=True), names


def openapi_v3_schemas(docs: dict[str, dict[str, Any]], strict: bool = True) -> ObjectSchemas:
    """ObjectSchemas from an API server's OpenAPI v3 documents, by path (``/openapi/v3/api/v1``,
    ``/openapi/v3/apis/kubevirt.io/v1``): every kind each one defines for its group-version."""
    sources: dict[str, _Source] = {}
    for path, doc in docs.items():
        document, names = openapi_v3_document(path, doc, strict)
        if names:
            gv = path.removeprefix("/openapi/v3/apis/").removeprefix("/openapi/v3/api/")
            sources[gv] = _Source(document, names, f"cluster {path}")
    return ObjectSchemas(sources)


def _bundled_source(group: str, version: str, release: str, strict: bool) -> _Source:
    component = BUNDLED_GROUPS[group]
    if component == "kubevirt":
        loaded = load_schemas(kubevirt=release, strict=strict)
    else:
        loaded = load_schemas(cdi=release, strict=strict)
    document = next(d for d in loaded.documents if d.name == component)
    prefix = f"{version}."
    names = {key.removeprefix(prefix): key for key in document.definitions if key.startswith(prefix)}
    return _Source(document, names, f"bundled {component} {release}")


def bundled_object_schemas(kubevirt: str = KUBEVIRT_VERSION, cdi: str | None = CDI_VERSION,
                           strict: bool = True) -> ObjectSchemas:
    """The bundled documents of these releases, as ObjectSchemas (SchemaUnavailable if not bundled)."""
    sources: dict[str, _Source] = {}
    for gv in CLUSTER_GROUP_VERSIONS:
        group, _, version = gv.partition("/")
        release = kubevirt if BUNDLED_GROUPS[group] == "kubevirt" else cdi
        if release is not None:
            sources[gv] = _bundled_source(group, version, release, strict)
    return ObjectSchemas(sources)


Fetch = Callable[[str], "dict[str, Any] | None"]


def cluster_schemas(fetch: Fetch, kubevirt_version: str, cdi_version: str | None, *,
                    strict: bool = True) -> ObjectSchemas:
    """The cluster's own truth: for each group-version virtproof sends, the document the API
    server publishes at ``/openapi/v3/apis/<group>/<version>`` (``fetch`` returns it, or None
    where the server has none); else the bundled document of the cluster's release; else
    nothing (logged: the server's dry-run alone judges those objects)."""
    sources: dict[str, _Source] = {}
    for gv in CLUSTER_GROUP_VERSIONS:
        group, _, version = gv.partition("/")
        path = f"/openapi/v3/apis/{gv}"
        doc = fetch(path)
        if doc is not None:
            served = openapi_v3_schemas({path: doc}, strict).sources.get(gv)
            if served is not None:
                sources[gv] = served
                continue
        release = kubevirt_version if BUNDLED_GROUPS[group] == "kubevirt" else cdi_version
        if release is None:
            continue
        try:
            sources[gv] = _bundled_source(group, version, release, strict)
        except SchemaUnavailable as exc:
            log.info("no schema for %s objects: the cluster publishes none and %s", gv, exc)
    return ObjectSchemas(sources)
