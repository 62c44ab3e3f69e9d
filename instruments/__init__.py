"""Measuring instruments, independent of any lab: ``prober`` (guest-observed downtime, in its own
process), ``load`` and ``locustfile`` (HTTP load, locust in its own process), ``hostmetrics``
(/proc), ``quantiles`` and ``latency`` (kube-burner style summaries), ``promtext`` (Prometheus'
text format, as kube-apiserver's /metrics serves it), and ``nodelock`` (keeps a density run alone
on this host)."""
