"""The one way the library builds an S3 client: registry, inference log, drift reports.

Credentials come from boto3's own chain (environment, shared config, instance role), never from
a URI or a committed file; the endpoint is `Settings.s3_endpoint_url` (MinIO, a loopback test
server), passed down by the caller; None means AWS S3 itself.
"""

from __future__ import annotations

from typing import Any


def s3_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client on `endpoint_url` (None: AWS), with bounded retries and connect time."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10)
    return boto3.client("s3", endpoint_url=endpoint_url or None, config=config)
