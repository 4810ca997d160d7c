"""Monitoring: drift and attack signals from the inference log."""
