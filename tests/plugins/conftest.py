"""The UI plugin's fixtures: a real seeded work dir, and Airflow's API app in-process.

Airflow's environment comes from `tests/dags/conftest.py` (imported here so it is set before
anything imports airflow); the plugins folder, SimpleAuthManager users and the JWT secret are
set around the app only, and the plugin caches are cleared before and after, so other tests see
Airflow as they expect.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from ..conftest import REPO_ROOT
from ..dags.conftest import AIRFLOW_HOME, airflow_db  # noqa: F401  (sets Airflow's env first)
from .seed import Seeded, seed_workdir

PLUGINS_FOLDER = REPO_ROOT / "plugins"
SIMPLE_AUTH_MANAGER = (
    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
)
ADMIN_PASSWORD = "secmlops-test-admin"
JWT_SECRET = "secmlops-test-jwt-secret-" + "0123456789abcdef" * 4  # >= 64 bytes for HS512
# The library's location variables: cleared so only a test's own values count.
SECMLOPS_LOCATIONS = (
    "SECMLOPS_WORKDIR",
    "SECMLOPS_REGISTRY",
    "SECMLOPS_AUDIT_LOG",
    "SECMLOPS_TRUSTED_KEYS",
    "SECMLOPS_MONITORING_REPORTS",
    "SECMLOPS_TRADEOFFS_DIR",
)


@pytest.fixture(scope="session")
def seeded(tmp_path_factory) -> Seeded:
    """The seeded work dir (see `seed.seed_workdir`); read-only: copy before changing it."""
    return seed_workdir(tmp_path_factory.mktemp("secmlops-workdir"))


@pytest.fixture
def seeded_env(seeded, monkeypatch) -> Seeded:
    """The seeded work dir, with the environment pointing the library at it."""
    for name in SECMLOPS_LOCATIONS:
        monkeypatch.delenv(name, raising=False)
    for name, value in seeded.env.items():
        monkeypatch.setenv(name, value)
    return seeded


def _clear_plugin_caches() -> None:
    from airflow import plugins_manager
    from airflow.api_fastapi.app import purge_cached_app
    from airflow.api_fastapi.auth.managers.base_auth_manager import BaseAuthManager

    for value in vars(plugins_manager).values():
        if callable(getattr(value, "cache_clear", None)):
            value.cache_clear()
    purge_cached_app()
    # The JWT signer and validator are cached per process: an API app built by an earlier test
    # (tests/dags answers approvals through one) would keep its secret.
    BaseAuthManager._get_token_signer.cache_clear()
    BaseAuthManager._get_token_validator.cache_clear()


@pytest.fixture(scope="module")
def airflow_client(airflow_db, tmp_path_factory) -> Iterator[Any]:  # noqa: F811
    """`TestClient` of Airflow's real API app (`create_app()`), with this repo's plugins.

    SimpleAuthManager with one user, admin / `ADMIN_PASSWORD`.
    """
    from fastapi.testclient import TestClient

    passwords = tmp_path_factory.mktemp("auth") / "passwords.json"
    passwords.write_text(json.dumps({"admin": ADMIN_PASSWORD}))
    with pytest.MonkeyPatch.context() as patch:
        from airflow import settings
        from airflow.api_fastapi.app import create_app

        patch.setenv("AIRFLOW__CORE__AUTH_MANAGER", SIMPLE_AUTH_MANAGER)
        patch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin")
        patch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
        patch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", JWT_SECRET)
        patch.setenv("AIRFLOW__API__HOST", "127.0.0.1")
        patch.setenv("AIRFLOW__CORE__PLUGINS_FOLDER", str(PLUGINS_FOLDER))
        # Airflow read the folder into settings when first imported (maybe by another test).
        patch.setattr(settings, "PLUGINS_FOLDER", str(PLUGINS_FOLDER))
        _clear_plugin_caches()
        try:
            with TestClient(create_app()) as client:
                yield client
        finally:
            _clear_plugin_caches()


@pytest.fixture(scope="module")
def admin_token(airflow_client) -> str:
    """A JWT from SimpleAuthManager's `POST /auth/token`, as API clients get one."""
    response = airflow_client.post(
        "/auth/token", json={"username": "admin", "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 201, response.text
    return response.json()["access_token"]
