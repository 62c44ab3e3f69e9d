"""Least privilege, derived from the code (issue 12 item 8): every Kubernetes API call the KubeVirt
backend makes (``lab/kubevirt``: the suites' calls, cleanup's and inspection's) is found in its
source, turned into the RBAC permission it needs, and must be granted by
``deploy/rbac/virtproof-clusterrole.yaml`` and checked by the preflight (``preflight.REQUIRED``,
``NAMESPACE_PERMS`` or ``OPTIONAL``). A new call without RBAC, or one this test cannot read,
fails here.

How calls are read (the ``kubernetes`` client's naming is its API's: ``<verb>_[namespaced_]<kind>
[_<subresource>][_for_all_namespaces]``, ``read`` is RBAC's ``get``):

- ``.core.<method>`` / ``StorageV1Api(...).<method>``, called or passed on (``_delete_companions``
  hands the bound methods around);
- the ``Kube`` wrapper (``kube.create/get/list_objects/list_with_version/delete(RESOURCE, ...)``),
  ``.custom.<method>(RESOURCE.group, ...)`` and ``Informer(kube, RESOURCE, ...)`` (list and watch);
- non-resource URLs: ``resource_path="..."`` and ``get_json(conn, path)`` (``/openapi/v3/...``).

Where the resource is a variable, ``VARIABLES`` says which ones it takes (pinned: a new variable
call site fails until it is named here).
"""

from __future__ import annotations

import ast
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from virtproof.lab.kubevirt import cleanup, resources
from virtproof.lab.kubevirt.preflight import NAMESPACE_PERMS, OPTIONAL, REQUIRED, Permission
from virtproof.lab.kubevirt.resources import CDI, KUBEVIRT, MIGRATION_POLICY, VM, VMI, VMIM, Resource

Key = tuple[str, str, str]  # (API group, resource[/subresource], verb)

RESOURCES = {name: value for name, value in vars(resources).items() if isinstance(value, Resource)}
# (file, enclosing function, variable) -> the resources it holds there
VARIABLES: dict[tuple[str, str, str], tuple[Resource, ...]] = {
    ("cleanup.py", "leftovers.objects", "res"): (*cleanup._NAMESPACED, MIGRATION_POLICY),
    ("cleanup.py", "clean", "res"): (*cleanup._NAMESPACED, MIGRATION_POLICY),
    ("preflight.py", "_list_cluster", "res"): (KUBEVIRT, CDI, MIGRATION_POLICY),
    ("platform.py", "KubeVirtPlatform._dry_run_once", "res"): (VM, MIGRATION_POLICY),
    ("platform.py", "KubeVirtPlatform._start_informers", "res"): (VMI, VM, VMIM),
}
WRAPPER = {"create": ("create",), "get": ("get",), "list_objects": ("list",), "list_with_version": ("list",),
           "delete": ("delete",)}
CLIENT_VERBS = {"create": "create", "read": "get", "list": "list", "patch": "patch", "delete": "delete",
                "replace": "update", "watch": "watch"}
CLIENT_KINDS = {"namespace": "namespaces", "node": "nodes", "pod": "pods", "service": "services",
                "secret": "secrets", "pod_eviction": "pods/eviction", "storage_class": "storageclasses"}
# Granted to every authenticated identity by Kubernetes' default ClusterRoles: system:basic-user
# (SelfSubjectAccessReviews), system:public-info-viewer (/version), system:discovery (/openapi/*).
DEFAULT_ALLOWED: set[Key] = {("authorization.k8s.io", "selfsubjectaccessreviews", "create"),
                             ("", "/version", "get"), ("", "/openapi/v3/*", "get")}
# files of the Kube wrapper and the informer: their callers are what is read
INTERNAL = {"resources.py", "informer.py"}


@dataclass(frozen=True)
class Call:
    file: str
    line: int
    function: str
    what: str

    def __str__(self) -> str:
        return f"lab/kubevirt/{self.file}:{self.line} ({self.function}): {self.what}"


