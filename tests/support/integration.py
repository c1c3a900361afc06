"""The ``integration`` marker: every test that starts a server or a namespace has it,
so ``pytest -m "not integration"`` is a fast inner loop.

Nobody has to remember it:

* a fixture decorated with :func:`starts_servers` marks every test that uses it,
  directly or through other fixtures (the server fixtures in
  :mod:`support.fixtures` are; so are module fixtures in test files that start
  their own servers);
* everything that starts a server or a namespace calls :func:`starting` first
  (:class:`support.process.Server`, :class:`support.fault_proxy.FaultProxy`,
  :func:`support.netns.netns_argv`, :func:`support.tmpfs.on_small_tmpfs`): under
  pytest it fails a test that is not marked, naming the marker to add. A test that
  starts servers in its body carries ``@pytest.mark.integration`` (or its module
  ``pytestmark``).

Outside pytest (bench/, scripts run inside a namespace) :func:`starting` allows
everything: only :mod:`support.plugin` turns the check on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import pytest

MARK = "integration"
HELP = "starts a server or a namespace (deselect with -m 'not integration' for a fast loop)"

F = TypeVar("F", bound=Callable[..., object])

# (module, name) of every fixture that starts servers. A fixture from a test module
# applies to that module's tests only; one from anywhere else (support.fixtures,
# conftest) to every test that asks for its name.
_SERVER_FIXTURES: set[tuple[str, str]] = set()


@dataclass
class _Guard:
    enforcing: bool = False  # only under pytest, between a test's setup and its teardown
    allowed: bool = True
    test: str = ""


_GUARD = _Guard()


def starts_servers(fn: F) -> F:
    """Declare a fixture function as one that starts servers or namespaces; put it
    under ``@pytest.fixture``."""
    _SERVER_FIXTURES.add((fn.__module__, fn.__name__))
    return fn


def needs_servers(module: str, fixturenames: Iterable[str]) -> bool:
    """Whether a test in ``module`` using these fixtures (their whole closure) starts
    servers through one of them."""
    for name in fixturenames:
        for owner, fixture in _SERVER_FIXTURES:
            if fixture == name and (owner == module or not owner.startswith("test_")):
                return True
    return False


def starting(what: str) -> None:
    """Called before starting ``what`` (a server, a namespace): fails a test that is
    not marked ``integration``."""
    if _GUARD.enforcing and not _GUARD.allowed:
        pytest.fail(
            f"{_GUARD.test} starts {what} but is not marked {MARK!r}: use a server "
            f"fixture, decorate the fixture that starts it with @starts_servers, or mark "
            f"the test @pytest.mark.{MARK}",
            pytrace=False,
        )


def enter_test(nodeid: str, marked: bool) -> None:
    _GUARD.enforcing, _GUARD.allowed, _GUARD.test = True, marked, nodeid


def leave_test() -> None:
    _GUARD.enforcing, _GUARD.allowed, _GUARD.test = False, True, ""
