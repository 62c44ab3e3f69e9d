"""``SimKubeVirtLabHandle``: the ``sim-kubevirt`` lab behind ``virtproof.lab.factory``.

``up``: build the control plane if it is not cached; bring up a qemu lab's nodes (network
namespaces and the L2 guest segment) unless ``paper``; make the PKI; start etcd and
kube-apiserver; apply KubeVirt's CRDs, RBAC and CR, the Nodes and the suites' RBAC; start
kube-controller-manager, kube-scheduler, virt-api (then its webhooks and APIServices) and
virt-controller; write ``agent.json`` and start the node agent; then open the KubeVirt backend
exactly as for an ``existing`` cluster (``KubeVirtLabHandle``), with the least-privilege
kubeconfig. Any failure, Ctrl-C or SIGTERM on the way tears down what was made.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from virtproof.core.errors import LabUnavailable
from virtproof.core.processes import pid_alive, process_cmdline
from virtproof.lab.clusters.handle import ClusterLabError, KubeVirtLabHandle, feature_gates_for
from virtproof.lab.controlplane import bootstrap
from virtproof.lab.controlplane.agent_contract import (
    AGENT_MODULE,
    LOG_FILE,
    PID_FILE,
    AgentContract,
    AgentNode,
)
from virtproof.lab.controlplane.bootstrap import ApiFailure, BootstrapError
from virtproof.lab.controlplane.build import (
    ControlPlaneBuild,
    Versions,
    build_dir,
    check_versions,
    find_build,
)
from virtproof.lab.controlplane.build import build as build_control_plane
from virtproof.lab.controlplane.components import (
    ComponentError,
    LabPaths,
    Ports,
    choose_ports,
    components,
    launch,
    log_tail,
    rss_mib,
    running_pid,
    spawn,
    start,
    wait_ready,
)
from virtproof.lab.controlplane.leftovers import COMPONENT_NAMES, read_owner, teardown, write_owner
from virtproof.lab.controlplane.pki import make_pki, write_kubeconfigs
from virtproof.lab.kubevirt.connect import ConnectOptions, KubeconfigError, connect
from virtproof.lab.kubevirt.platform import KubeVirtPlatform
from virtproof.lab.qemu.l2 import ensure_segment
from virtproof.lab.qemu.lab import LabError, QemuLabHandle
from virtproof.lab.qemu.network import NetworkError
from virtproof.lab.qemu.platform import client_key_path
from virtproof.lab.qemu.state import LabState
from virtproof.scenarios.kubevirt import ExistingLab, ImageSource, SimKubeVirtLab
from virtproof.scenarios.model import QemuLab, Scenario

Progress = Callable[[str], None]
SUITE_KUBECONFIG = "virtproof"  # kubeconfig/virtproof.kubeconfig: the suites' least-privilege identity
AGENT_READY_S = 180.0
APISERVICE_READY_S = 120.0


class SimLabError(RuntimeError):
    """The sim-kubevirt lab could not come up (exit 3); the message says why."""


class LabInterrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP during ``up`` (which then tore down what it had made)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


class SimKubeVirtLabHandle:
    kind = "sim-kubevirt"

    def __init__(self, scenario: Scenario, lab_id: str, persistent: bool = False, *, start_agent: bool = True,
                 cache_root: Path | None = None) -> None:
        lab = scenario.lab
        if not isinstance(lab, SimKubeVirtLab):
            raise TypeError(f"not a sim-kubevirt lab: {lab.kind}")
        self.spec = lab
        self.scenario = scenario
        self.lab_id = lab_id
        self.persistent = persistent
        self.start_agent = start_agent
        self.cache_root = cache_root
        self.paths = LabPaths.for_lab(lab_id)
        self.versions = Versions(etcd=lab.etcd_version, kubernetes=lab.kubernetes_version,
                                 kubevirt=lab.kubevirt_version)
        self.qemu: QemuLabHandle | None = None
        if not lab.paper:
            self.qemu = QemuLabHandle(QemuLab(kind="qemu", nodes=lab.nodes, accel=lab.accel, network=lab.network),
                                      scenario.guest, lab_id, persistent, scenario.name)
        self.timings: dict[str, float] = {}

    # the KubeVirt backend, as for an existing cluster ------------------------------------------
    def _images(self, state: LabState | None) -> dict[str, ImageSource]:
        image = self.scenario.guest.image
        disk = f"registry.invalid/virtproof/{image}:latest"  # the agent boots the lab's own image behind it
        if state is None:  # paper: nothing boots; the backend's cloud-init keys are never used
            return {image: ImageSource(container_disk=disk)}
        from virtproof.lab.images.micro import GuestImage

        built = GuestImage.load(Path(state.extra[f"image:{image}"]))
        return {image: ImageSource(container_disk=disk, user=built.user, cloud_init=False,
                                   private_key=str(client_key_path(state)), host_key=built.host_key)}

    def backend(self, state: LabState | None = None) -> KubeVirtLabHandle:
        """The ``existing``-cluster handle over this lab's least-privilege kubeconfig."""
        if state is None and self.qemu is not None:
            state = LabState.load(self.lab_id)
        # The guests sit on the lab's L2 segment, whose bridge in this host's namespace has the
        # segment's gateway address (virtproof.lab.qemu.l2.ensure_segment), and the node agent
        # reports each guest's segment address as the VMI's status.interfaces ipAddress: the harness
        # reaches every guest directly, as it would from inside a cluster's pod network.
        direct = state is not None and state.network == "netns"
        existing = ExistingLab(kind="existing", kubeconfig=str(self.paths.kubeconfig(SUITE_KUBECONFIG)),
                               namespace=self.spec.namespace, qps=self.spec.qps, burst=self.spec.burst,
                               images=self._images(state), guest_network_reachable=direct)
        return KubeVirtLabHandle(self.scenario.model_copy(update={"lab": existing}), self.lab_id, self.persistent)

    # LabHandle --------------------------------------------------------------------------------
    def plan(self) -> list[str]:
        spec = self.spec
        found = find_build(self.versions, self.cache_root)
        build = found or ControlPlaneBuild(build_dir(self.versions, self.cache_root), self.versions, "", {})
        lines = [f"# sim-kubevirt lab {self.lab_id}: {spec.nodes} node(s), "
                 + ("paper (VMIs run no guest)" if spec.paper else f"qemu guests on network {spec.network}"),
                 f"virtproof images build control-plane   # etcd {self.versions.etcd}, Kubernetes "
                 f"{self.versions.kubernetes}, KubeVirt {self.versions.kubevirt}: "
                 + (f"cached in {build.directory}" if found else f"not built yet, to be built into {build.directory}")]
        if self.qemu is not None:
            lines += self.qemu.plan()
        lines.append(f"# certificates and kubeconfigs in {self.paths.root}/pki and kubeconfig/ (made per lab)")
        ports = choose_ports(spec.apiserver_port)
        lines.append("# ports: free ones chosen at up (these were free now)")
        for comp in components(build, self.paths, ports):
            lines.append(f"{' '.join(comp.argv)}   # ready: {comp.probe.url}")
        gates = feature_gates_for(self.scenario)
        lines.append("# applied with server-side apply (fieldManager virtproof-lab), in this order:")
        if found:
            rendered = bootstrap.render(found, None, ports.virt_api, self._node_addresses_plan(),
                                        use_emulation=True, feature_gates=gates)
            for group in (rendered.basics, rendered.crds, rendered.rbac, [rendered.kubevirt], rendered.nodes[:3],
                          rendered.suite_rbac, rendered.webhooks, rendered.api_services):
                lines += [f"apply {bootstrap.describe(obj)}" for obj in group]
            if spec.nodes > 3:
                lines.append(f"apply ... {spec.nodes - 3} more Nodes")
            lines.append("# the KubeVirt CR (status through /status), and a Node:")
            lines += yaml.safe_dump(rendered.kubevirt, sort_keys=False).splitlines()
            lines.append("---")
            lines += yaml.safe_dump(rendered.nodes[0], sort_keys=False).splitlines()
        else:
            lines.append("# (KubeVirt's CRDs, RBAC, webhooks and CR come from the build's generator)")
        lines.append(f"# node agent: {sys.executable} -m {AGENT_MODULE} --lab-dir {self.paths.root}/")
        lines += self.backend_plan()
        return lines

    def backend_plan(self) -> list[str]:
        existing = ExistingLab(kind="existing", kubeconfig=str(self.paths.kubeconfig(SUITE_KUBECONFIG)),
                               namespace=self.spec.namespace, images={self.scenario.guest.image: ImageSource(
                                   container_disk=f"registry.invalid/virtproof/{self.scenario.guest.image}:latest")})
        handle = KubeVirtLabHandle(self.scenario.model_copy(update={"lab": existing}), self.lab_id, False)
        return handle.plan()

    def _node_addresses_plan(self) -> list[tuple[str, str]]:
        return [(f"node{i}", _paper_address(i) if self.spec.paper else "198.18.<k>.<i+2>")
                for i in range(self.spec.nodes)]

    def up(self, progress: Progress = lambda _: None) -> KubeVirtPlatform:
        check_versions(self.versions)
        # refused before anything is made (a failure below tears down what this lab id has)
        if self.paths.root.exists():
            raise SimLabError(f"lab {self.lab_id} already exists ({self.paths.root})")
        if self.start_agent and importlib.util.find_spec(f"{AGENT_MODULE}.__main__") is None:
            raise SimLabError(f"the node agent ({AGENT_MODULE}) is not installed in this virtproof")
        started = time.monotonic()
        with _lab_errors():
            result = build_control_plane(self.versions, cache_root=self.cache_root, progress=progress)
        self.timings["build_s"] = result.seconds
        progress("control plane build: " + ("cached" if result.cached else f"built in {result.seconds:.0f} s"))
        try:
            with _terminate_as_interrupt(), _lab_errors():
                platform = self._up(result.build, progress)
                # only a lab that came up is kept by `lab up`: one killed half-way is a leftover
                write_owner(self.paths, persistent=self.persistent, scenario=self.scenario.name)
        except BaseException:
            teardown(self.lab_id)
            raise
        self.timings["up_s"] = time.monotonic() - started
        progress(f"sim-kubevirt lab up in {self.timings['up_s']:.1f} s")
        return platform

    def _up(self, build: ControlPlaneBuild, progress: Progress) -> KubeVirtPlatform:
        spec, paths = self.spec, self.paths
        paths.make()
        write_owner(paths, persistent=False, scenario=self.scenario.name)
        t0 = time.monotonic()
        state: LabState | None = None
        use_emulation = True
        if self.qemu is not None:
            platform = self.qemu.up(progress)
            use_emulation = platform.accel != "kvm"
            platform.close()
            state = LabState.load(self.lab_id)
            if state.network == "netns":
                ensure_segment(state)
            nodes = [(n.name, n.address, n.netns) for n in state.nodes]
        else:
            nodes = [(f"node{i}", _paper_address(i), None) for i in range(spec.nodes)]
        self.timings["nodes_s"] = time.monotonic() - t0
        ports = choose_ports(spec.apiserver_port)
        ports.save(paths.ports_file)
        progress("making the lab's certificates")
        pki = make_pki(paths.pki.directory)
        write_kubeconfigs(pki, paths.root / "kubeconfig", ports.server)
        comps = {c.name: c for c in components(build, paths, ports)}
        for name in ("etcd", "kube-apiserver"):
            self.timings[f"{name}_s"] = start(paths, comps[name], progress)
        # the controllers start while the CRDs are applied; checked for readiness below (the
        # timings of these are from their readiness check, not from their start)
        pending = {name: launch(paths, comps[name]) for name in ("kube-controller-manager", "kube-scheduler")}
        api = self._admin_api()
        try:
            t0 = time.monotonic()
            gates = feature_gates_for(self.scenario)
            rendered = bootstrap.render(build, pki, ports.virt_api, [(n, a) for n, a, _ in nodes],
                                        use_emulation=use_emulation, feature_gates=gates)
            bootstrap.write_rendered(rendered, paths.root / "manifests")
            progress(f"applying KubeVirt's {len(rendered.crds)} CRDs")
            bootstrap.apply_all(api, rendered.basics)
            bootstrap.apply_all(api, rendered.crds, workers=4)
            self.timings["crds_established_s"] = bootstrap.wait_established(
                api, [c["metadata"]["name"] for c in rendered.crds])
            progress("applying KubeVirt's RBAC and CR")
            bootstrap.apply_all(api, rendered.rbac)
            bootstrap.apply(api, rendered.kubevirt, status=True)
            # KubeVirt's processes need only the CRDs, the RBAC and the CR: they start now and take
            # their ten-odd seconds while the Nodes are made
            for name in ("virt-api", "virt-controller"):
                pending[name] = launch(paths, comps[name])
            progress(f"creating {len(nodes)} Node(s)")
            bootstrap.create_nodes(api, [(n, a) for n, a, _ in nodes], build.versions.kubernetes, progress)
            bootstrap.apply_all(api, rendered.suite_rbac)
            self._write_suite_kubeconfig(api, ports, pki.pem("ca"))
            self.timings["bootstrap_s"] = time.monotonic() - t0
            for name, pid in pending.items():
                progress(f"waiting for {name}")
                self.timings[f"{name}_s"] = wait_ready(paths, comps[name], pid)
            progress("applying virt-api's webhooks and APIServices")
            bootstrap.apply_all(api, rendered.webhooks + rendered.api_services)
            self._wait_api_services(api, rendered.api_services)
            self._write_contract(ports, nodes, state)
            if self.start_agent:
                self._start_agent(api, [n for n, _, _ in nodes], progress)
        finally:
            api.close()  # type: ignore[no-untyped-call]
        progress("opening the KubeVirt backend with the suites' least-privilege kubeconfig")
        return self.backend(state).attach()

    def _admin_api(self) -> client.ApiClient:
        try:
            conn = connect(ConnectOptions(kubeconfig=str(self.paths.kubeconfig("admin")), qps=1000, burst=1000))
        except KubeconfigError as exc:
            raise SimLabError(str(exc)) from None
        conn.api.configuration.connection_pool_maxsize = 16
        return conn.api

    def _write_suite_kubeconfig(self, api: client.ApiClient, ports: Ports, ca_pem: bytes) -> None:
        from virtproof.core.secretfile import write_secret
        from virtproof.lab.controlplane.pki import kubeconfig

        token = bootstrap.suite_token(api)
        text = kubeconfig(ports.server, ca_pem, f"{bootstrap.SUITE_NAMESPACE}:{bootstrap.SUITE_SERVICE_ACCOUNT}",
                          token=token)
        write_secret(self.paths.kubeconfig(SUITE_KUBECONFIG), text, replace=True)

    def _wait_api_services(self, api: client.ApiClient, objs: list[bootstrap.Obj]) -> None:
        names = [o["metadata"]["name"] for o in objs if o.get("kind") == "APIService"]
        deadline = time.monotonic() + APISERVICE_READY_S
        registration = client.ApiregistrationV1Api(api)
        while names:
            waiting = []
            for name in names:
                svc = registration.read_api_service(name)
                conditions = {c.type: c for c in (svc.status.conditions or [])} if svc.status else {}
                if conditions.get("Available") is None or conditions["Available"].status != "True":
                    waiting.append((name, conditions.get("Available")))
            if not waiting:
                return
            if time.monotonic() > deadline:
                name, cond = waiting[0]
                why = f"{cond.reason}: {cond.message}" if cond is not None else "no Available condition"
                raise SimLabError(f"APIService {name} not Available after {APISERVICE_READY_S:.0f} s ({why})")
            time.sleep(0.5)

    def _write_contract(self, ports: Ports, nodes: list[tuple[str, str, str | None]], state: LabState | None) -> None:
        AgentContract(
            lab_id=self.lab_id, kubeconfig=str(self.paths.kubeconfig("admin")), server=ports.server,
            ca_file=str(self.paths.pki.crt("ca")), nodes=tuple(AgentNode(n, a, ns) for n, a, ns in nodes),
            qemu_lab_id=state.lab_id if state is not None else None, paper=self.spec.paper,
        ).write(self.paths.root)

    def agent_argv(self) -> list[str]:
        # The trailing slash makes the lab directory (the marker) appear in the command line.
        return [sys.executable, "-m", AGENT_MODULE, "--lab-dir", f"{self.paths.root}/"]

    def _start_agent(self, api: client.ApiClient, nodes: list[str], progress: Progress) -> None:
        progress(f"starting the node agent for {len(nodes)} node(s)")
        t0 = time.monotonic()
        pid = spawn(self.paths, "agent", self.agent_argv(), pidfile=self.paths.root / PID_FILE,
                    log=self.paths.root / LOG_FILE, env=_agent_env())
        coordination = client.CoordinationV1Api(api)
        deadline = time.monotonic() + AGENT_READY_S
        while True:
            if not pid_alive(pid):
                raise SimLabError(f"the node agent exited during start: "
                                  f"{log_tail(self.paths, 'agent', path=self.paths.root / LOG_FILE)[-600:]}")
            leases = {item.metadata.name for item in coordination.list_namespaced_lease("kube-node-lease").items
                      if item.metadata is not None}
            missing = [n for n in nodes if n not in leases]
            if not missing:
                break
            if time.monotonic() > deadline:
                raise SimLabError(f"the node agent has not renewed the Leases of {len(missing)} node(s) after "
                                  f"{AGENT_READY_S:.0f} s (e.g. {missing[0]}); log: {self.paths.root / LOG_FILE}")
            time.sleep(0.5)
        self.timings["agent_s"] = time.monotonic() - t0
        progress(f"node agent ready after {self.timings['agent_s']:.1f} s")

    def attach(self) -> KubeVirtPlatform:
        if running_pid(self.paths, "kube-apiserver") is None:
            raise SimLabError(f"sim-kubevirt lab {self.lab_id} is not up (no kube-apiserver)")
        try:
            return self.backend().attach()
        except (OSError, ValueError, KeyError) as exc:
            raise SimLabError(f"cannot attach to sim-kubevirt lab {self.lab_id}: {exc}") from None

    def down(self) -> list[str]:
        return teardown(self.lab_id)

    def status(self) -> list[str]:
        paths = self.paths
        owner = read_owner(paths)
        if owner is None and not paths.root.exists():
            return [f"sim-kubevirt lab {self.lab_id}: not up"]
        try:
            ports: Ports | None = Ports.load(paths.ports_file)
        except (OSError, ValueError, TypeError):
            ports = None
        lines = [f"sim-kubevirt lab {self.lab_id}: {self.spec.nodes} node(s)"
                 + (" (paper)" if self.spec.paper else "") + (f", api server {ports.server}" if ports else "")
                 + f", state {paths.root}"]
        for name in COMPONENT_NAMES:
            pid = running_pid(paths, name)
            lines.append(f"  {name}: " + (f"pid {pid}, RSS {rss_mib(pid):.0f} MiB" if pid else "not running"))
        agent = _agent_pid(paths)
        lines.append("  node agent: " + (f"pid {agent}, RSS {rss_mib(agent):.0f} MiB" if agent else "not running"))
        lines.append(f"  admin kubeconfig: {paths.kubeconfig('admin')}")
        lines.append(f"  suites' kubeconfig: {paths.kubeconfig(SUITE_KUBECONFIG)}")
        if running_pid(paths, "kube-apiserver") is not None and paths.kubeconfig(SUITE_KUBECONFIG).exists():
            lines += ["  " + line for line in self.backend(_maybe_state(self)).status()]
        if self.qemu is not None:
            lines += ["  " + line for line in self.qemu.status()]
        return lines