def _chain(node: ast.expr) -> list[str]:
    """``p.kube.core.list_node`` -> ["p", "kube", "core", "list_node"] (calls as "()")."""
    parts: list[str] = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Name):
            parts.append(node.id)
            break
        elif isinstance(node, ast.Call):
            parts.append(f"{'.'.join(_chain(node.func))}()")
            break
        else:
            parts.append("?")
            break
    return list(reversed(parts))


def _client_method(group: str, method: str) -> Key | None:
    match = re.fullmatch(r"(create|read|list|patch|delete|replace|watch)_(namespaced_)?(.+?)(_for_all_namespaces)?",
                         method)
    if match is None or match.group(3) not in CLIENT_KINDS:
        return None
    return (group, CLIENT_KINDS[match.group(3)], CLIENT_VERBS[match.group(1)])


class _Reader(ast.NodeVisitor):
    def __init__(self, file: str) -> None:
        self.file = file
        self.scope: list[str] = []
        self.found: dict[Key, list[Call]] = {}
        self.unread: list[Call] = []

    def _call(self, node: ast.AST, what: str) -> Call:
        return Call(self.file, getattr(node, "lineno", 0), ".".join(self.scope) or "<module>", what)

    def _add(self, keys: list[Key], call: Call) -> None:
        for key in keys:
            self.found.setdefault(key, []).append(call)

    def _resources(self, node: ast.expr, call: Call) -> list[Resource]:
        base = node.value if isinstance(node, ast.Attribute) else node  # RES.group -> RES
        if isinstance(base, ast.Name) and base.id in RESOURCES:
            return [RESOURCES[base.id]]
        if isinstance(base, ast.Name) and (self.file, call.function, base.id) in VARIABLES:
            return list(VARIABLES[(self.file, call.function, base.id)])
        self.unread.append(call)
        return []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain = _chain(node)
        method = chain[-1]
        if len(chain) >= 2 and chain[-2] == "core" and not method.startswith("_"):
            key = _client_method("", method)
            if key is None:
                self.unread.append(self._call(node, ".".join(chain)))
            else:
                self._add([key], self._call(node, ".".join(chain)))
        elif len(chain) >= 2 and chain[-2] == "client.StorageV1Api()":
            key = _client_method("storage.k8s.io", method)
            call = self._call(node, ".".join(chain))
            self._add([key], call) if key else self.unread.append(call)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        chain = _chain(node.func)
        name = chain[-1]
        call = self._call(node, ".".join(chain))
        if name in WRAPPER and len(chain) >= 2 and chain[-2] == "kube" and node.args:
            for res in self._resources(node.args[0], call):
                self._add([(res.group, res.plural, verb) for verb in WRAPPER[name]], call)
        elif name == "Informer" and len(node.args) >= 2:
            for res in self._resources(node.args[1], call):
                self._add([(res.group, res.plural, "list"), (res.group, res.plural, "watch")], call)
        elif "custom" in chain[:-1] and name.endswith("_custom_object") and node.args:
            verb = CLIENT_VERBS[name.split("_", 1)[0]]
            for res in self._resources(node.args[0], call):
                self._add([(res.group, res.plural, verb)], call)
        elif name == "create_self_subject_access_review":
            self._add([("authorization.k8s.io", "selfsubjectaccessreviews", "create")], call)
        elif name == "get_code" and "version_api" in chain:
            self._add([("", "/version", "get")], call)
        elif name == "get_json":
            self._add([("", "/openapi/v3/*", "get")], call)  # its only use: schema.cluster_schemas
        for keyword in node.keywords:
            if keyword.arg == "resource_path":
                if isinstance(keyword.value, ast.Constant) and isinstance(keyword.value.value, str):
                    self._add([("", keyword.value.value, "get")], call)
                elif name == "param_serialize" and self.file == "connect.py":
                    pass  # get_json's own request: its callers are read above
                else:
                    self.unread.append(call)
        self.generic_visit(node)


