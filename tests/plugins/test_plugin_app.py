"""The plugin inside Airflow's real API app: auth, content, navigation entry, report files."""

from __future__ import annotations

import datetime as dt

import jwt
import pytest

from .seed import MODEL, STUDY, WINDOW

PAGES = [
    "/secmlops/",
    "/secmlops/api",
    "/secmlops/api/registry",
    "/secmlops/api/gates",
    "/secmlops/api/drift",
    "/secmlops/api/tradeoffs",
    f"/secmlops/reports/drift/{WINDOW}/drift-report.html",
    f"/secmlops/reports/tradeoffs/{STUDY}/report.html",
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("path", PAGES)
def test_every_route_needs_a_token(airflow_client, seeded_env, path):
    response = airflow_client.get(path)
    assert response.status_code == 401, response.text
    assert response.json() == {"detail": "Not authenticated"}


def test_a_forged_or_expired_token_is_refused(airflow_client, admin_token, seeded_env):
    claims = jwt.decode(admin_token, options={"verify_signature": False})
    forged = jwt.encode(claims, "another-secret-" + "x" * 64, algorithm="HS512")
    assert airflow_client.get("/secmlops/", headers=bearer(forged)).status_code == 403
    from .conftest import JWT_SECRET

    expired = {**claims, "exp": int(dt.datetime(2020, 1, 1, tzinfo=dt.UTC).timestamp())}
    stale = jwt.encode(expired, JWT_SECRET, algorithm=jwt.get_unverified_header(admin_token)["alg"])
    response = airflow_client.get("/secmlops/api/registry", headers=bearer(stale))
    assert response.status_code == 401 and response.json() == {"detail": "Token Expired"}


def test_overview_page_with_a_token(airflow_client, admin_token, seeded_env):
    response = airflow_client.get("/secmlops/", headers=bearer(admin_token))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "script-src" not in response.headers["content-security-policy"]
    page = response.text
    for section in ("Registry", "Gate history", "Drift", "Trade-offs"):
        assert f"<h2>{section}</h2>" in page
    assert ">v1<" in page and ">production<" in page and ">verified<" in page
    assert ">refused<" in page and "tampered" in page  # v3
    assert "robustness_gate" in page and "pgd_linf_4 robust mAP@0.5 0.010 &lt; 0.300" in page
    assert f"/secmlops/reports/drift/{WINDOW}/drift-report.html" in page
    assert f"/secmlops/reports/tradeoffs/{STUDY}/report.html" in page and "fgsm-rs-4" in page


def test_the_ui_session_cookie_is_enough(airflow_client, admin_token, seeded_env):
    """The Airflow UI keeps its JWT in the `_token` cookie: the framed page loads with it."""
    airflow_client.cookies.set("_token", admin_token)
    try:
        response = airflow_client.get("/secmlops/")
    finally:
        airflow_client.cookies.clear()
    assert response.status_code == 200 and "<h2>Registry</h2>" in response.text


def test_json_endpoints(airflow_client, admin_token, seeded_env):
    def get(path: str) -> dict:
        response = airflow_client.get(f"/secmlops/api/{path}", headers=bearer(admin_token))
        assert response.status_code == 200, response.text
        return response.json()

    registry = get("registry")
    status = {v["version"]: (v["signature"], v["gate"], v["aliases"]) for v in registry["versions"]}
    assert status == {
        "v1": ("verified", "passed", ["production"]),
        "v2": ("verified", "refused", []),
        "v3": ("refused", "unverified", []),
    }
    assert registry["keys_message"] is None
    gates = get("gates?limit=3")
    assert gates["chain_verified"] and gates["entries"] == 8
    assert [(e["action"], e["decision"], e["subject"]) for e in gates["events"]] == [
        ("promote", "fail", f"{MODEL}@v2"),
        ("promote", "pass", f"{MODEL}@v1"),
        ("push", "pass", f"{MODEL}@v3"),
    ]
    drift = get("drift")
    assert drift["window"] == WINDOW and drift["checks_failed"] == drift["checks_total"] > 0
    tradeoffs = get("tradeoffs")
    assert tradeoffs["run"] == STUDY and tradeoffs["rows"][1]["configuration"] == "fgsm-rs-4"
    everything = get("")
    assert set(everything) == {"sources", "keys_message", "registry", "gates", "drift", "tradeoffs"}
    bad_limit = airflow_client.get("/secmlops/api/gates?limit=0", headers=bearer(admin_token))
    assert bad_limit.status_code == 422


def test_report_files_are_served_sandboxed(airflow_client, admin_token, seeded_env):
    headers = bearer(admin_token)
    html = airflow_client.get(
        f"/secmlops/reports/drift/{WINDOW}/drift-report.html", headers=headers
    )
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert html.headers["content-security-policy"].startswith("sandbox")
    assert html.headers["x-content-type-options"] == "nosniff"
    assert html.content == (seeded_env.reports_root / WINDOW / "drift-report.html").read_bytes()
    study = airflow_client.get(f"/secmlops/reports/tradeoffs/{STUDY}/report.html", headers=headers)
    assert study.status_code == 200 and "Trade-off study" in study.text
    plot = airflow_client.get(f"/secmlops/reports/tradeoffs/{STUDY}/pareto.png", headers=headers)
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
    assert plot.content.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "path",
    [
        f"/secmlops/reports/tradeoffs/{STUDY}/notes.txt",
        f"/secmlops/reports/tradeoffs/{STUDY}/missing.html",
        "/secmlops/reports/tradeoffs/..%2F..%2F..%2Fetc/passwd.html",
        f"/secmlops/reports/drift/..%2F{WINDOW}/drift-report.html",
        f"/secmlops/reports/drift/{WINDOW}/..%2F..%2F..%2Faudit%2Faudit.jsonl",
        f"/secmlops/reports/tradeoffs/{STUDY}/%2E%2E%2Freport.html",
    ],
)
def test_report_paths_outside_the_roots_are_refused(airflow_client, admin_token, seeded_env, path):
    response = airflow_client.get(path, headers=bearer(admin_token))
    assert response.status_code == 404, response.text


