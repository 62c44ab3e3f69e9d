"""The lab's processes: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, virt-api and
virt-controller as plain host processes on 127.0.0.1, with the command lines the spike settled on.

Everything of a lab lives in its directory ``<state root>/controlplane/<lab-id>/``: the PKI,
kubeconfigs, etcd's data, logs (``logs/<name>.log``), pid files (``pids/<name>.pid``) and the
ports (``ports.json``, chosen free per lab). Every command line names a path inside that
directory, so a process of the lab is found by its command line even when its pid file is gone
(``lab_processes``). A process is started in its own session and only if its pid file does not
name a live process; it is ready when its probe answers (etcd ``/health``, kube-apiserver
``/readyz`` with the admin certificate, ``/healthz`` of the others, virt-controller ``/leader``).

Why some flags (see the README): kube-controller-manager runs without the node-lifecycle and
taint-eviction controllers (no kubelet sends heartbeats it would trust; they would taint and
evict), with ``--flex-volume-plugin-dir`` inside the lab (else it creates
``/usr/libexec/kubernetes`` on the host) and without leader election (instant start).
kube-apiserver has ``--endpoint-reconciler-type=none`` (endpoints may not be loopback addresses)
and the front-proxy CA (virt-api reads it from ``extension-apiserver-authentication``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from virtproof.core.errors import LabUnavailable
from virtproof.core.processes import pid_alive, process_cmdline, processes_matching
from virtproof.core.statedir import ensure_private_dir, state_root
from virtproof.instruments.hostmetrics import MetricUnavailable, process_rss_mib
from virtproof.lab.controlplane.build import ControlPlaneBuild
from virtproof.lab.controlplane.pki import SERVICE_CIDR, Pki

Progress = Callable[[str], None]
LAUNCHER_IMAGE = "registry.invalid/kubevirt/virt-launcher"  # never pulled: no kubelet runs pods here
EXPORTER_IMAGE = "registry.invalid/kubevirt/virt-exportserver"


# kube-apiserver's audit log of what matters to a run's evidence: every request on
# VirtualMachineInstanceMigrations (and their status) with the object the server stored, and
# every pod eviction with its answer. Nothing else (the log stays small). The policy format is
# Kubernetes' audit.k8s.io/v1 Policy (staging/src/k8s.io/apiserver/pkg/apis/audit/v1/types.go);
# first matching rule wins.
AUDIT_LOG_ENV = "VIRTPROOF_SIM_AUDIT_LOG"  # where to write it instead of <lab>/logs/audit.log
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: RequestResponse
    verbs: [create, update, patch, delete]
    resources:
      - group: kubevirt.io
        resources: [virtualmachineinstancemigrations, virtualmachineinstancemigrations/status]
  - level: Metadata
    verbs: [create]
    resources:
      - group: ""
        resources: [pods/eviction]
  - level: None
"""


def audit_log_path(paths: LabPaths) -> Path:
    """The API server's audit log: ``$VIRTPROOF_SIM_AUDIT_LOG`` if set (kept after the lab),
    else ``logs/audit.log`` in the lab (removed with it)."""
    configured = os.environ.get(AUDIT_LOG_ENV)
    return Path(configured) if configured else paths.root / "logs" / "audit.log"


class ComponentError(LabUnavailable):
    """A process did not start or did not become ready (exit 3); the message says why."""


def labs_root() -> Path:
    return state_root() / "controlplane"


