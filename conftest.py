"""Root conftest: plugin registration only. Fixtures live in suites/conftest.py and tests/."""

pytest_plugins = ("virtproof.pytest_plugin",)
