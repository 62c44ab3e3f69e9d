"""The ``suites.scale`` section: a control plane under many VMs, without logging into any of them.

```yaml
suites:
  scale:
    count: 1000        # VMs
    concurrency: 20    # create calls in flight
    qps: 50            # creates per second at most
    timeout_s: 1800    # every VM Running by then
```

Meant for labs whose VMIs need no guest (``sim-kubevirt`` with ``paper: true``) or any cluster
where the control plane, not the guests, is under test: KubeVirt's vmiLatency phases per VM, and
the API requests each VMI cost, from the API server's own metrics.
"""

from __future__ import annotations

from pydantic import Field

from virtproof.scenarios.base import SuiteRunner


class ScaleSuite(SuiteRunner):
    """Create ``count`` VMs at most ``qps`` per second, wait until all run, delete them."""

    qps: float = Field(50.0, gt=0, le=10_000, description="VM creates per second at most")
    timeout_s: float = Field(1800.0, gt=0, le=86_400)