@dataclass(frozen=True)
class LabPaths:
    """Where a lab keeps what: all under ``root`` (``<state root>/controlplane/<lab-id>``)."""

    root: Path

    @classmethod
    def for_lab(cls, lab_id: str) -> LabPaths:
        return cls(labs_root() / lab_id)

    @property
    def lab_id(self) -> str:
        return self.root.name

    @property
    def marker(self) -> str:
        """The text every command line of this lab contains."""
        return f"{self.root}/"

    @property
    def pki(self) -> Pki:
        return Pki(self.root / "pki")

    def kubeconfig(self, name: str) -> Path:
        return self.root / "kubeconfig" / f"{name}.kubeconfig"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def pidfile(self, name: str) -> Path:
        return self.root / "pids" / f"{name}.pid"

    @property
    def ports_file(self) -> Path:
        return self.root / "ports.json"

    @property
    def owner_file(self) -> Path:
        return self.root / "owner.json"

    def make(self) -> None:
        ensure_private_dir(self.root.parent)
        ensure_private_dir(self.root)
        for sub in ("logs", "pids", "kubeconfig", "etcd", "apiserver", "kcm/flexvolume", "scheduler",
                    "manifests"):
            (self.root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.root / "audit-policy.yaml").write_text(AUDIT_POLICY)


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    etcd_metrics: int
    apiserver: int
    controller_manager: int
    scheduler: int
    virt_api: int
    virt_api_console: int
    virt_controller: int

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Ports:
        return cls(**json.loads(path.read_text()))

    def values(self) -> list[int]:
        return list(asdict(self).values())

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver}"


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_ports(apiserver: int | None = None) -> Ports:
    """Free loopback ports (the kernel picks them); ``apiserver`` fixed if given (and checked)."""
    if apiserver is not None and not port_free(apiserver):
        raise ComponentError(f"port 127.0.0.1:{apiserver} (lab.apiserver_port) is in use")
    taken: set[int] = set() if apiserver is None else {apiserver}
    picked: list[int] = []
    socks = []
    try:
        while len(picked) < 9 - (apiserver is not None):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port not in taken:
                taken.add(port)
                picked.append(port)
    finally:
        for sock in socks:
            sock.close()
    if apiserver is not None:
        picked.insert(3, apiserver)
    return Ports(*picked)


# --- what runs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    url: str
    ca: Path | None = None  # verify with this CA; None: TLS unverified (anonymous /healthz)
    cert: tuple[Path, Path] | None = None  # client certificate and key
    expect: str = ""  # text the body must contain


@dataclass(frozen=True)
class Component:
    name: str
    argv: list[str]
    probe: Probe
    timeout_s: float
    ports: tuple[int, ...] = field(default=())


