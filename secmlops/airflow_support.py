"""The one module of the library that talks to Airflow (DESIGN.md: `secmlops` never imports Airflow
elsewhere). Airflow is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

from secmlops.errors import DataError
from secmlops.supplychain.keys import Keyring


def keyring_from_connection(conn_id: str) -> Keyring:
    """Trusted public keys kept in an Airflow Connection (any connection type).

    The keys are PEM text, in the connection's `extra` as `{"public_keys": ["-----BEGIN ...", ...]}`
    or in its password field. Keys in a Connection come from Airflow's secrets backend (environment
    `AIRFLOW_CONN_<ID>`, the metadata database, Vault...), never from a committed file.

    Raises:
        DataError: the connection does not exist or holds no public key.
    """
    from airflow.sdk import Connection

    try:
        connection = Connection.get(conn_id)
    except Exception as exc:  # Airflow raises its own, version-dependent "not found" errors
        raise DataError(f"Airflow connection {conn_id!r}: cannot read it ({exc})") from None
    extra = connection.extra_dejson or {}
    pems = extra.get("public_keys") or ([connection.password] if connection.password else [])
    if isinstance(pems, str):
        pems = [pems]
    if not pems:
        raise DataError(
            f"Airflow connection {conn_id!r}: no public keys (put PEM keys in extra.public_keys)"
        )
    return Keyring.from_pem("\n".join(pems), source=f"airflow connection {conn_id}")
