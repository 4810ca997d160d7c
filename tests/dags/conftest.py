"""Airflow for tests: a throw-away AIRFLOW_HOME with a SQLite metadata DB, set up before import.

Airflow reads its configuration when first imported, so the environment is set here, at
collection time, before any test module imports airflow.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO_ROOT / "dags"
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="secmlops-airflow-"))

# The approvals' users (SimpleAuthManager): `dag_test` is who `dag.test()` records as having
# triggered a run, `approver` a second person. Known passwords, so a test logs in as either.
APPROVAL_PASSWORDS = {"dag_test": "dag-test-password", "approver": "approver-password"}
PASSWORD_FILE = AIRFLOW_HOME / "simple_auth_manager_passwords.json.generated"
PASSWORD_FILE.write_text(json.dumps(APPROVAL_PASSWORDS))
# A short approval timeout: no scheduler runs under dag.test(), so it only fires when a test
# runs the scheduler's timeout sweep itself (tests/dags/approvals.py).
APPROVAL_TIMEOUT_S = 2.0

os.environ.update(
    {
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "dag_test:admin,approver:op",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(PASSWORD_FILE),
        "SECMLOPS_APPROVAL_TIMEOUT_HOURS": str(APPROVAL_TIMEOUT_S / 3600),
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    }
)


@pytest.fixture(scope="session")
def airflow_db():
    """Create the SQLite metadata DB once (about 4 s)."""
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ)
    return AIRFLOW_HOME


@pytest.fixture(scope="session")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


@pytest.fixture(scope="session")
def approvals(airflow_db):
    """Answers a run's pending approval through Airflow's REST API (tests/dags/approvals.py)."""
    from .approvals import Approvals

    return Approvals(APPROVAL_PASSWORDS, APPROVAL_TIMEOUT_S)