def components(build: ControlPlaneBuild, paths: LabPaths, ports: Ports) -> list[Component]:
    """The processes of a lab, in start order, with their exact command lines."""
    pki, root, kc = paths.pki, paths.root, paths.kubeconfig
    p = ports
    etcd_client = f"http://127.0.0.1:{p.etcd_client}"
    etcd_peer = f"http://127.0.0.1:{p.etcd_peer}"
    kv_version = build.versions.kubevirt
    return [
        Component("etcd", [
            str(build.binary("etcd")), "--name", "lab", "--data-dir", str(root / "etcd"),
            "--listen-client-urls", etcd_client, "--advertise-client-urls", etcd_client,
            "--listen-peer-urls", etcd_peer, "--initial-advertise-peer-urls", etcd_peer,
            "--initial-cluster", f"lab={etcd_peer}",
            "--listen-metrics-urls", f"http://127.0.0.1:{p.etcd_metrics}",
            # the lab's data is thrown away with the lab: no fsync
            "--unsafe-no-fsync=true", "--quota-backend-bytes=2147483648", "--log-level=warn",
        ], Probe(f"{etcd_client}/health", expect='"health":"true"'), 60,
            (p.etcd_client, p.etcd_peer, p.etcd_metrics)),
        Component("kube-apiserver", [
            str(build.binary("kube-apiserver")), f"--etcd-servers={etcd_client}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={p.apiserver}",
            f"--cert-dir={root / 'apiserver'}",
            f"--tls-cert-file={pki.crt('apiserver')}", f"--tls-private-key-file={pki.key('apiserver')}",
            f"--client-ca-file={pki.crt('ca')}",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}", f"--service-account-signing-key-file={pki.sa_key}",
            f"--requestheader-client-ca-file={pki.crt('front-proxy-ca')}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.crt('front-proxy-client')}",
            f"--proxy-client-key-file={pki.key('front-proxy-client')}",
            f"--kubelet-client-certificate={pki.crt('apiserver-kubelet-client')}",
            f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
            "--endpoint-reconciler-type=none", "--profiling=false", "--v=1",
            f"--audit-policy-file={root / 'audit-policy.yaml'}", f"--audit-log-path={audit_log_path(paths)}",
            "--audit-log-format=json", "--audit-log-mode=blocking",
        ], Probe(f"https://127.0.0.1:{p.apiserver}/readyz", pki.crt("ca"), (pki.crt("admin"), pki.key("admin")),
                 "ok"), 300, (p.apiserver,)),
        Component("kube-controller-manager", [
            str(build.binary("kube-controller-manager")),
            f"--kubeconfig={kc('kube-controller-manager')}",
            f"--authentication-kubeconfig={kc('kube-controller-manager')}",
            f"--authorization-kubeconfig={kc('kube-controller-manager')}",
            "--bind-address=127.0.0.1", f"--secure-port={p.controller_manager}", f"--cert-dir={root / 'kcm'}",
            f"--client-ca-file={pki.crt('ca')}", f"--requestheader-client-ca-file={pki.crt('front-proxy-ca')}",
            f"--root-ca-file={pki.crt('ca')}", f"--service-account-private-key-file={pki.sa_key}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={pki.crt('ca')}", f"--cluster-signing-key-file={pki.key('ca')}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*,-node-lifecycle-controller,-taint-eviction-controller,"
            "-bootstrap-signer-controller,-token-cleaner-controller",
            "--leader-elect=false", f"--flex-volume-plugin-dir={root / 'kcm' / 'flexvolume'}", "--v=1",
        ], Probe(f"https://127.0.0.1:{p.controller_manager}/healthz", expect="ok"), 180, (p.controller_manager,)),
        Component("kube-scheduler", [
            str(build.binary("kube-scheduler")), f"--kubeconfig={kc('kube-scheduler')}",
            f"--authentication-kubeconfig={kc('kube-scheduler')}",
            f"--authorization-kubeconfig={kc('kube-scheduler')}",
            "--bind-address=127.0.0.1", f"--secure-port={p.scheduler}", f"--cert-dir={root / 'scheduler'}",
            "--leader-elect=false", "--v=1",
        ], Probe(f"https://127.0.0.1:{p.scheduler}/healthz", expect="ok"), 180, (p.scheduler,)),
        Component("virt-api", [
            str(build.binary("virt-api")), f"--kubeconfig={kc('virt-api')}", "--listen=127.0.0.1",
            f"--port={p.virt_api}", f"--console-server-port={p.virt_api_console}",
            f"--tls-cert-file={pki.crt('virt-api')}", f"--tls-key-file={pki.key('virt-api')}",
            f"--handler-cert-file={pki.crt('virt-handler-client')}",
            f"--handler-key-file={pki.key('virt-handler-client')}",
        ], Probe(f"https://127.0.0.1:{p.virt_api}/healthz", pki.crt("kubevirt-ca")), 300,
            (p.virt_api, p.virt_api_console)),
        Component("virt-controller", [
            str(build.binary("virt-controller")), f"--kubeconfig={kc('virt-controller')}", "--listen=127.0.0.1",
            f"--port={p.virt_controller}",
            f"--launcher-image={LAUNCHER_IMAGE}:{kv_version}", f"--exporter-image={EXPORTER_IMAGE}:{kv_version}",
            f"--prom-cert-file={pki.crt('virt-controller')}", f"--prom-key-file={pki.key('virt-controller')}",
        ], Probe(f"https://127.0.0.1:{p.virt_controller}/leader", pki.crt("kubevirt-ca")), 180,
            (p.virt_controller,)),
    ]


# --- starting and stopping -------------------------------------------------------------------


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def running_pid(paths: LabPaths, name: str) -> int | None:
    """The live pid of the lab's ``name``, checked against its command line (a reused pid is not it)."""
    pid = _read_pid(paths.pidfile(name))
    if pid is None or not pid_alive(pid) or paths.marker not in process_cmdline(pid):
        return None
    return pid


