"""Fixtures for command tests: the controller tests' fresh ``namespace`` (imported, not
duplicated: a fixture imported into a conftest is available to the tests below it)."""

from tests.controller.conftest import namespace

__all__ = ["namespace"]
