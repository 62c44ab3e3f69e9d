"""The pytest suites ``virtproof run`` runs against a lab: ``test_boot``, ``test_migration``,
``test_density`` and ``test_v2v``, their fixtures (``conftest``, ``factory``), and the engines
that do the long work (``engines``). Suites see a lab only through ``virtproof.lab.platform``."""
