"""Read-only views of the lifecycle's state for operators (the Airflow UI plugin, reports).

`overview` gathers the registry's versions with their signature status and the gate and registry
decisions of the audit log; `reports` the latest drift report and trade-off study; `sources`
says where each lives (the deployment's `Settings`); `report_store` reads
report files, local or on S3, without leaving their root; `page` renders it all as one page.
Nothing here imports Airflow: `plugins/secmlops_plugin.py` only wires these functions to routes
behind Airflow's auth.
"""

from secmlops.reporting.overview import (
    GateEvent,
    GateHistory,
    RegistryOverview,
    VersionStatus,
    gate_history,
    registry_overview,
)
from secmlops.reporting.report_store import read_report
from secmlops.reporting.reports import (
    DriftOverview,
    TradeoffTable,
    latest_drift_report,
    tradeoff_table,
)
from secmlops.reporting.sources import (
    Sources,
    report_file,
    sources_from_settings,
    trusted_keyring,
)

__all__ = [
    "DriftOverview",
    "GateEvent",
    "GateHistory",
    "RegistryOverview",
    "Sources",
    "TradeoffTable",
    "VersionStatus",
    "gate_history",
    "latest_drift_report",
    "read_report",
    "registry_overview",
    "report_file",
    "sources_from_settings",
    "tradeoff_table",
    "trusted_keyring",
]