def test_unknown_report_kind(airflow_client, admin_token, seeded_env):
    response = airflow_client.get("/secmlops/reports/audit/x/y.html", headers=bearer(admin_token))
    assert response.status_code == 422


def test_bad_sources_show_messages_not_errors(
    airflow_client, admin_token, seeded_env, tmp_path, monkeypatch
):
    garbled = tmp_path / "audit.jsonl"
    garbled.write_text('{"seq": 1}\n')
    monkeypatch.setenv("SECMLOPS_REGISTRY", "ftp://nowhere/registry")
    monkeypatch.setenv("SECMLOPS_AUDIT_LOG", str(garbled))
    monkeypatch.setenv("SECMLOPS_TRUSTED_KEYS", str(tmp_path / "missing.pub"))
    monkeypatch.setenv("SECMLOPS_MONITORING_REPORTS", str(tmp_path / "no-reports"))
    monkeypatch.setenv("SECMLOPS_TRADEOFFS_DIR", str(tmp_path / "no-studies"))
    response = airflow_client.get("/secmlops/", headers=bearer(admin_token))
    assert response.status_code == 200
    page = response.text
    assert "trusted keys unusable" in page
    assert "registry unreadable" in page and "unsupported registry URI" in page
    assert "audit log refused" in page and "malformed entry" in page
    assert "no drift report yet" in page and "no study yet" in page


def test_the_plugin_is_in_the_navigation(airflow_client, admin_token):
    response = airflow_client.get("/api/v2/plugins", headers=bearer(admin_token))
    assert response.status_code == 200
    plugins = {p["name"]: p for p in response.json()["plugins"]}
    plugin = plugins["secmlops"]
    assert plugin["fastapi_apps"] == [
        {"app": "fastapi.applications.FastAPI", "url_prefix": "/secmlops", "name": "SecMLOps"}
    ]
    (view,) = plugin["external_views"]
    assert (view["name"], view["href"], view["destination"], view["url_route"]) == (
        "SecMLOps",
        "/secmlops/",
        "nav",
        "secmlops",
    )
    errors = airflow_client.get("/api/v2/plugins/importErrors", headers=bearer(admin_token))
    assert errors.status_code == 200 and errors.json()["total_entries"] == 0
    # The plugin app publishes no unauthenticated schema or docs.
    assert airflow_client.get("/secmlops/openapi.json").status_code in (401, 404)
    assert airflow_client.get("/secmlops/docs").status_code in (401, 404)
