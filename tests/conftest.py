"""The suite's entry point for pytest. Everything lives in tests/support/ (see its
``__init__``): hooks in support.plugin, shared fixtures in support.fixtures."""

from __future__ import annotations

import pytest

# Helpers in support/ assert too: rewrite them for readable failures. Before any
# support module is imported.
pytest.register_assert_rewrite("support")

pytest_plugins = ("support.plugin", "support.fixtures")
