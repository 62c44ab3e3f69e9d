"""Prometheus text format: the samples of one metric with their labels (kube-apiserver's /metrics)."""

from __future__ import annotations

from virtproof.instruments.promtext import samples

TEXT = """# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="201",group="kubevirt.io",resource="virtualmachines",subresource="",verb="POST"} 1000
apiserver_request_total{code="200",group="",resource="pods",scope="resource",subresource="status",verb="PATCH"} 2.5e+03
apiserver_request_total_other{code="200"} 7
apiserver_request_total{code="200",group="",resource="x",verb="GET",msg="a \\"quoted\\" \\\\ value"} 3
apiserver_request_total{code="500",resource="y",verb="GET"} NaN
garbage line
"""


def test_one_metric_with_labels_values_and_escapes() -> None:
    found = samples(TEXT, "apiserver_request_total")
    assert [s.value for s in found] == [1000.0, 2500.0, 3.0]
    assert found[0].labels["group"] == "kubevirt.io" and found[0].labels["verb"] == "POST"
    assert found[1].labels["subresource"] == "status"
    assert found[2].labels["msg"] == 'a "quoted" \\ value'
    assert samples(TEXT, "apiserver_request_total_other")[0].value == 7.0
