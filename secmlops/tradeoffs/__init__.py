"""The security/performance trade-off study (issue 9): each control's cost next to its benefit.

`run_study` (in `secmlops.tradeoffs.study`) is the entry point for the CLI (`secmlops tradeoffs`)
and the `secmlops_tradeoffs` DAG. Importing this package stays cheap: torch and ART load only
when a study runs.
"""
