"""The density suite's schema, stop decisions, host metrics and node lock, on synthetic inputs."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from virtproof.instruments import hostmetrics as hm
from virtproof.instruments.nodelock import NodeBusy, node_lock
from virtproof.instruments.quantiles import linear as percentile
from virtproof.scenarios.density import DensitySuite, StopCondition
from virtproof.scenarios.model import ScenarioError, parse_scenario
from virtproof.suites.engines.density_stats import (
    HOST_MEMORY,
    MAX_VMS,
    StepStats,
    capacity,
    decide,
    projected_memory_fraction,
)

BASE = """\
name: d
lab: {kind: qemu, nodes: 1}
suites:
  density:
"""


def scenario(body: str) -> DensitySuite:
    suite = parse_scenario(BASE + textwrap.indent(textwrap.dedent(body), "    ")).suites.density
    assert suite is not None
    return suite


def error(body: str) -> str:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(BASE + textwrap.indent(textwrap.dedent(body), "    "), "s.yaml")
    return str(info.value)


def stats(step: int = 1, vms: int = 5, times: tuple[float, ...] = (5.0,) * 5, **kw: float) -> StepStats:
    values: dict[str, float] = dict(
        failed_boots=0, lost_vms=0, host_memory_fraction=0.2, host_cpu_fraction=0.9, idle_host_cpu_fraction=0.1,
        harness_cpu_fraction=0.01,
    )
    values.update(kw)
    return StepStats(
        step, vms, vms, times, int(values["failed_boots"]), int(values["lost_vms"]), values["host_memory_fraction"],
        values["host_cpu_fraction"], values["idle_host_cpu_fraction"], values["harness_cpu_fraction"],
        int(values.get("oom_kills", 0)), bool(values.get("out_of_memory", False)),
    )


# --- schema -------------------------------------------------------------------------------


def test_scenario_defaults_and_steps() -> None:
    suite = scenario("step: 4\nmax_vms: 10\nmemory: 96Mi\n")
    assert suite.steps() == [4, 8, 10]
    assert suite.memory == 96
    assert suite.mode == "storm" and suite.primer
    assert suite.memory_fraction_limit() == suite.memory_guard


def test_stop_conditions_parse() -> None:
    suite = scenario(
        """
        step: 2
        max_vms: 4
        stop_when:
          - {metric: p95_time_to_ssh_s, max: 30}
          - {metric: lost_vms, max: 0}
          - {metric: host_memory_fraction, max: 0.5}
        """
    )
    assert [c.reason for c in suite.stop_when] == ["time_to_ssh", "lost_vms", "host_memory"]
    assert suite.memory_fraction_limit() == 0.5


def test_the_headline_scenario_is_valid() -> None:
    from virtproof.scenarios.model import load_scenario

    loaded = load_scenario(Path(__file__).parents[1] / "scenarios" / "density.yaml").scenario
    assert loaded.suites.density is not None
    assert loaded.suites.density.memory == 96
    assert loaded.lab.kind == "qemu" and loaded.lab.tb_size_mib == 32


@pytest.mark.parametrize(
    ("body", "where", "message"),
    [
        ("step: 10\nmax_vms: 5\n", "s.yaml:4: suites.density:", "step (10) is more than max_vms (5)"),
        ("mode: rate\n", "s.yaml:4: suites.density:", "mode rate needs qps"),
        ("qps: 2\n", "s.yaml:4: suites.density:", "qps only applies to mode rate"),
        ("memory: 64Mi\n", "s.yaml:5: suites.density.memory:", "must be at least 80"),
        ("stop_when:\n  - {metric: p99_boot, max: 3}\n", "s.yaml:6: suites.density.stop_when[0].metric:", "one of"),
        ("stop_when:\n  - {metric: lost_vms}\n", "s.yaml:6: suites.density.stop_when[0]:", "needs max or min"),
        ("stop_when:\n  - {metric: lost_vms, max: 0, when: 1}\n", "s.yaml:6: suites.density.stop_when[0].when:",
         "unknown key"),
        ("count: 2\nconcurrency: 2\n", "s.yaml:4: suites.density:", "concurrency must be 1"),
        ("steps: 3\n", "s.yaml:5: suites.density.steps:", "unknown key"),
    ],
)
def test_bad_density_sections_name_file_line_and_field(body: str, where: str, message: str) -> None:
    text = error(body)
    assert text.startswith(where), text
    assert message in text, text
    assert "\n" not in text


# --- statistics and decisions ------------------------------------------------------------------


def test_percentile_matches_linear_interpolation() -> None:
    values = [3.0, 1.0, 2.0, 4.0, 10.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 95) == pytest.approx(4 + 0.8 * 6)
    assert percentile([7.0], 95) == 7.0
    assert math.isnan(percentile([], 50))


def test_every_step_metric_a_scenario_may_name_has_a_value() -> None:
    from virtproof.scenarios.density import STEP_METRICS

    assert set(stats(times=(1.0,)).values()) == set(STEP_METRICS)
    with pytest.raises(KeyError, match="unknown step metric"):
        stats(times=(1.0,)).value("p42_time_to_ssh_s")


def test_a_failed_boot_counts_as_infinitely_slow() -> None:
    step = stats(times=(1.0, 2.0, 3.0), failed_boots=1)
    assert step.value("p95_time_to_ssh_s") == math.inf
    assert step.value("p50_time_to_ssh_s") == 2.5
    assert step.value("max_time_to_ssh_s") == math.inf


def test_condition_bounds() -> None:
    assert StopCondition(metric="lost_vms", max=0).met_by(0)
    assert not StopCondition(metric="lost_vms", max=0).met_by(1)
    assert not StopCondition(metric="host_memory_fraction", min=0.1).met_by(0.05)
    assert not StopCondition(metric="p95_time_to_ssh_s", max=30).met_by(math.nan)
    with pytest.raises(ValueError, match=r"min .* is above max"):
        StopCondition(metric="lost_vms", min=3, max=1)


def test_decide_goes_on_while_every_condition_holds() -> None:
    conditions = scenario("step: 5\nmax_vms: 20\nstop_when: [{metric: p95_time_to_ssh_s, max: 30}]\n").stop_when
    assert not decide(conditions, stats(times=(10.0, 29.0)), 20).stop


def test_decide_stops_on_the_first_broken_condition() -> None:
    conditions = scenario(
        """
        step: 5
        max_vms: 20
        stop_when:
          - {metric: p95_time_to_ssh_s, max: 30}
          - {metric: lost_vms, max: 0}
        """
    ).stop_when
    decision = decide(conditions, stats(step=3, times=(10.0, 31.0, 40.0), lost_vms=2), 20)
    assert decision.stop and decision.reason == "time_to_ssh"
    assert "step 3" in decision.detail and "lost_vms <= 0 broken (2)" in decision.detail
    only_lost = decide(conditions, stats(times=(1.0,), lost_vms=1), 20)
    assert only_lost.reason == "lost_vms"


def test_decide_stops_at_max_vms() -> None:
    decision = decide((), stats(vms=20), 20)
    assert decision.stop and decision.reason == MAX_VMS


def test_running_out_of_memory_wins_over_everything() -> None:
    conditions = (StopCondition(metric="lost_vms", max=0),)
    assert decide(conditions, stats(lost_vms=3, oom_kills=1), 20).reason == HOST_MEMORY
    assert decide((), stats(out_of_memory=True, vms=20), 20).reason == HOST_MEMORY
    high = (StopCondition(metric="host_memory_fraction", max=0.5),)
    assert decide(high, stats(host_memory_fraction=0.7), 20).reason == HOST_MEMORY


def test_capacity_is_the_last_step_meeting_every_condition() -> None:
    conditions = (StopCondition(metric="p95_time_to_ssh_s", max=30),)
    steps = [stats(1, 5, (5.0,)), stats(2, 10, (20.0,)), stats(3, 15, (45.0,)), stats(4, 20, (5.0,))]
    assert capacity(conditions, steps) == 10
    assert capacity(conditions, steps[2:]) == 0
    assert capacity((), steps) == 20
    assert capacity((), [stats(1, 5), stats(2, 10, oom_kills=1)]) == 5


def test_memory_projection() -> None:
    gib = 1024 * 1024
    assert projected_memory_fraction(4 * gib, 16 * gib, 8, 256) == pytest.approx(0.375)
    assert projected_memory_fraction(0, 0, 1, 1) == 1.0


# --- host metrics ---------------------------------------------------------------------------


def test_parse_meminfo_and_stat() -> None:
    info = hm.parse_meminfo("MemTotal:  1000 kB\nMemFree:  200 kB\nMemAvailable:  400 kB\nCached: 10 kB\n")
    assert (info.total_kib, info.free_kib, info.used_kib) == (1000, 200, 600)
    assert info.used_fraction == 0.6
    assert hm.parse_meminfo("MemTotal: 10 kB\nMemFree: 5 kB\n").available_kib == 5
    with pytest.raises(ValueError, match="MemTotal"):
        hm.parse_meminfo("MemFree: 5 kB\n")
    cpu = hm.parse_proc_stat("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n")
    assert (cpu.total, cpu.busy) == (1000, 150)


def test_real_proc_readings() -> None:
    mem = hm.host_memory()
    assert 0 < mem.used_fraction < 1
    assert hm.process_memory(os.getpid()).rss_mib > 10
    assert hm.process_rss_mib(os.getpid()) > 10
    assert hm.oom_kills() >= 0
    before = hm.cpu_snapshot()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # burn CPU in this process so the harness share moves
        pass
    usage = hm.cpu_usage(before, hm.cpu_snapshot())
    assert usage.harness_fraction > 0
    assert 0 <= usage.host_busy_fraction <= 1
    with pytest.raises(hm.MetricUnavailable):
        hm.process_memory(2**22 + 7)


def test_harness_cpu_counts_every_thread() -> None:
    import threading

    def burn() -> None:
        deadline = time.thread_time() + 0.3
        while time.thread_time() < deadline:
            pass

    before = hm.process_cpu_seconds("self")
    workers = [threading.Thread(target=burn) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert hm.process_cpu_seconds("self") - before >= 0.5


# --- node lock --------------------------------------------------------------------------------


def test_node_lock_excludes_other_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIRTPROOF_STATE", str(tmp_path))
    holder = subprocess.Popen(
        [sys.executable, "-c", "from virtproof.instruments.nodelock import node_lock; import time\n"
         "with node_lock(exclusive=False):\n    print('held', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "VIRTPROOF_STATE": str(tmp_path)},
        cwd=Path(__file__).parents[1],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with node_lock(exclusive=False, timeout=1):
            pass  # shared with a shared holder: fine
        with pytest.raises(NodeBusy, match=r"node\.lock"), node_lock(exclusive=True, timeout=0.6, poll=0.1):
            pass
    finally:
        holder.kill()
        holder.wait()
    with node_lock(exclusive=True, timeout=5):
        pass  # the kernel dropped the dead holder's lock


def test_banner_polling_backs_off_as_a_boot_drags_on() -> None:
    from virtproof.lab.guest import banner_recv_timeout

    assert banner_recv_timeout(0.0) == 0.25  # a normal boot keeps 0.25 s detection
    assert banner_recv_timeout(4.0) == 0.25
    assert banner_recv_timeout(20.0) == pytest.approx(1.0)  # 5 % of the time waited
    assert banner_recv_timeout(600.0) == 3.0
