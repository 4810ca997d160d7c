"""The helpers that run the whole lifecycle on one machine, on the embedded defaults.

- `workspace`: the embedded workspace (keys, a signed synthetic dataset in a local DVC data
  registry, the policy, `secmlops.env`) that `make demo` and the end-to-end tests start from.
- `airflow_runner`: a real local Airflow (api-server, scheduler, dag-processor; LocalExecutor,
  SQLite) on 127.0.0.1, started and stopped as whole process groups.
- `demo`: `make demo`, the lifecycle run by that Airflow on that workspace.
- `ui`: `make ui`, the demo's workspace in the Airflow UI until Ctrl-C.

A production deployment does none of this: docker/ has its topology (docs/operations.md).
"""