def _process_env(paths: LabPaths) -> dict[str, str]:
    """A component's environment: the few variables it needs, and TMPDIR inside the lab's
    directory, so what it leaves there (virt-api's ``certsdir*`` from os.MkdirTemp, never
    removed: KubeVirt v1.9.0 pkg/virt-api/api.go) goes with the lab instead of staying in /tmp."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
    tmp = paths.root / "tmp"
    tmp.mkdir(mode=0o700, exist_ok=True)
    return {**{k: v for k, v in os.environ.items() if k in keep}, "TMPDIR": str(tmp)}


def spawn(paths: LabPaths, name: str, argv: Sequence[str], *, pidfile: Path | None = None, log: Path | None = None,
          env: dict[str, str] | None = None) -> int:
    """Start ``argv`` in its own session, logging to the lab; refuse when ``name`` already runs."""
    pidfile = pidfile or paths.pidfile(name)
    old = _read_pid(pidfile)
    if old is not None and pid_alive(old) and paths.marker in process_cmdline(old):
        raise ComponentError(f"{name} of lab {paths.lab_id} is already running (pid {old})")
    if paths.marker not in " ".join(argv):
        raise ValueError(f"command line of {name} does not name the lab directory")
    logf = open(log or paths.log(name), "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                cwd=paths.root, env=_process_env(paths) if env is None else env,
                                start_new_session=True, close_fds=True)
    except OSError as exc:
        raise ComponentError(f"cannot start {name}: {exc}") from None
    finally:
        logf.close()
    pidfile.write_text(f"{proc.pid}\n")
    return proc.pid


def log_tail(paths: LabPaths, name: str, lines: int = 8, *, path: Path | None = None) -> str:
    try:
        text = (path or paths.log(name)).read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(ln.strip() for ln in text.strip().splitlines()[-lines:])


def _fetch(probe: Probe, timeout: float) -> str:
    context = None
    if probe.url.startswith("https"):
        if probe.ca is not None:
            context = ssl.create_default_context(cafile=str(probe.ca))
        else:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if probe.cert is not None:
            context.load_cert_chain(str(probe.cert[0]), str(probe.cert[1]))
    with urllib.request.urlopen(probe.url, timeout=timeout, context=context) as resp:
        return str(resp.read(4096).decode(errors="replace"))


def wait_ready(paths: LabPaths, comp: Component, pid: int, timeout: float | None = None) -> float:
    """Poll the probe until it answers; ComponentError when the process dies or time runs out."""
    start = time.monotonic()
    deadline = start + (timeout or comp.timeout_s)
    last = ""
    while True:
        if not pid_alive(pid):
            _reap(pid)
            tail = log_tail(paths, comp.name)
            if "address already in use" in tail:
                raise ComponentError(f"{comp.name} could not listen: a port of "
                                     f"{', '.join(f'127.0.0.1:{p}' for p in comp.ports)} is in use ({tail[-300:]})")
            raise ComponentError(f"{comp.name} exited during start: {tail[-600:] or 'no output'} "
                                 f"(log: {paths.log(comp.name)})")
        try:
            body = _fetch(comp.probe, 2.0)
            if comp.probe.expect in body:
                return time.monotonic() - start
            last = body[:200]
        except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
            last = str(getattr(exc, "reason", exc))
        if time.monotonic() > deadline:
            raise ComponentError(f"{comp.name} not ready after {timeout or comp.timeout_s:.0f} s "
                                 f"({comp.probe.url}: {last[:200]}; log: {paths.log(comp.name)})")
        time.sleep(0.2)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def launch(paths: LabPaths, comp: Component) -> int:
    """Start one component (its ports checked free first); its pid."""
    for port in comp.ports:
        if not port_free(port):
            raise ComponentError(f"{comp.name}: port 127.0.0.1:{port} is in use")
    return spawn(paths, comp.name, comp.argv)


def start(paths: LabPaths, comp: Component, progress: Progress = lambda _: None) -> float:
    """Start one component and wait until it is ready; returns the seconds it took."""
    progress(f"starting {comp.name}")
    pid = launch(paths, comp)
    seconds = wait_ready(paths, comp, pid)
    progress(f"{comp.name} ready after {seconds:.1f} s")
    return seconds


def stop_pid(pid: int, grace_s: float = 3.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    for _ in range(100):
        _reap(pid)
        if not pid_alive(pid):
            return
        time.sleep(0.02)


def lab_processes(marker: str) -> list[int]:
    """Every process on this host whose command line carries ``marker`` (a lab directory)."""
    return processes_matching(marker)


def stop_all(paths: LabPaths, names: Sequence[str]) -> list[str]:
    """Stop the named components (reverse order), then anything else carrying the lab's marker."""
    stopped = []
    for name in reversed(names):
        pid = running_pid(paths, name)
        if pid is not None:
            stop_pid(pid)
            stopped.append(f"{name} {pid}")
        paths.pidfile(name).unlink(missing_ok=True)
    for pid in lab_processes(paths.marker):
        cmd = process_cmdline(pid).split(" ", 1)[0]
        stop_pid(pid, grace_s=1.0)
        stopped.append(f"{Path(cmd).name} {pid} (by command line)")
    return stopped


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (0 when gone)."""
    try:
        return process_rss_mib(pid)
    except MetricUnavailable:
        return 0.0
