"""The lifecycle's stage functions, as the Airflow DAGs call them: JSON in, JSON out.

Each function is one task of `dags/`: it reads its locations from `LifecycleSettings` (the
environment, which in Airflow comes from the deployment or a secrets backend), calls the stage's
library functions, and returns a small JSON-serialisable dict that the next task receives
through XCom. Every control keeps its own audit entry; a failed control raises, so the task fails
and nothing downstream of it runs. The same functions run without Airflow (tests, `make demo`).
"""

from secmlops.lifecycle.data import (
    pull_data,
    resolve_data_rev,
    screen_data,
    validate_data,
    verify_data,
)
from secmlops.lifecycle.release import (
    evaluate,
    evaluate_production,
    gate,
    promote,
    push,
    release_version,
    sign,
    train,
)
from secmlops.lifecycle.settings import PRODUCTION_ALIAS, LifecycleSettings
from secmlops.lifecycle.watch import monitor, tradeoff_study

__all__ = [
    "PRODUCTION_ALIAS",
    "LifecycleSettings",
    "evaluate",
    "evaluate_production",
    "gate",
    "monitor",
    "promote",
    "pull_data",
    "push",
    "release_version",
    "resolve_data_rev",
    "screen_data",
    "sign",
    "tradeoff_study",
    "train",
    "validate_data",
    "verify_data",
]
