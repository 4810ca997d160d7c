"""Trusted keys from an Airflow Connection (the secrets backend here: AIRFLOW_CONN_<ID>)."""

import json

import pytest

from secmlops.errors import DataError
from secmlops.supplychain.keys import generate_keypair


@pytest.fixture(autouse=True)
def airflow_home(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


def test_keys_from_a_connection_extra(tmp_path, monkeypatch):
    from secmlops.airflow_support import keyring_from_connection

    pubs = [generate_keypair(tmp_path / "k", name)[1] for name in ("a", "b")]
    extra = {"public_keys": [p.read_text() for p in pubs]}
    monkeypatch.setenv(
        "AIRFLOW_CONN_SECMLOPS_MODEL_KEYS", json.dumps({"conn_type": "generic", "extra": extra})
    )
    assert len(keyring_from_connection("secmlops_model_keys")) == 2


def test_missing_or_empty_connection_is_a_clear_error(monkeypatch):
    from secmlops.airflow_support import keyring_from_connection

    with pytest.raises(DataError, match="'nowhere'"):
        keyring_from_connection("nowhere")
    monkeypatch.setenv("AIRFLOW_CONN_EMPTY_KEYS", json.dumps({"conn_type": "generic"}))
    with pytest.raises(DataError, match="no public keys"):
        keyring_from_connection("empty_keys")
