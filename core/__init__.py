"""What every layer of virtproof shares and that imports nothing else of virtproof.

- ``capabilities``: the features a platform may offer (the feature-parity matrix's rows).
- ``migration``: how a live migration should run (the policy vocabulary of scenarios and labs).
- ``errors``: the typed error hierarchy and the exit codes it maps to.
- ``processes``: is a process alive, on this boot, with that command line; who owns a lab or run.
- ``statedir``: where labs keep their state on this host (private, owner-checked).
"""
