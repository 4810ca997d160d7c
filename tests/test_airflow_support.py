"""Trusted keys from an Airflow Connection (the secrets backend here: AIRFLOW_CONN_<ID>)."""

import json
import os

import pytest

from secmlops.errors import DataError
from secmlops.supplychain.keys import generate_keypair


@pytest.fixture(autouse=True)
def airflow_home(tmp_path, monkeypatch):
    # Airflow reads its home once per process: keep the one tests/dags set up when it is there
    # (switching it here would leave later DAG tests on an empty metadata DB).
    if "AIRFLOW_HOME" not in os.environ:
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


def test_s3_credentials_from_an_aws_connection(monkeypatch):
    from secmlops.airflow_support import s3_env_from_connection

    connection = {
        "conn_type": "aws",
        "login": "AKIDEXAMPLE",
        "password": "secret/example",
        "extra": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_SECMLOPS_S3", json.dumps(connection))
    assert s3_env_from_connection("secmlops_s3") == (
        {
            "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "secret/example",
            "AWS_DEFAULT_REGION": "eu-west-1",
        },
        "http://127.0.0.1:9000",
    )
    monkeypatch.setenv("AIRFLOW_CONN_NO_KEYS", json.dumps({"conn_type": "aws"}))
    with pytest.raises(DataError, match="no access key pair"):
        s3_env_from_connection("no_keys")


def test_lifecycle_settings_take_s3_credentials_from_the_named_connection(monkeypatch):
    import os

    from secmlops.airflow_support import lifecycle_settings
    from secmlops.settings import Settings

    connection = {"conn_type": "aws", "login": "AKIDLIFECYCLE", "password": "s3cret",
                  "extra": {"endpoint_url": "http://127.0.0.1:9000"}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_TEAM_S3", json.dumps(connection))
    monkeypatch.setenv("SECMLOPS_S3_CONNECTION", "team_s3")
    # setenv, not delenv: monkeypatch then restores (or removes) them after the test.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "before")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "before")
    assert Settings.from_env().s3_endpoint_url is None  # outside Airflow tasks: nothing changes
    assert os.environ["AWS_ACCESS_KEY_ID"] == "before"
    assert lifecycle_settings().s3_endpoint_url == "http://127.0.0.1:9000"
    assert os.environ["AWS_ACCESS_KEY_ID"] == "AKIDLIFECYCLE"
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "s3cret"
