"""A real Kubernetes control plane with KubeVirt's own controllers, on loopback, per lab.

``build`` makes the binaries from the Go module proxy (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, virt-api, virt-controller, and a generator of KubeVirt's
CRDs, RBAC and webhooks from KubeVirt's own code) and caches them. ``pki`` makes a lab's
certificates and kubeconfigs, ``components`` starts and stops the processes, ``bootstrap``
applies what virt-operator and kubelets would have created, ``agent_contract`` is the interface to
the node agent (``virtproof.lab.simnodes``), ``lab`` is the ``sim-kubevirt`` lab handle and
``leftovers`` tears a lab down by its id (``virtproof lab clean`` for labs whose owner died).
``gomod`` holds the pinned Go modules (``go.mod``/``go.sum``) the build compiles.
"""
