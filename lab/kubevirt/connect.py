"""Connect to a cluster: kubeconfig and context from the scenario, else ``KUBECONFIG``, else
the in-cluster service account. The connection's secrets go into a ``Redactor`` at once."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from virtproof.lab.kubevirt.ratelimit import TokenBucket
from virtproof.lab.kubevirt.redact import Redactor, kubeconfig_secrets

log = logging.getLogger("virtproof.lab.kubevirt")

_SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class KubeconfigError(ValueError):
    """The kubeconfig is missing, unreadable or names an unknown context (bad input)."""


@dataclass(frozen=True)
class ConnectOptions:
    kubeconfig: str | None = None
    context: str | None = None
    qps: float = 20.0
    burst: int = 20


@dataclass(frozen=True)
class Connection:
    api: client.ApiClient
    host: str
    context: str
    limiter: TokenBucket
    redactor: Redactor

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]


def _read_kubeconfig(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KubeconfigError(f"{path}: kubeconfig not found") from None
    except (OSError, yaml.YAMLError) as exc:
        raise KubeconfigError(f"{path}: unreadable kubeconfig: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise KubeconfigError(f"{path}: not a kubeconfig (expected a mapping)")
    return data


def connect(options: ConnectOptions) -> Connection:
    """Build an ApiClient; raises KubeconfigError for bad input. Does not contact the cluster."""
    redactor = Redactor()
    configuration = client.Configuration()
    path_text = options.kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    if path_text:
        path = Path(path_text).expanduser()
        data = _read_kubeconfig(path)
        redactor.add(kubeconfig_secrets(data))
        for user in data.get("users") or []:
            token_file = ((user or {}).get("user") or {}).get("tokenFile")
            if token_file and Path(token_file).is_file():
                redactor.add([Path(token_file).read_text().strip()])
        redactor.install()
        contexts = [c.get("name") for c in data.get("contexts") or [] if isinstance(c, dict)]
        context = options.context or data.get("current-context")
        if options.context and options.context not in contexts:
            raise KubeconfigError(
                f"{path}: context {options.context!r} not found (has: {', '.join(map(str, contexts))})"
            )
        try:
            config.load_kube_config(config_file=str(path), context=options.context,
                                    client_configuration=configuration, persist_config=False)  # type: ignore[no-untyped-call]
        except ConfigException as exc:
            raise KubeconfigError(f"{path}: {redactor.redact(str(exc))}") from None
        used_context = str(context or "")
    elif _SA_TOKEN.exists():
        redactor.add([_SA_TOKEN.read_text().strip()])
        redactor.install()
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except ConfigException as exc:
            raise KubeconfigError(f"in-cluster config: {redactor.redact(str(exc))}") from None
        used_context = "in-cluster"
    else:
        raise KubeconfigError("no kubeconfig: set lab.kubeconfig or KUBECONFIG, or run in a pod")
    configuration.debug = False  # debug logging would print the Authorization header
    for value in (configuration.api_key or {}).values():
        redactor.add([str(value).removeprefix("Bearer ").strip()])
    if configuration.password:
        redactor.add([configuration.password])
    api = client.ApiClient(configuration)
    limiter = TokenBucket(options.qps, options.burst)
    log.info("connected to %s (context %s)", configuration.host, used_context or "-")
    return Connection(api, configuration.host, used_context, limiter, redactor)


def get_json(conn: Connection, path: str, timeout: float = 60.0) -> dict[str, Any] | None:
    """GET a path of the API server as JSON (e.g. ``/openapi/v3/apis/kubevirt.io/v1``, which the
    server's ``system:discovery`` role lets every authenticated identity read); None where the
    server has no such document or will not give it (logged), so that callers fall back."""
    conn.limiter.acquire()
    request = conn.api.param_serialize(method="GET", resource_path=path, header_params={"Accept": "application/json"},
                                       auth_settings=["BearerToken"])
    response = conn.api.call_api(*request, _request_timeout=timeout)
    body = bytes(response.read() or b"")  # type: ignore[no-untyped-call]  # the client is untyped here
    if response.status != 200:
        log.info("GET %s: HTTP %s", path, response.status)
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        log.info("GET %s: not JSON", path)
        return None
    return doc if isinstance(doc, dict) else None
