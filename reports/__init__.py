"""Results and what people read: ``results`` (Sample, run directory, manifest), ``frame`` (runs
loaded into one DataFrame), ``stats``, ``direction`` (whether lower or higher is better for a
metric), ``gates`` (SLOs, regressions), ``parity`` (feature-parity matrix), ``charts``,
``render``, ``summary``, ``junit``, ``compare`` and ``finalize`` (the end of every run). Never
imports a lab or a suite."""
