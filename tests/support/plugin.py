"""The suite's pytest hooks (loaded from tests/conftest.py through ``pytest_plugins``).

* No silent skips: a skipped test is reported as a failure with its reason (a
  missing tool fails through ``require_tool`` with its install hint).
* The ``integration`` marker goes on every test using a server fixture, and a test
  that starts a server or a namespace without it fails (see :mod:`support.integration`).
* PATH loses every folder holding an ``airbundle`` executable: tests run the
  checkout's own CLI (``support.env.AIRBUNDLE``), never a stray install.
* hypothesis runs without per-example deadlines (a timed assertion).
"""

from __future__ import annotations

import os
from collections.abc import Generator

import hypothesis
import pytest

from support import integration
from support.env import path_without_airbundle

os.environ["PATH"] = path_without_airbundle(os.environ.get("PATH", ""))

# hypothesis's per-example deadline is a timed assertion: on a shared 2-core
# machine it fails tests that are merely slow. Speed is measured in bench/.
hypothesis.settings.register_profile("airbundle", deadline=None)
hypothesis.settings.load_profile("airbundle")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{integration.MARK}: {integration.HELP}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(getattr(item, "module", None), "__name__", "")
        fixturenames: list[str] = getattr(item, "fixturenames", [])
        if integration.needs_servers(module, fixturenames):
            item.add_marker(integration.MARK)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    # Fixtures start their servers during setup, tests during the call: both checked.
    integration.enter_test(item.nodeid, item.get_closest_marker(integration.MARK) is not None)
    yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    integration.leave_test()
    yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """No silent skips: a skipped test is reported as a failure with its reason
    (a missing tool fails through require_tool with its install hint)."""
    report = yield
    if report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped tests are not allowed here: {reason}"
    return report