def backend_calls(root: Path) -> tuple[dict[Key, list[Call]], list[Call]]:
    """Every permission the backend's code needs (with where), and the calls this could not read."""
    found: dict[Key, list[Call]] = {}
    unread: list[Call] = []
    for path in sorted((root / "lab" / "kubevirt").glob("*.py")):
        if path.name in INTERNAL:
            continue
        reader = _Reader(path.name)
        reader.visit(ast.parse(path.read_text(encoding="utf-8")))
        for key, calls in reader.found.items():
            found.setdefault(key, []).extend(calls)
        unread += reader.unread
    return found, unread


def _granted(path: Path) -> set[Key]:
    granted: set[Key] = set()
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc["rules"]:
                if "nonResourceURLs" in rule:
                    granted.update(("", url, verb) for url, verb in itertools.product(rule["nonResourceURLs"],
                                                                                    rule["verbs"]))
                    continue
                granted.update(itertools.product(rule["apiGroups"], rule["resources"], rule["verbs"]))
    return granted


def _key(p: Permission) -> Key:
    return (p.group, f"{p.resource}/{p.subresource}" if p.subresource else p.resource, p.verb)


def test_every_api_call_of_the_backend_is_granted_and_checked_by_the_preflight(project_root: Path) -> None:
    found, unread = backend_calls(project_root)
    assert [str(c) for c in unread] == [], "calls whose permission this test cannot tell: name them in VARIABLES"
    checked = {_key(p) for p in (*REQUIRED, *NAMESPACE_PERMS, *itertools.chain.from_iterable(OPTIONAL.values()))}
    granted = _granted(project_root / "deploy/rbac/virtproof-clusterrole.yaml")
    needed = set(found) - DEFAULT_ALLOWED
    assert {k: [str(c) for c in found[k]] for k in sorted(needed - granted)} == {}, "not in deploy/rbac"
    # /metrics is checked on its own (preflight.may_get_url), not by a resource review
    missing = needed - checked - {("", "/metrics", "get")}
    assert {k: [str(c) for c in found[k]] for k in sorted(missing)} == {}, "not checked by the preflight"


def test_the_reader_sees_the_calls_cleanup_and_inspection_make(project_root: Path) -> None:
    """The three the preflight once missed (issue 12 item 8) are found, where they are made."""
    found, _ = backend_calls(project_root)
    assert any(c.file == "cleanup.py" for c in found[("kubevirt.io", "virtualmachineinstances", "delete")])
    assert any(c.file == "cleanup.py" for c in found[("", "namespaces", "list")])
    places = {c.file for c in found[("migrations.kubevirt.io", "migrationpolicies", "list")]}
    assert places == {"cleanup.py", "preflight.py"}
    assert ("", "pods/eviction", "create") in found and ("storage.k8s.io", "storageclasses", "list") in found
    assert ("cdi.kubevirt.io", "datavolumes", "watch") in found  # importer: the template watch
    assert ("", "/openapi/v3/*", "get") in found and ("", "/metrics", "get") in found


def test_a_new_call_without_rbac_would_fail(project_root: Path, tmp_path: Path) -> None:
    """The check itself: a copy of the backend with one more call (deleting nodes) is caught."""
    lab = tmp_path / "lab" / "kubevirt"
    lab.mkdir(parents=True)
    for path in (project_root / "lab" / "kubevirt").glob("*.py"):
        (lab / path.name).write_text(path.read_text(encoding="utf-8"))
    with (lab / "cleanup.py").open("a") as fh:
        fh.write("\n\ndef _drop(kube: Kube, node: str) -> None:\n    kube.core.delete_node(node)\n")
    found, unread = backend_calls(tmp_path)
    assert unread == [] and [str(c) for c in found[("", "nodes", "delete")]] == [
        f"lab/kubevirt/cleanup.py:{len((lab / 'cleanup.py').read_text().splitlines())} (_drop): kube.core.delete_node"]
    assert ("", "nodes", "delete") not in _granted(project_root / "deploy/rbac/virtproof-clusterrole.yaml")
