"""What every layer of virtproof shares and that imports nothing else of virtproof.

- ``capabilities``: the features a platform may offer (the feature-parity matrix's rows).
- ``migration``: how a live migration should run (the policy vocabulary of scenarios and labs).
- ``errors``: the typed error hierarchy and the exit codes it maps to.
- ``processes``: is a process alive, on this boot, with that command line; which processes carry a
  marker; whether this one runs as root; who owns a lab or run.
- ``statedir``: where labs keep their state on this host (private, owner-checked).
- ``secretfile``: writing secrets (keys, kubeconfigs, tokens): O_EXCL, mode 0600, no symlinks.
- ``ports``: a free TCP port on 127.0.0.1.
- ``density_metrics``: the density suite's metric names (stop conditions, recorded samples).
"""
