"""`secmlops serve`: the detection service on the registry's production model."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from secmlops.cli.common import app, fail
from secmlops.cli.security import AuditOption, TrustedKeysOption, _audit, _keyring
from secmlops.errors import SecMLOpsError

TOKEN_ENV = "SECMLOPS_SERVING_TOKEN"


@app.command("serve")
def serve_command(
    registry: Annotated[
        str | None,
        typer.Option(help="Registry URI (default: $SECMLOPS_REGISTRY or runs/registry)."),
    ] = None,
    model_name: Annotated[
        str | None,
        typer.Option(help="Model name in the registry (default: $SECMLOPS_MODEL_NAME)."),
    ] = None,
    alias: Annotated[str, typer.Option(help="Alias to serve and follow.")] = "production",
    trusted_keys: TrustedKeysOption = None,
    connection: Annotated[
        str | None, typer.Option(help="Read the trusted keys from this Airflow Connection.")
    ] = None,
    inference_log: Annotated[
        str | None,
        typer.Option(
            help="Folder or s3://bucket/prefix for request records "
            "(default: $SECMLOPS_INFERENCE_LOG, else <workdir>/inference-log)."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    reload_interval: Annotated[
        float, typer.Option(help="Seconds between checks of the alias (0: never reload).")
    ] = 10.0,
    max_bytes: Annotated[int, typer.Option(help="Largest accepted upload, bytes.")] = 8 << 20,
    max_pixels: Annotated[int, typer.Option(help="Largest accepted width x height.")] = 4096**2,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    audit_log: AuditOption = None,
) -> None:
    """Serve POST /v1/detect (bearer token from $SECMLOPS_SERVING_TOKEN) and GET /healthz.

    Only a model whose signature and provenance verify is ever loaded; when the alias moves, the
    new version is verified before it replaces the running one.
    """
    import uvicorn

    from secmlops.lifecycle import LifecycleSettings
    from secmlops.serving.app import ServingConfig, create_app
    from secmlops.serving.inference_log import InferenceLog
    from secmlops.serving.model_source import ModelSource
    from secmlops.training.trainer import pick_device

    token = os.environ.get(TOKEN_ENV, "")
    try:
        if len(token) < 16:
            # Never from a command-line option: arguments are visible to every local user.
            raise SecMLOpsError(f"set {TOKEN_ENV} to a bearer token of at least 16 characters")
        if connection is not None:
            from secmlops.airflow_support import keyring_from_connection

            keyring = keyring_from_connection(connection)
        else:
            keyring = _keyring(trusted_keys)
        # The same defaults as the lifecycle DAGs, so monitoring reads what serving writes.
        settings = LifecycleSettings.from_env()
        source = ModelSource(
            registry or settings.model_registry, model_name or settings.model_name, alias,
            keyring, _audit(audit_log), device=str(pick_device(device)),
        )  # fmt: skip
        log = InferenceLog(inference_log or settings.inference_log)
        config = ServingConfig(
            token=token, max_bytes=max_bytes, max_pixels=max_pixels,
            reload_interval_s=reload_interval,
        )  # fmt: skip
        application = create_app(source, log, config)
    except SecMLOpsError as exc:
        fail(exc)
    uvicorn.run(application, host=host, port=port, log_level="info")
