"""The KubeVirt backend over the official kubernetes client.

``platform.KubeVirtPlatform`` implements ``virtproof.lab.platform.Platform`` and ``MigratablePlatform``:
connect (``connect``), the backend's settings (``config``), preflight (``preflight``), what the
cluster's KubeVirt allows (``features``), the API resources and a rate-limited client for them
(``resources``, ``ratelimit``), manifests (``manifests``) checked against the bundled OpenAPI
schemas (``schema``, ``schemas/``), watch-based timelines (``informer``, ``timeline``; their
kube-burner latency summaries are ``virtproof.instruments.latency``), migration and evacuation
(``migration``), per-run SSH keys (``keys``), V2V disk import through CDI (``importer``, with
DataVolume sizing in ``storage``), run-labelled cleanup (``cleanup``) and secret redaction
(``redact``). The labs that make clusters are in ``virtproof.lab.clusters`` and
``virtproof.lab.controlplane``.
"""
