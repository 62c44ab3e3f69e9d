"""The skip policy of tests/conftest.py holds: a pytest session in a throwaway directory, with the
repository's tests/conftest.py (and so tests/allowed_skips.py) as its plugin, fails when a module
skips at collection for a reason not on the list, or when a test xfails or xpasses."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent

# Loads the repository's tests/conftest.py under its own name and registers it as a plugin, so
# that its hooks (the skip policy) judge the throwaway session.
CONFTEST = f"""
import importlib.util
import sys

sys.path.insert(0, {str(TESTS)!r})
_spec = importlib.util.spec_from_file_location("virtproof_tests_conftest", {str(TESTS / "conftest.py")!r})
_policy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_policy)


def pytest_configure(config):
    config.pluginmanager.register(_policy, "virtproof-tests-conftest")
"""

PASSING = "def test_fine():\n    assert True\n"


def _session(pytester: pytest.Pytester, **modules: str) -> pytest.RunResult:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_fine=PASSING, **modules)
    return _run(pytester)


def _run(pytester: pytest.Pytester) -> pytest.RunResult:
    # a subprocess: the throwaway session shares no plugin state with this one
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:cov", "-p", "no:xdist", timeout=120)


@pytest.mark.parametrize(("source", "listed"), [
    pytest.param("import pytest\npytest.skip('flaky here', allow_module_level=True)\n\ndef test_x():\n    pass\n",
                 "Skipped: flaky here (at collection)", id="module-level-skip"),
    pytest.param("import pytest\npytest.importorskip('virtproof_no_such_module')\n\ndef test_x():\n    pass\n",
                 "Skipped: could not import 'virtproof_no_such_module'*(at collection)", id="importorskip"),
])  # fmt: skip
def test_a_module_skipped_at_collection_fails_the_session(pytester: pytest.Pytester, source: str,
                                                          listed: str) -> None:
    result = _session(pytester, test_skipped=source)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(["*skips and xfails that are not allowed*", f"test_skipped.py: {listed}"])


def test_only_modules_skipped_at_collection_still_fail(pytester: pytest.Pytester) -> None:
    """With nothing collected pytest's own status is 5 (no tests ran); the policy makes it 1."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_skipped="import pytest\npytest.skip('later', allow_module_level=True)\n")
    result = _run(pytester)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()


@pytest.mark.parametrize(("source", "listed"), [
    pytest.param("import pytest\n\n@pytest.mark.xfail(reason='known bug')\ndef test_x():\n    assert False\n",
                 "test_expected.py::test_x: xfail (known bug): xfail is not allowed", id="xfail"),
    pytest.param("import pytest\n\n@pytest.mark.xfail(reason='known bug')\ndef test_x():\n    pass\n",
                 "test_expected.py::test_x: xpass (known bug): xfail is not allowed", id="xpass"),
    pytest.param("import pytest\n\ndef test_x():\n    pytest.xfail('later')\n",
                 "test_expected.py::test_x: xfail (later): xfail is not allowed", id="imperative-xfail"),
    pytest.param("import pytest\n\n@pytest.mark.xfail(run=False, reason='hangs')\ndef test_x():\n    pass\n",
                 "test_expected.py::test_x: xfail (*hangs): xfail is not allowed", id="xfail-not-run"),
])  # fmt: skip
def test_an_xfail_or_xpass_fails_the_session(pytester: pytest.Pytester, source: str, listed: str) -> None:
    result = _session(pytester, test_expected=source)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(["*skips and xfails that are not allowed*", listed])


def test_a_skip_at_run_time_for_a_reason_not_listed_fails_the_session(pytester: pytest.Pytester) -> None:
    result = _session(pytester, test_skipped="import pytest\n\ndef test_x():\n    pytest.skip('no time')\n")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(["test_skipped.py::test_x: Skipped: no time"])


@pytest.mark.parametrize("source", [
    pytest.param("import pytest\npytest.skip('not root: needs namespaces', allow_module_level=True)\n",
                 id="at-collection"),
    pytest.param("import pytest\n\ndef test_x():\n    pytest.skip('not root: needs namespaces')\n", id="at-run-time"),
])  # fmt: skip
def test_an_allowed_skip_passes(pytester: pytest.Pytester, source: str) -> None:
    """The control: the same session with a reason from tests/allowed_skips.py passes."""
    result = _session(pytester, test_skipped=source)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert "not allowed" not in result.stdout.str()
