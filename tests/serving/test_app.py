"""`/v1/detect`: auth, input limits, verified hot reload, and the inference log."""

import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from secmlops.audit import AuditLog, read_audit_log
from secmlops.monitoring.embedding import EMBEDDING_COMPONENTS
from secmlops.registry import Registry
from secmlops.serving.app import ServingConfig, create_app
from secmlops.serving.inference_log import InferenceLog, read_inference_log
from secmlops.serving.model_source import ModelSource

from .conftest import AUTH, NAME, TOKEN, detect, gate_and_sign, jpeg, logged, model_source


def test_detect_returns_detections_score_and_logs_the_request(served):
    response = detect(served["client"], jpeg())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["version"] == "v1" and body["adversarial_score"] == 0.25
    assert isinstance(body["detections"], list)
    records = logged(served["tmp"] / "inference", 1)
    assert len(records) == 1 and records[0]["request_id"] == body["request_id"]
    features = records[0]["features"]
    assert set(features) >= {"brightness", "contrast", "sharpness", "hf_energy", "detections"}
    assert records[0]["model_version"] == "v1" and records[0]["width"] == 96
    # v1 carries a signed reference profile: the backbone embedding's PCA projection is logged.
    assert len(records[0]["embedding"]) == EMBEDDING_COMPONENTS


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}]
)
def test_requests_without_the_token_get_401(served, headers):
    response = detect(served["client"], jpeg(), headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert not list(read_inference_log(served["tmp"] / "inference"))


def test_bad_uploads_are_refused_and_the_server_keeps_serving(served):
    client = served["client"]
    big = jpeg(600, 400, seed=1) + b"\0" * 200_000
    assert detect(client, big).status_code == 413
    assert detect(client, b"hello", "text/plain").status_code == 415
    assert detect(client, jpeg(), "image/png").status_code == 415  # declared PNG, JPEG bytes
    broken = b"\x89PNG\r\n\x1a\n" + b"\0" * 100
    response = detect(client, broken, "image/png")
    assert response.status_code == 422 and "cannot decode" in response.json()["detail"]
    huge = io.BytesIO()
    Image.new("RGB", (1200, 1000)).save(huge, "PNG")  # tiny file, too many pixels
    assert detect(client, huge.getvalue(), "image/png").status_code == 413
    assert detect(client, jpeg()).status_code == 200
    assert len(logged(served["tmp"] / "inference", 1)) == 1


def test_hot_reload_follows_the_alias_and_refuses_a_tampered_version(served):
    client, source = served["client"], served["source"]
    served["promote"]("v2")
    # Tamper with v2's weights inside the registry after it was promoted.
    weights = served["root"] / "models" / NAME / "versions" / "v2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    assert source.refresh() is False
    assert source.refresh() is False  # the refused record is not retried every interval
    assert source.current.version == "v1"
    assert detect(client, jpeg()).json()["model"]["version"] == "v1"
    refusal = client.get("/v1/model", headers=AUTH).json()["last_refusal"]
    assert "differs from the digest recorded" in refusal
    served["promote"]("v3")
    assert source.refresh() is True
    assert detect(client, jpeg()).json()["model"]["version"] == "v3"
    health = client.get("/v1/model", headers=AUTH).json()
    assert health["version"] == "v3" and health["sequence"] == 3 and health["last_refusal"] is None
    loads = [
        (e["decision"], e["details"].get("version"))
        for e in read_audit_log(served["tmp"] / "audit.jsonl")
        if e["action"] == "load_model"
    ]
    assert loads == [("pass", "v1"), ("fail", None), ("pass", "v3")]


def test_server_does_not_start_without_a_verified_model(tmp_path, pki, policy, releases):
    from secmlops.errors import SecMLOpsError

    audit = AuditLog(tmp_path / "audit.jsonl")
    registry = Registry.open(tmp_path / "registry")
    registry.push(releases["v1"], NAME, "v1", pki.keyring, audit)
    # No production alias yet: nothing verified to serve.
    source = ModelSource(
        Registry.open(tmp_path / "registry"), NAME, "production", pki.keyring, policy, audit
    )
    app = create_app(source, InferenceLog(tmp_path / "log"), ServingConfig(token=TOKEN))
    with pytest.raises(SecMLOpsError, match="no alias 'production'"), TestClient(app):
        pass


def test_inference_log_on_s3_writes_whole_objects(s3_bucket):
    endpoint, bucket = s3_bucket
    log = InferenceLog(f"s3://{bucket}/inference", flush_every=2, endpoint_url=endpoint)
    for i in range(3):
        log.append({"request_id": str(i)})
    uri = f"s3://{bucket}/inference"
    assert [r["request_id"] for r in read_inference_log(uri, endpoint)] == ["0", "1"]
    log.close()
    records = list(read_inference_log(uri, endpoint))
    assert sorted(r["request_id"] for r in records) == ["0", "1", "2"]


def test_default_screening_scores_every_request_from_the_same_forward(
    tmp_path, pki, policy, releases
):
    import math

    audit = AuditLog(tmp_path / "audit.jsonl")
    registry = Registry.open(tmp_path / "registry")
    registry.push(releases["v1"], NAME, "v1", pki.keyring, audit)
    registry.promote(NAME, "v1", "production", pki.keyring, audit, key=pki["approver"].key,
                     policy=policy)  # fmt: skip
    source = ModelSource(
        Registry.open(tmp_path / "registry"), NAME, "production", pki.keyring, policy, audit
    )
    app = create_app(source, InferenceLog(tmp_path / "log"), ServingConfig(token=TOKEN))
    with TestClient(app) as client:
        scores = [detect(client, jpeg(seed=s)).json()["adversarial_score"] for s in range(2)]
    assert all(math.isfinite(s) and s >= 0 for s in scores)


def test_a_release_with_a_calibrated_screener_reports_alarms(
    tmp_path, pki, policy, serving_policy, tiny_scenes
):
    """The calibration is signed with the model; serving runs the cascade and flags attacks."""
    from secmlops import models
    from secmlops.attacks.projected_gradient import AttackConfig, perturb
    from secmlops.serving.calibration import calibrate_model
    from secmlops.training.trainer import TrainConfig, train

    model_dir = tmp_path / "model"
    train(tiny_scenes, model_dir, TrainConfig(epochs=2, batch_size=8, warmup_steps=4, seed=1))
    calibrate_model(model_dir, tiny_scenes, split="all", max_images=40)
    gate_and_sign(model_dir, pki, serving_policy)
    audit = AuditLog(tmp_path / "audit.jsonl")
    registry = Registry.open(tmp_path / "registry")
    registry.push(model_dir, NAME, "v1", pki.keyring, audit)
    registry.promote(NAME, "v1", "production", pki.keyring, audit, key=pki["approver"].key,
                     policy=policy)  # fmt: skip
    source = ModelSource(
        Registry.open(tmp_path / "registry"), NAME, "production", pki.keyring, policy, audit
    )
    app = create_app(source, InferenceLog(tmp_path / "log"), ServingConfig(token=TOKEN))
    image = Image.open(sorted((tiny_scenes / "images").iterdir())[0]).convert("RGB")
    clean = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255).unsqueeze(0)
    model = models.load(model_dir)
    attacked = perturb(model, clean, [{"boxes": torch.zeros(0, 4)}], AttackConfig(eps=8 / 255))
    with TestClient(app) as client:
        answers = []
        for pixels in (clean, attacked):
            buffer = io.BytesIO()
            array = pixels[0].mul(255).round().byte().permute(1, 2, 0).numpy()
            Image.fromarray(array).save(buffer, "PNG")
            answers.append(detect(client, buffer.getvalue(), "image/png").json())
    assert set(answers[0]["screening"]) == {"flagged", "escalated", "degraded"}
    assert answers[1]["adversarial_score"] > answers[0]["adversarial_score"]


