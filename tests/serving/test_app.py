"""`/v1/detect`: auth, input limits, verified hot reload, and the inference log."""

import io
import json

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

TOKEN = "t0ken-for-tests-" + "x" * 16
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def fixed_score(model, batch):
    """Detections from the model, a constant adversarial score (screening has its own tests)."""
    return model(batch), torch.full((len(batch),), 0.25)


def jpeg(width=96, height=64, seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture
def served(tmp_path, pki, releases):
    """A file registry with v1 in production, and a running app following it."""
    audit = AuditLog(tmp_path / "audit.jsonl")
    registry = Registry.open(tmp_path / "registry")
    for version in ("v1", "v2", "v3"):
        registry.push(releases[version], "pds", version, pki["keyring"], audit)
    registry.promote("pds", "v1", "production", pki["keyring"], audit)
    source = ModelSource(
        Registry.open(tmp_path / "registry"), "pds", "production", pki["keyring"], audit
    )
    log = InferenceLog(tmp_path / "inference")
    config = ServingConfig(token=TOKEN, max_bytes=200_000, max_pixels=1_000_000,
                           reload_interval_s=0, detect=fixed_score)  # fmt: skip
    with TestClient(create_app(source, log, config)) as client:
        yield {"client": client, "registry": registry, "source": source, "audit": audit,
               "tmp": tmp_path, "keyring": pki["keyring"]}  # fmt: skip


def detect(client, data, content_type="image/jpeg", headers=AUTH):
    return client.post("/v1/detect", files={"image": ("x", data, content_type)}, headers=headers)


def test_detect_returns_detections_score_and_logs_the_request(served):
    response = detect(served["client"], jpeg())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["version"] == "v1" and body["adversarial_score"] == 0.25
    assert isinstance(body["detections"], list)
    records = list(read_inference_log(served["tmp"] / "inference"))
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
    assert len(list(read_inference_log(served["tmp"] / "inference"))) == 1


def test_hot_reload_follows_the_alias_and_refuses_a_tampered_version(served):
    client, registry, source = served["client"], served["registry"], served["source"]
    registry.promote("pds", "v2", "production", served["keyring"], served["audit"])
    # Tamper with v2's weights inside the registry after it was promoted.
    stored = served["tmp"] / "registry" / "models" / "pds" / "versions" / "v2"
    weights = stored / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    assert source.refresh() is False
    assert source.refresh() is False  # the refused version is not retried every interval
    assert source.current.version == "v1"
    assert detect(client, jpeg()).json()["model"]["version"] == "v1"
    assert "differs from the digest recorded" in client.get("/healthz").json()["last_refusal"]
    registry.promote("pds", "v3", "production", served["keyring"], served["audit"])
    assert source.refresh() is True
    assert detect(client, jpeg()).json()["model"]["version"] == "v3"
    loads = [
        (e["decision"], e["details"].get("version"))
        for e in read_audit_log(served["tmp"] / "audit.jsonl")
        if e["action"] == "load_model"
    ]
    assert loads == [("pass", "v1"), ("fail", None), ("pass", "v3")]


def test_server_does_not_start_without_a_verified_model(tmp_path, pki, releases):
    from secmlops.errors import SecMLOpsError

    audit = AuditLog(tmp_path / "audit.jsonl")
    registry = Registry.open(tmp_path / "registry")
    registry.push(releases["v1"], "pds", "v1", pki["keyring"], audit)
    # No production alias yet: nothing verified to serve.
    source = ModelSource(
        Registry.open(tmp_path / "registry"), "pds", "production", pki["keyring"], audit
    )
    app = create_app(source, InferenceLog(tmp_path / "log"), ServingConfig(token=TOKEN))
    with pytest.raises(SecMLOpsError), TestClient(app):
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


def test_default_screening_scores_every_request_from_the_same_forward(tmp_path, pki, releases):
    import math

    audit = AuditLog(tmp_path / "audit.jsonl")
    registry = Registry.open(tmp_path / "registry")
    registry.push(releases["v1"], "pds", "v1", pki["keyring"], audit)
    registry.promote("pds", "v1", "production", pki["keyring"], audit)
    source = ModelSource(
        Registry.open(tmp_path / "registry"), "pds", "production", pki["keyring"], audit
    )
    app = create_app(source, InferenceLog(tmp_path / "log"), ServingConfig(token=TOKEN))
    with TestClient(app) as client:
        scores = [detect(client, jpeg(seed=s)).json()["adversarial_score"] for s in range(2)]
    assert all(math.isfinite(s) and s >= 0 for s in scores)


def test_a_release_with_a_calibrated_screener_reports_alarms(tmp_path, pki, tiny_scenes):
    """The calibration is signed with the model; serving runs the cascade and flags attacks."""
    from secmlops import models
    from secmlops.attacks.projected_gradient import AttackConfig, perturb
    from secmlops.serving.calibration import calibrate_model
    from secmlops.supplychain.provenance import sign_model
    from secmlops.training.trainer import TrainConfig, train

    model_dir = tmp_path / "model"
    train(tiny_scenes, model_dir, TrainConfig(epochs=2, batch_size=8, warmup_steps=4, seed=1))
    calibrate_model(model_dir, tiny_scenes, split="all", max_images=40)
    sign_model(model_dir, pki["release"]["key"])
    audit = AuditLog(tmp_path / "audit.jsonl")
    registry = Registry.open(tmp_path / "registry")
    registry.push(model_dir, "pds", "v1", pki["keyring"], audit)
    # Promotion needs a passed gate; loading for serving does not look at aliases' history.
    (tmp_path / "registry" / "models" / "pds" / "aliases").mkdir(parents=True)
    record = {"version": "v1", "weights_sha256": models.read_card(model_dir).weights_sha256,
              "previous": [], "generation": 1, "moved_at": "2026-11-26T00:00:00+00:00",
              "moved_by": "test"}  # fmt: skip
    (tmp_path / "registry" / "models" / "pds" / "aliases" / "production.json").write_text(
        json.dumps(record)
    )
    source = ModelSource(
        Registry.open(tmp_path / "registry"), "pds", "production", pki["keyring"], audit
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
