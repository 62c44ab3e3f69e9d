"""Labs that bring up Kubernetes clusters with KubeVirt: kind, kubeadm, and attaching to an
existing cluster. Each lab is a list of ``Step``s that ``plan()`` prints and ``up()`` runs."""
