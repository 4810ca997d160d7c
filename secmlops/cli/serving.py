"""`secmlops serve`: the detection service on the registry's production model."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from secmlops.cli.common import current_settings, exits_on_user_error
from secmlops.cli.options import (
    AuditOption,
    ConnectionOption,
    DeviceOption,
    RegistryOption,
    TrustedKeysOption,
    audit_log,
    keyring,
    model_registry,
)
from secmlops.errors import SecMLOpsError
from secmlops.settings import PRODUCTION_ALIAS, env_name


@exits_on_user_error
def serve_command(
    registry: RegistryOption = None,
    model_name: Annotated[
        str | None,
        typer.Option(help="Model name in the registry (default: $SECMLOPS_MODEL_NAME)."),
    ] = None,
    alias: Annotated[str, typer.Option(help="Alias to serve and follow.")] = PRODUCTION_ALIAS,
    trusted_keys: TrustedKeysOption = None,
    connection: ConnectionOption = None,
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
    queue_size: Annotated[
        int, typer.Option(help="Requests admitted at once; the next gets 503 + Retry-After.")
    ] = 64,
    max_batch: Annotated[int, typer.Option(help="Images per forward pass at most.")] = 8,
    batch_wait_ms: Annotated[
        float, typer.Option(help="How long a batch waits for more images after its first.")
    ] = 2.0,
    decode_threads: Annotated[int, typer.Option(help="Threads that decode uploads.")] = 1,
    torch_threads: Annotated[
        int | None,
        typer.Option(help="Intra-op threads of the model (default: all cores but one)."),
    ] = None,
    header_timeout: Annotated[
        float, typer.Option(help="Seconds a client has to send a request's headers.")
    ] = 10.0,
    body_timeout: Annotated[
        float, typer.Option(help="Seconds a client has to send a request's body (408 after).")
    ] = 30.0,
    max_connections: Annotated[
        int, typer.Option(help="Open connections at most (503 above).")
    ] = 256,
    docs: Annotated[
        bool, typer.Option(help="Serve /docs and /openapi.json (behind the token).")
    ] = False,
    device: DeviceOption = "auto",
    audit_log_path: AuditOption = None,
) -> None:
    """Serve POST /v1/detect (bearer token from $SECMLOPS_SERVING_TOKEN), /healthz and /readyz.

    Only a release whose whole trust chain verifies (signed alias move, provenance, passed gate
    record under the policy in force, dataset signer) is ever loaded; when the alias moves, the
    new release is verified before it replaces the running one.
    """
    import uvicorn

    from secmlops.serving.app import ServingConfig, create_app
    from secmlops.serving.engine import EngineConfig
    from secmlops.serving.inference_log import InferenceLog
    from secmlops.serving.limits import guarded_protocol
    from secmlops.serving.model_source import ModelSource
    from secmlops.training.trainer import pick_device

    # The same settings as the lifecycle DAGs, so monitoring reads what serving writes.
    settings = current_settings()
    token = settings.serving_token or ""
    if len(token) < 16:
        # Never from a command-line option: arguments are visible to every local user.
        raise SecMLOpsError(
            f"set {env_name('serving_token')} to a bearer token of at least 16 characters"
        )
    from secmlops.policy import load_policy
    from secmlops.registry.trust_chain import SequenceState

    policy = load_policy(settings.policy)
    source = ModelSource(
        model_registry(registry), model_name or settings.model_name, alias,
        keyring(trusted_keys, connection), policy, audit_log(audit_log_path),
        state=SequenceState(settings.trust_state), device=str(pick_device(device)),
    )  # fmt: skip
    # Verify and load before the server starts: a broken chain is one `error:` line, not a
    # traceback from inside uvicorn's startup.
    source.refresh()
    log = InferenceLog(
        inference_log or settings.inference_log, endpoint_url=settings.s3_endpoint_url
    )
    limits = EngineConfig(
        max_bytes=max_bytes,
        max_pixels=max_pixels,
        queue_size=queue_size,
        max_batch=max_batch,
        batch_wait_ms=batch_wait_ms,
        decode_threads=decode_threads,
        torch_threads=torch_threads or max(1, (os.cpu_count() or 2) - 1),
    )
    config = ServingConfig(token=token, engine=limits, reload_interval_s=reload_interval,
                           body_timeout_s=body_timeout, docs=docs)  # fmt: skip
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(source, log, config), host=host, port=port, log_level="info",
            http=guarded_protocol(header_timeout), ws="none", limit_concurrency=max_connections,
            # SIGTERM: stop accepting, answer what was admitted (a body still arriving, then a
            # full queue of forward passes), drain the log (lifespan).
            timeout_graceful_shutdown=int(body_timeout + 60),
        )
    )  # fmt: skip
    server.run()
