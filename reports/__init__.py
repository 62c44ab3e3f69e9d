"""Results and what people read: ``results`` (Sample, run directory, manifest), ``stats``,
``gates`` (SLOs, regressions), ``parity`` (feature-parity matrix), ``charts``, ``render``,
``summary``, ``junit``, ``compare`` and ``finalize``. Never imports a lab or a suite."""