def test_a_record_that_is_not_json_does_not_take_its_neighbours_down(tmp_path):
    log = InferenceLog(tmp_path / "log")
    log.extend([{"request_id": "a", "score": float("nan")}, {"request_id": "b", "score": 0.5}])
    records = {r["request_id"]: r for r in read_inference_log(tmp_path / "log")}
    assert records["b"]["score"] == 0.5
    assert "unserialisable" in records["a"] and "score" not in records["a"]


def test_websockets_are_closed_by_the_guard(served):
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect), served["client"].websocket_connect("/v1/detect"):
        pass


def test_following_the_alias_survives_an_unexpected_error(stocked, pki, policy):
    """A network blip inside a reload (not a refusal) must not end the follower task."""
    import time

    source = model_source(stocked, pki, policy)
    calls = []
    real_refresh = source.refresh

    def flaky() -> bool:
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionResetError("S3 read cut short")
        return real_refresh()

    source.refresh = flaky  # type: ignore[method-assign]
    app = create_app(source, InferenceLog(stocked["tmp"] / "log"),
                     ServingConfig(token=TOKEN, reload_interval_s=0.05))  # fmt: skip
    with TestClient(app):
        deadline = time.monotonic() + 10
        while len(calls) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(calls) >= 4  # start, the failing check, and checks after it
