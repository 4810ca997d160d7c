"""Signed releases and keys for serving tests: the registry tests' fixtures."""

from ..registry.conftest import pki, releases  # noqa: F401  (fixtures)
