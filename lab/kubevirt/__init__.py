"""The KubeVirt backend over the official kubernetes client.

``platform.KubeVirtPlatform`` implements ``virtproof.lab.platform.Platform`` and ``MigratablePlatform``:
connect (``connect``), preflight (``preflight``), manifests (``manifests``), watch-based
timelines (``informer``, ``timeline``, ``latency``), migration and evacuation (``migration``),
V2V disk import through CDI (``importer``), run-labelled cleanup (``cleanup``) and secret
redaction (``redact``). The labs that make clusters are in ``virtproof.lab.clusters``.
"""
