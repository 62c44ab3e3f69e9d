"""Labs and backends: what is under test, and how it comes up.

- ``platform``: the Platform seam (protocols, VMSpec, timelines, optional features by capability).
- ``guest``: reaching the guests a platform hands out (SSH banner readiness, pinned host keys).
- ``factory``: a scenario's ``lab`` section to a lab handle (up, attach, down, plan, status).
- ``qemu``: the local lab: nodes as network namespaces, real qemu over QMP, live migration.
- ``kubevirt``: the KubeVirt backend over the kubernetes client; ``clusters``: kind, kubeadm, existing.
- ``controlplane``: the sim-kubevirt lab's real control plane (the Go module build, certificates,
  the components as host processes, the lab handle); ``simnodes``: its node agent (a simulated
  kubelet and virt-handler).
- ``images``: guest images built from distribution packages (the micro guest, vp-memcheck, the
  containerDisk export).
"""
