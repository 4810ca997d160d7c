"""Monitoring core: reference profile, Evidently drift, attack rate, retraining decision.

Every number comes from a real model run on real rendered scenes and a real Evidently report.
"""

import datetime as dt
import itertools
import json
from pathlib import Path

import pytest
import torch

from secmlops.audit import AuditLog, read_audit_log
from secmlops.errors import DataError
from secmlops.monitoring.decision import decide
from secmlops.monitoring.drift import (
    MonitoringThresholds,
    check_attacks,
    check_drift,
    records_to_frame,
)
from secmlops.monitoring.embedding import EMBEDDING_COMPONENTS
from secmlops.monitoring.reference import (
    REFERENCE_FILE,
    build_reference,
    describe_images,
    load_profile,
    load_reference,
    load_split_images,
    save_reference,
)

from ..conftest import PETS_DIR, REPO_ROOT, requires_pets

NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)


def thresholds(score_threshold: float | None = None) -> MonitoringThresholds:
    return MonitoringThresholds(
        max_drifted_share=0.3,
        drift_p_value=0.01,
        min_window=20,
        max_flagged_share=0.1,
        jump_p_value=0.01,
        score_threshold=score_threshold,
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A model trained on seed-11 scenes, its reference on unseen seed-21 scenes, window images."""
    from secmlops.data.synthetic import generate_scenes
    from secmlops.models import load
    from secmlops.training.trainer import TrainConfig, train

    root = tmp_path_factory.mktemp("monitoring")
    train_data = generate_scenes(root / "train", 80, seed=11, width=160, height=128, workers=1)
    model_dir = root / "model"
    train(train_data, model_dir, TrainConfig(epochs=10, batch_size=8, warmup_steps=10, seed=1))
    # Held-out scenes (the model never saw them): the reference, like a validation split.
    ref_data = generate_scenes(root / "ref", 100, seed=21, width=160, height=128, workers=1)
    reference, projection = build_reference(model_dir, ref_data, split="train", max_images=80)
    save_reference(reference, model_dir, projection)
    window_data = generate_scenes(root / "win", 75, seed=31, width=160, height=128, workers=1)
    images = load_split_images(window_data, "train", max_images=60)
    return {
        "model_dir": model_dir,
        "model": load(model_dir),
        "projection": projection,
        "images": images,
        "root": root,
    }


def served_records(model, images, flagged=None, projection=None):
    """Inference-log records as serving writes them (features, embedding, score, screening)."""
    records = []
    for i, row in enumerate(describe_images(model, images, projection)):
        score = row.pop("adversarial_score")
        embedding = [row.pop(c) for c in projection.columns] if projection else None
        screening = (
            {}
            if flagged is None
            else {"flagged": bool(flagged[i]), "escalated": False, "degraded": False}
        )
        records.append(
            {
                "request_id": f"r{i}",
                "features": row,
                **({"embedding": embedding} if embedding else {}),
                "adversarial_score": score,
                "screening": screening,
            }
        )
    return records


def test_reference_round_trip(setup):
    path = setup["model_dir"] / REFERENCE_FILE
    assert path.is_file()
    reference = load_reference(setup["model_dir"])
    assert len(reference) == 80
    assert reference["detections"].sum() > 0  # the trained model finds people
    profile = json.loads(path.read_text())
    assert profile["format"] == "secmlops.reference/v2"
    projection = load_profile(setup["model_dir"])[1]
    assert projection is not None and len(projection.columns) == EMBEDDING_COMPONENTS
    assert list(reference.columns[-EMBEDDING_COMPONENTS:]) == list(projection.columns)
    # PCA: the kept directions explain most of the reference's embedding variance, in order.
    ratios = projection.explained_variance_ratio
    assert ratios.sum() > 0.5 and all(a >= b for a, b in itertools.pairwise(ratios))


def test_in_distribution_window_no_drift_no_request(setup, tmp_path):
    reference = load_reference(setup["model_dir"])
    records = served_records(setup["model"], setup["images"], projection=setup["projection"])
    window = records_to_frame(records)
    result = check_drift(reference, window, tmp_path / "reports", thresholds())
    assert not result.detected, result.p_values
    assert result.drifted_share < 0.3
    assert result.embedding_drift_share is not None and not result.embedding_drifted
    assert (tmp_path / "reports" / "drift-report.html").stat().st_size > 1000
    assert json.loads((tmp_path / "reports" / "drift-report.json").read_text())["metrics"]
    audit = AuditLog(tmp_path / "audit.jsonl", actor="test")
    attack = check_attacks(window, thresholds(float(reference["adversarial_score"].max())))
    request = decide(result, attack, tmp_path / "state.json", audit, NOW, 3600)
    assert request is None
    assert [e["action"] for e in read_audit_log(tmp_path / "audit.jsonl")] == ["check_window"]


@pytest.mark.parametrize(
    "shift",
    [lambda x: (x + 0.3).clamp(0, 1), lambda x: x * 0.4 + 0.45],
    ids=["brighter", "fog"],
)
def test_shifted_window_drifts_and_requests_retraining(setup, tmp_path, shift):
    reference = load_reference(setup["model_dir"])
    shifted = [shift(image) for image in setup["images"]]
    window = records_to_frame(
        served_records(setup["model"], shifted, projection=setup["projection"])
    )
    result = check_drift(reference, window, tmp_path, thresholds())
    assert result.detected
    assert "brightness" in result.drifted_columns or "contrast" in result.drifted_columns
    audit = AuditLog(tmp_path / "audit.jsonl", actor="test")
    request = decide(result, None, tmp_path / "state.json", audit, NOW, 3600)
    assert request is not None and request.reason == "drift"
    assert request.evidence["drift"]["html_report"] == result.html_report
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["last_reason"] == "drift"

    # The same drift ten minutes later: inside the cooldown, suppressed and audited.
    later = decide(
        result, None, tmp_path / "state.json", audit, NOW + dt.timedelta(minutes=10), 3600
    )
    assert later is None
    entries = read_audit_log(tmp_path / "audit.jsonl")
    assert [e["action"] for e in entries] == ["request_retraining", "suppress_retraining_request"]
    assert entries[-1]["details"]["suppressed"] == ["drift"]
    # After the cooldown it fires again.
    again = decide(result, None, tmp_path / "state.json", audit, NOW + dt.timedelta(hours=2), 3600)
    assert again is not None and again.reason == "drift"


def test_flagged_share_raises_attack_alarm(setup, tmp_path):
    images = setup["images"]
    clean = records_to_frame(served_records(setup["model"], images, flagged=[False] * len(images)))
    previous = check_attacks(clean, thresholds())
    assert not previous.alarm and previous.flagged == 0
    marks = [i % 5 == 0 for i in range(len(images))]  # 20% flagged by the screener
    window = records_to_frame(served_records(setup["model"], images, flagged=marks))
    attack = check_attacks(window, thresholds(), previous=previous)
    assert attack.alarm and attack.flagged == sum(marks)
    assert attack.flagged_share == pytest.approx(sum(marks) / len(images))
    assert set(attack.reasons) == {"share", "jump"}
    audit = AuditLog(tmp_path / "audit.jsonl", actor="test")
    request = decide(None, attack, tmp_path / "state.json", audit, NOW, 3600)
    assert request is not None and request.reason == "attack"
    assert request.evidence["attack"]["flagged"] == sum(marks)


def test_unscreened_records_flag_by_real_score_threshold(setup):
    reference = load_reference(setup["model_dir"])
    window = records_to_frame(served_records(setup["model"], setup["images"]))
    with pytest.raises(DataError, match="score_threshold"):
        check_attacks(window, thresholds(None))
    # A threshold at the reference's 80th percentile flags a share of clean traffic near 20%.
    cut = float(reference["adversarial_score"].quantile(0.8))
    attack = check_attacks(window, thresholds(cut))
    assert attack.flagged == int((window["adversarial_score"] > cut).sum())
    assert attack.alarm == (attack.flagged_share >= 0.1)


def test_upside_down_camera_drifts_in_the_embedding_not_in_pixel_statistics(setup, tmp_path):
    """A camera mounted upside down: every pixel statistic is unchanged (they are invariant to a
    180-degree rotation), yet the backbone sees another world; the embedding drift catches it."""
    reference = load_reference(setup["model_dir"])
    flipped = [image.flip(-1).flip(-2) for image in setup["images"]]
    window = records_to_frame(
        served_records(setup["model"], flipped, projection=setup["projection"])
    )
    result = check_drift(reference, window, tmp_path, thresholds())
    pixel_columns = ("brightness", "contrast", "sharpness", "colourfulness", "hf_energy")
    assert not set(pixel_columns) & set(result.drifted_columns), result.p_values
    assert result.embedding_drifted, result.embedding_drift_share
    assert result.detected
    report = json.loads(Path(result.json_report).read_text())
    assert any("EmbeddingsDrift" in m["config"]["type"] for m in report["metrics"])


def test_window_without_the_models_embedding_fails_closed(setup, tmp_path):
    reference = load_reference(setup["model_dir"])
    window = records_to_frame(served_records(setup["model"], setup["images"]))
    with pytest.raises(DataError, match="lacks"):
        check_drift(reference, window, tmp_path, thresholds())
    records = served_records(setup["model"], setup["images"][:2], projection=setup["projection"])
    records[1]["embedding"] = records[1]["embedding"][:3]
    with pytest.raises(DataError, match=r"record 1.*width 3"):
        records_to_frame(records)


def test_projection_is_deterministic_and_validated():
    from secmlops.monitoring.embedding import EmbeddingProjection, fit_projection

    rng = torch.Generator().manual_seed(0)
    values = torch.randn(50, 12, generator=rng).numpy()
    first, second = fit_projection(values, 4), fit_projection(values.copy(), 4)
    assert (first.components == second.components).all()
    round_trip = EmbeddingProjection.from_json(json.loads(json.dumps(first.to_json())))
    assert (round_trip.project(values) == first.project(values)).all()
    with pytest.raises(DataError, match="12-wide"):
        first.project(values[:, :5])
    with pytest.raises(DataError, match="inconsistent shapes"):
        EmbeddingProjection.from_json({**first.to_json(), "mean": [0.0] * 3})


def test_missing_feature_fails_closed():
    with pytest.raises(DataError, match="brightness"):
        records_to_frame([{"features": {}, "adversarial_score": 0.1, "screening": {}}])


def test_corrupt_state_fails_closed(setup, tmp_path):
    (tmp_path / "state.json").write_text("{not json")
    images = setup["images"][:20]
    window = records_to_frame(served_records(setup["model"], images, flagged=[True] * 20))
    attack = check_attacks(window, thresholds())
    with pytest.raises(DataError, match="monitoring state"):
        decide(None, attack, tmp_path / "state.json", AuditLog(tmp_path / "a.jsonl"), NOW, 60)


def test_thresholds_validate():
    with pytest.raises(ValueError, match="max_drifted_share"):
        MonitoringThresholds(0.0, 0.01, 20, 0.1, 0.01, None)
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        decide(None, None, "s.json", AuditLog("a.jsonl"), dt.datetime(2025, 1, 1), 60)


def test_monitor_window_reads_the_log_and_applies_the_policy(setup, tmp_path):
    """The hourly run: log window -> checks under the policy's thresholds -> one request."""
    from secmlops.monitoring.window import monitor_window
    from secmlops.policy import load_policy
    from secmlops.serving.inference_log import InferenceLog

    policy = load_policy(REPO_ROOT / "policy.yaml").monitoring
    fog = [image * 0.4 + 0.45 for image in setup["images"]]
    log = InferenceLog(tmp_path / "log")
    for record in served_records(
        setup["model"], fog, flagged=[False] * len(fog), projection=setup["projection"]
    ):
        log.append(record)
    audit = AuditLog(tmp_path / "audit.jsonl")
    args = (str(tmp_path / "log"), setup["model_dir"], policy, tmp_path / "reports",
            tmp_path / "state.json", audit)  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    result = monitor_window(*args, now=now)
    assert result["records"] == len(fog) and result["drift"]["detected"]
    assert result["request"]["reason"] == "drift"
    assert Path(result["drift"]["html_report"]).is_file()
    # An hour later the same records are outside the window: too few to judge, an error.
    with pytest.raises(DataError, match="needs at least"):
        monitor_window(*args, now=now + dt.timedelta(hours=2))


def test_reports_kept_on_s3_and_linked_from_the_audit_entry(
    setup, tmp_path, s3_bucket, monkeypatch
):
    """Reports go to the S3 store (the loopback moto server), and the audit entry links them."""
    import boto3

    from secmlops.monitoring.window import monitor_window
    from secmlops.policy import load_policy
    from secmlops.serving.inference_log import InferenceLog

    endpoint, bucket = s3_bucket
    log = InferenceLog(tmp_path / "log")
    fog = [image * 0.4 + 0.45 for image in setup["images"]]
    for record in served_records(setup["model"], fog, [False] * len(fog), setup["projection"]):
        log.append(record)
    policy = load_policy(REPO_ROOT / "policy.yaml").monitoring
    result = monitor_window(
        str(tmp_path / "log"), setup["model_dir"], policy, f"s3://{bucket}/monitoring",
        tmp_path / "state.json", AuditLog(tmp_path / "audit.jsonl"), s3_endpoint_url=endpoint,
    )  # fmt: skip
    html = result["drift"]["html_report"]
    assert html.startswith(f"s3://{bucket}/monitoring/") and html.endswith("drift-report.html")
    key = html.removeprefix(f"s3://{bucket}/")
    body = boto3.client("s3", endpoint_url=endpoint).get_object(Bucket=bucket, Key=key)["Body"]
    assert b"<html" in body.read()[:2000].lower()
    entries = read_audit_log(tmp_path / "audit.jsonl")
    (entry,) = [e for e in entries if e["action"] == "request_retraining"]
    assert html in json.dumps(entry)


def test_cli_monitor_writes_the_request_for_a_foggy_window(setup, tmp_path):
    from typer.testing import CliRunner

    from secmlops.cli import app
    from secmlops.serving.inference_log import InferenceLog

    log = InferenceLog(tmp_path / "log")
    fog = [image * 0.4 + 0.45 for image in setup["images"]]
    for record in served_records(
        setup["model"], fog, flagged=[False] * len(fog), projection=setup["projection"]
    ):
        log.append(record)
    out = tmp_path / "request.json"
    result = CliRunner().invoke(
        app,
        ["monitor", "--model", str(setup["model_dir"]), "--log", str(tmp_path / "log"),
         "--reports", str(tmp_path / "reports"), "--state", str(tmp_path / "state.json"),
         "--request-out", str(out), "--policy", str(REPO_ROOT / "policy.yaml"),
         "--audit-log", str(tmp_path / "audit.jsonl")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "drift DETECTED" in result.output
    assert json.loads(out.read_text())["reason"] == "drift"
    empty = CliRunner().invoke(
        app,
        ["monitor", "--model", str(setup["model_dir"]), "--log", str(tmp_path / "nothing"),
         "--policy", str(REPO_ROOT / "policy.yaml"), "--audit-log", str(tmp_path / "a.jsonl"),
         "--state", str(tmp_path / "s.json")],
    )  # fmt: skip
    assert empty.exit_code == 2 and "needs at least" in empty.output


@requires_pets
def test_real_pets_footage_drifts_from_the_synthetic_reference(setup, tmp_path):
    """Real footage replayed through a model trained on synthetic scenes: drift, reason drift."""
    from secmlops.data.import_mot import import_mot
    from secmlops.monitoring.reference import load_split_images
    from secmlops.monitoring.window import monitor_window
    from secmlops.policy import load_policy
    from secmlops.serving.inference_log import InferenceLog

    pets = import_mot(PETS_DIR / "vtest.avi", PETS_DIR / "gt.txt", tmp_path / "pets",
                      frames="601:660")  # fmt: skip
    frames = load_split_images(pets, "all", 60)
    log = InferenceLog(tmp_path / "log")
    for record in served_records(
        setup["model"], frames, flagged=[False] * len(frames), projection=setup["projection"]
    ):
        log.append(record)
    policy = load_policy(REPO_ROOT / "policy.yaml").monitoring
    result = monitor_window(
        str(tmp_path / "log"), setup["model_dir"], policy, tmp_path / "reports",
        tmp_path / "state.json", AuditLog(tmp_path / "audit.jsonl"),
    )  # fmt: skip
    assert result["drift"]["detected"], result["drift"]["p_values"]
    assert result["request"]["reason"] == "drift"


def test_a_window_with_20_percent_pgd_requests_raises_the_attack_alarm(setup, tmp_path):
    """Real PGD uploads, flagged by the real calibrated screener, then the attack monitor."""
    from secmlops.attacks.projected_gradient import AttackConfig, perturb
    from secmlops.monitoring.reference import load_split_images
    from secmlops.serving.screening import Screener

    model = setup["model"]
    calibration = torch.stack(load_split_images(setup["root"] / "ref", "train", 80))
    screener = Screener.calibrate(model, calibration)
    images = setup["images"]
    attacked = set(range(0, len(images), 5))  # 20% of the requests
    # The attacker makes the people of these scenes vanish: PGD against their true boxes.
    from secmlops.data.dataset import load_dataset

    dataset = load_dataset(setup["root"] / "win")
    records = dataset.split("train")[: len(images)]
    served = []
    for i, image in enumerate(images):
        batch = image.unsqueeze(0)
        if i in attacked:
            target = {"boxes": torch.tensor(records[i].boxes, dtype=torch.float32).reshape(-1, 4)}
            seeded = torch.Generator().manual_seed(i)
            batch = perturb(model, batch, [target], AttackConfig(eps=4 / 255), generator=seeded)
            batch = batch.mul(255).round().div(255)  # uploads are 8-bit images
        served.append(batch[0])
    flags = screener(torch.stack(served)).flagged.tolist()
    window = records_to_frame(served_records(model, served, flagged=flags))
    clean = records_to_frame(served_records(model, images, flagged=screener(
        torch.stack(images)).flagged.tolist()))  # fmt: skip
    previous = check_attacks(clean, thresholds())
    attack = check_attacks(window, thresholds(), previous=previous)
    caught = sum(flags[i] for i in attacked)
    print(f"screener caught {caught} of {len(attacked)} attacked requests")
    assert caught >= len(attacked) // 2, (caught, len(attacked))
    assert attack.alarm, attack
    request = decide(None, attack, tmp_path / "state.json", AuditLog(tmp_path / "a.jsonl"), NOW, 60)
    assert request is not None and request.reason == "attack"