def _paper_address(i: int) -> str:
    """Loopback addresses for paper nodes (all of 127/8 is loopback on Linux): 127.101.x.y."""
    return f"127.101.{i // 250}.{i % 250 + 1}"


def _agent_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return env


def _agent_pid(paths: LabPaths) -> int | None:
    try:
        pid = int((paths.root / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) and paths.marker in process_cmdline(pid) else None


def _maybe_state(handle: SimKubeVirtLabHandle) -> LabState | None:
    if handle.qemu is None:
        return None
    try:
        return LabState.load(handle.lab_id)
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP interrupt ``up`` (so it tears down what it made) where nobody else
    handles them (``virtproof lab up``; ``virtproof run`` has its own handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise LabInterrupted(signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            previous[sig] = signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _lab_errors() -> Iterator[None]:
    """Everything that means "this lab cannot come up here" becomes one SimLabError line."""
    try:
        yield
    except SimLabError:
        raise
    except (ComponentError, ClusterLabError, LabError, NetworkError, BootstrapError, ApiFailure) as exc:
        raise SimLabError(str(exc)) from None
    except LabUnavailable as exc:
        raise SimLabError(str(exc)) from None
    except ApiException as exc:
        raise SimLabError(f"the lab's API server answered {exc.status} {exc.reason}") from None
    except (HTTPError, OSError) as exc:
        raise SimLabError(f"{type(exc).__name__}: {exc}") from None

