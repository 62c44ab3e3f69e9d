"""The V2V suite: ``premigrate`` over the scenario's sources; each must get the verdict its
defects call for, and a source marked ``fix`` must reach ``expect_fixed`` with ``--fix``.

All sources are validated up front, ``concurrency`` at once (bounded by cores), by one
module fixture; each source then has its own test with its verdict file as evidence. Samples
(``v2v.inspect_s``, ``v2v.convert_mib_s``, ``v2v.boot_s``, ...) go to the run's sink. The suite
uses qemu and libguestfs directly, not the lab's platform.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from virtproof.premigrate.fixtures.catalog import fixture_path
from virtproof.premigrate.pipeline import Options, SourceReport, validate_source
from virtproof.premigrate.record import record_samples, write_verdict
from virtproof.reports.results import SampleSink
from virtproof.scenarios.model import Scenario, load_scenario
from virtproof.scenarios.v2v import V2VSource, V2VSuite

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.xdist_group("v2v")]


def _sources(config: pytest.Config) -> list[V2VSource]:
    run_dir = config.getoption("vp_run_dir", None) or os.environ.get("VIRTPROOF_RUN_DIR")
    if not run_dir:
        return []
    suite = load_scenario(Path(run_dir) / "scenario.yaml").scenario.suites.v2v
    return [s for _ in range(suite.count) for s in suite.sources] if suite else []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    sources = _sources(metafunc.config)
    if "fix_index" in metafunc.fixturenames:
        fixed = [i for i, s in enumerate(sources) if s.fix]
        metafunc.parametrize("fix_index", fixed, ids=[f"{i}-{sources[i].label}" for i in fixed])
    elif "source_index" in metafunc.fixturenames:
        metafunc.parametrize("source_index", range(len(sources)), ids=[f"{i}-{s.label}" for i, s in enumerate(sources)])


@dataclass(frozen=True)
class Outcome:
    source: V2VSource
    report: SourceReport
    fixed: SourceReport | None


@pytest.fixture(scope="module")
def suite(scenario: Scenario) -> V2VSuite:
    if scenario.suites.v2v is None:
        pytest.skip("the scenario has no v2v suite")
    return scenario.suites.v2v


@pytest.fixture(scope="module")
def outcomes(suite: V2VSuite, run_dir: Path, sink: SampleSink) -> list[Outcome]:
    sources = [s for _ in range(suite.count) for s in suite.sources]
    paths = [Path(s.path) if s.path else fixture_path(str(s.fixture), s.format) for s in sources]
    verdicts = run_dir / "v2v"
    verdicts.mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"vp-v2v-{run_dir.name}-suite-"))

    def options(fix_dir: Path | None) -> Options:
        return Options(
            target=suite.target,
            bus=suite.bus,
            fix_dir=fix_dir,
            fix_method=suite.fix_method,
            keep_mac=suite.keep_mac,
            boot_timeout_s=suite.boot_timeout_s,
            manifest_dir=verdicts,
            evidence_dir=verdicts,
        )

    def one(index: int) -> Outcome:
        source, path = sources[index], paths[index]
        work = scratch / f"s{index}"
        work.mkdir()
        report = validate_source(path, work, options(None))
        record_samples(sink, report, suite.target)
        write_verdict(report, verdicts)
        fixed = None
        if source.fix:
            (work / "fix").mkdir()
            fixed = validate_source(path, work / "fix", options(scratch / f"out{index}"))
            record_samples(sink, fixed, suite.target)
            write_verdict(fixed, verdicts / "fixed")
        shutil.rmtree(work, ignore_errors=True)
        return Outcome(source, report, fixed)

    workers = max(1, min(suite.concurrency, os.cpu_count() or 1))
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, range(len(sources))))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _evidence(report: SourceReport) -> str:
    lines = [f"verdict {report.verdict}: {list(report.decision.reasons) if report.decision else []}"]
    lines += [f"[{f.severity}] {f.code}: {f.message}" for f in report.findings if f.severity != "info"]
    if report.boot:
        boot = report.boot
        lines.append(f"boot {boot.stopped}; milestones {boot.milestones}; last screen {boot.screen_png}")
        lines.append(report.boot.console_tail[-1500:])
    return "\n".join(lines)


def test_verdict(outcomes: list[Outcome], source_index: int) -> None:
    outcome = outcomes[source_index]
    report = outcome.report
    assert report.sha256_before == report.sha256_after, "the source changed"
    if outcome.source.expect:
        assert report.verdict == outcome.source.expect, _evidence(report)


def test_fix(outcomes: list[Outcome], fix_index: int) -> None:
    outcome = outcomes[fix_index]
    assert outcome.fixed is not None
    assert outcome.fixed.verdict == outcome.source.expect_fixed, _evidence(outcome.fixed)
    assert outcome.fixed.fix is not None and outcome.fixed.fix.applied
