"""The pytest suites ``virtproof run`` runs against a lab: ``test_boot``, ``test_migration``,
``test_density``, ``test_scale`` and ``test_v2v``, their fixtures (``conftest``, ``factory``),
and the engines that do the long work (``engines``). Suites see a lab only through its seam:
``virtproof.lab.platform`` (the Platform and its optional features) and ``virtproof.lab.guest``
(reaching a guest over SSH)."""
