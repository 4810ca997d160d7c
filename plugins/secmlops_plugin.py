"""SecMLOps view in the Airflow UI: registry, gate history, drift and trade-offs.

Wiring only: `secmlops.reporting` reads the sources and renders the page; this file mounts those
functions as a FastAPI app under `/secmlops` and adds a navigation entry (an external view that
the UI shows in an iframe at `/plugin/secmlops`).

Auth: every route depends on `require_reader`, which authenticates with Airflow's own
`get_user` and then asks the auth manager whether the user may GET the custom view "SecMLOps"
(SimpleAuthManager: any role; FAB/Keycloak: grant that permission). `get_user` takes an
`Authorization: Bearer <JWT>` header (API clients: `POST /auth/token`) and otherwise the `_token`
cookie that the Airflow UI sets at login, with the cookie's path scoped to the API root, so the
iframe's request to `/secmlops/` carries the user's session: no separate login.
Without either, 401; with a token the auth manager refuses, 403.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.core_api.security import GetUserDep
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, Response

from secmlops.errors import DataError
from secmlops.reporting import Sources, sources_from_settings
from secmlops.reporting.page import (
    gather_overview,
    page_json,
    read_drift,
    read_gates,
    read_registry,
    read_tradeoffs,
    render_page,
)
from secmlops.reporting.report_store import read_report
from secmlops.reporting.sources import REPORT_MEDIA_TYPES
from secmlops.settings import Settings

log = logging.getLogger(__name__)

RESOURCE_NAME = "SecMLOps"
# The page has no script: forbid any, and let only Airflow's own UI frame it.
PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
)
# Served reports (Evidently's HTML runs its own scripts) get an opaque origin: their scripts
# cannot read the session cookie or call the Airflow API as the user.
REPORT_CSP = "sandbox allow-scripts allow-popups"
ICON = (
    "data:image/svg+xml;utf8,<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 24 24' "
    "fill='none' stroke='%23718096' stroke-width='2'><path d='M12 2l8 4v6c0 5-3.5 8.5-8 10"
    "-4.5-1.5-8-5-8-10V6z'/><path d='M8.5 12l2.5 2.5 4.5-5'/></svg>"
)


def require_reader(user: GetUserDep) -> None:
    """Authenticated (401 otherwise) and allowed to read the SecMLOps view (403 otherwise)."""
    allowed = get_auth_manager().is_authorized_custom_view(
        method="GET", resource_name=RESOURCE_NAME, user=user
    )
    if not allowed:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden")


def current_sources() -> Sources:
    """Where to read, from the deployment's settings (read per request: a changed deployment
    shows without restarting the api-server)."""
    return sources_from_settings(Settings.from_env())


app = FastAPI(
    title="SecMLOps",
    dependencies=[Depends(require_reader)],
    # No unauthenticated schema or docs pages under the mount.
    openapi_url=None,
    docs_url=None,
    redoc_url=None,
)


@app.get("/", response_class=HTMLResponse)
def overview_page(request: Request) -> HTMLResponse:
    """The overview page: Registry, Gate history, Drift, Trade-offs."""
    base_path = str(request.scope.get("root_path", "")).rstrip("/")
    page = render_page(gather_overview(current_sources()), base_path)
    return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP})


@app.get("/api")
def overview_json() -> dict[str, Any]:
    """Every section at once."""
    return page_json(gather_overview(current_sources()))


@app.get("/api/registry")
def registry_json() -> dict[str, Any]:
    """Versions, aliases, digests and signature status, verified now."""
    registry, keys_message = read_registry(current_sources())
    return {**registry.to_json(), "keys_message": keys_message}


@app.get("/api/gates")
def gates_json(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
    """Gate decisions and registry changes from the verified audit log, newest first."""
    return read_gates(current_sources(), limit).to_json()


@app.get("/api/drift")
def drift_json() -> dict[str, Any]:
    """The latest monitoring window's drift report."""
    return read_drift(current_sources()).to_json()


@app.get("/api/tradeoffs")
def tradeoffs_json() -> dict[str, Any]:
    """The latest trade-off study's table."""
    return read_tradeoffs(current_sources()).to_json()


@app.get("/reports/{kind}/{folder}/{name}")
def report(kind: Literal["drift", "tradeoffs"], folder: str, name: str) -> Response:
    """A file of a drift window or a trade-off study; nothing outside the configured roots."""
    sources = current_sources()
    root = sources.reports_root if kind == "drift" else sources.tradeoffs_root
    try:
        content = read_report(root, folder, name, sources.s3_endpoint_url)
    except DataError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    return Response(
        content,
        media_type=REPORT_MEDIA_TYPES[Path(name).suffix.lower()],
        headers={"Content-Security-Policy": REPORT_CSP, "X-Content-Type-Options": "nosniff"},
    )


class SecMLOpsPlugin(AirflowPlugin):
    """The SecMLOps overview app and its entry in the Airflow navigation."""

    name = "secmlops"
    fastapi_apps = [{"app": app, "url_prefix": "/secmlops", "name": "SecMLOps"}]  # noqa: RUF012
    external_views = [  # noqa: RUF012
        {
            "name": "SecMLOps",
            "href": "/secmlops/",
            "destination": "nav",
            "url_route": "secmlops",  # the UI frames href at /plugin/secmlops
            "nav_top_level": True,
            "icon": ICON,
        }
    ]
