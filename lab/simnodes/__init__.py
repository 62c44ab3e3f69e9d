"""Simulated nodes for a real Kubernetes control plane: the kubelet's and virt-handler's part.

``python -m virtproof.lab.simnodes --lab-dir DIR`` reads ``DIR/agent.json`` (written by the
control-plane lab) and, for the Nodes listed there, does what kubelet and KubeVirt's
virt-handler do against the real API server, KubeVirt's real virt-api and virt-controller:
Leases and node status, pods bound to the nodes, VMIs and their live migrations (real qemu
guests on the qemu lab, or "paper" guests for control-plane scale runs), and a userspace
kube-proxy for NodePort Services. Modules:

- ``agent`` (wiring, start/stop), ``config`` (agent.json), ``kube`` (JSON client), ``informer``
  (list+watch stores, the work queue), ``identity`` (node certificates, virt-handler tokens);
- ``kubelet`` + ``podstatus`` (pods), ``handler`` + ``vmistatus`` (VMIs), ``migration``
  (virt-launcher's migration monitor over the qemu lab's migrator), ``guests`` (qemu or paper),
  ``runtime`` (what the nodes run), ``leases`` + ``nodestatus`` (node heartbeats), ``proxy``;
  ``times`` (metav1 time stamps).
"""
