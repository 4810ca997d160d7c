"""The robustness suite: ART attacks, the cross-check against our PGD, corruptions, the report
and `secmlops evaluate --attacks`."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from secmlops import models
from secmlops.attacks.projected_gradient import attack_loss, loss_mode
from secmlops.errors import DataError, ModelError
from secmlops.evaluation import art_attacks
from secmlops.evaluation.corruptions import CORRUPTIONS, corrupt
from secmlops.evaluation.gate_checks import evaluate_gate
from secmlops.evaluation.gate_sanity import sanity_checks
from secmlops.evaluation.robustness import (
    CROSS_CHECK_TOLERANCE,
    REPORT_SCHEMA,
    RobustnessSuite,
    attack_names,
    evaluate_robustness,
    report_defence,
)
from secmlops.policy import load_policy

REPO_POLICY = Path(__file__).resolve().parents[2] / "policy.yaml"
REPO_SANITY = load_policy(REPO_POLICY).gate.sanity
SUITE = RobustnessSuite(
    linf_eps_levels=[2, 4], pgd_steps=10, restarts=1, patch_fraction=0.15,
    person_patch_fraction=0.4, person_patch_steps=40, corruption_severity=3,
    sanity_eps_levels=[8, 16, 64], sanity_images=8,
)  # fmt: skip
EVAL_IMAGES = 12


@pytest.fixture(scope="module")
def scenes(small_scenes) -> Path:
    return small_scenes


@pytest.fixture(scope="module")
def report(small_model, scenes, one_thread) -> dict:
    return evaluate_robustness(
        small_model, scenes, "all", SUITE, baseline_dir=small_model, max_images=EVAL_IMAGES
    )


# ------------------------------------------------------------------------------- the report
def test_report_has_every_attack_of_the_suite_with_a_valid_map(report, small_model, scenes):
    assert report["schema"] == REPORT_SCHEMA
    card = models.read_card(small_model)
    assert report["model"] == {
        "dir": str(small_model),
        "weights_sha256": card.weights_sha256,
        "architecture": "compact_centernet",
        "defence": None,
        "trained_on": str(scenes.resolve()),
    }
    assert report["data"]["dir"] == str(scenes.resolve())
    assert report["data"]["split"] == "all" and report["data"]["images"] == EVAL_IMAGES
    assert report["data"]["boxes"] > 0
    assert report["suite"] == SUITE.model_dump(mode="json")
    assert report["clean"]["mAP50"] > 0.3
    kinds = ("fgsm", "pgd", "vanishing", "fabrication", "worst_case")
    expected = {
        *(f"{kind}_linf_{k}" for kind in kinds for k in (2, 4)),
        *("patch", "person_patch", "person_patch_random"),
        *CORRUPTIONS,
    }
    assert set(report["attacks"]) == expected
    ours = ("vanishing", "fabrication", "worst_case", "person_patch")
    for name, result in report["attacks"].items():
        assert result["family"] in ("evasion", "ensemble", "patch", "corruption"), name
        library = "secmlops" if name.startswith(ours) or result["family"] == "corruption" else "art"
        assert result["library"] == library, name
        for metric in ("mAP50", "mAP50_95", "recall", "miss_rate", "precision", "mr2"):
            assert math.isfinite(result[metric]) and 0 <= result[metric] <= 1, name
        assert result["miss_rate"] == pytest.approx(1 - result["recall"])
        assert result["fppi"] >= 0 and "_predictions" not in result
        assert result["seconds"] >= 0 and isinstance(result["params"], dict)
    assert report["attacks"]["pgd_linf_4"]["method"] == "ProjectedGradientDescent"
    assert report["attacks"]["pgd_linf_4"]["params"]["eps"] == pytest.approx(4 / 255)
    assert report["attacks"]["patch"]["method"] == "RobustDPatch"
    # A 15% patch on a 128-pixel short side.
    assert report["attacks"]["patch"]["params"]["patch_side"] == round(0.15 * 128)
    json.dumps(report, allow_nan=False)  # plain, finite JSON


@pytest.mark.parametrize(
    ("training", "expected"),
    [
        ({"adversarial": None, "patch_augmentation": 0.0}, None),
        ({}, None),  # a card from before either existed
        ({"adversarial": {"method": "fgsm-rs"}}, {"adversarial": {"method": "fgsm-rs"}}),
        # Patch augmentation alone is a defence too: its cost must be checked.
        ({"adversarial": None, "patch_augmentation": 0.5}, {"patch_augmentation": 0.5}),
    ],
)
def test_every_defence_a_card_records_is_reported(training, expected):
    assert report_defence(training) == expected


def test_gradient_attacks_and_the_patch_lower_map_below_clean(report):
    clean = report["clean"]["mAP50"]
    for name in ("fgsm_linf_2", "fgsm_linf_4", "pgd_linf_2", "pgd_linf_4", "patch"):
        assert report["attacks"][name]["mAP50"] < clean, name
    # At 4/255 the detector loses most of what it found.
    assert report["attacks"]["pgd_linf_4"]["mAP50"] < clean / 2


def test_the_person_worn_patch_hides_more_people_than_its_random_control(report, scenes):
    import base64
    import io

    from PIL import Image

    clean, attacks = report["clean"], report["attacks"]
    worn, control = attacks["person_patch"], attacks["person_patch_random"]
    print("person patch miss rate", clean["miss_rate"], control["miss_rate"], worn["miss_rate"])
    assert worn["miss_rate"] > control["miss_rate"] >= clean["miss_rate"] - 0.05
    params = worn["params"]
    assert params["fraction_of_height"] == SUITE.person_patch_fraction
    assert params["steps"] == SUITE.person_patch_steps and control["params"]["steps"] == 0
    assert params["trained_on_images"] > 0 and params["trained_on_people"] > 0
    patch = Image.open(io.BytesIO(base64.b64decode(params["patch_png"])))
    assert patch.size == (32, 32) and patch.mode == "RGB"


def test_without_its_training_data_the_person_patch_is_skipped_and_the_gate_says_so(
    small_model, scenes, tmp_path, one_thread
):
    """Imported weights carry no training data to make the patch on: the rest of the report
    stands, the two entries say why they have no figures, and the gate fails on them."""
    card = models.read_card(small_model)
    imported = tmp_path / "imported"
    training = {k: v for k, v in card.training.items() if k != "data"}
    models.save(models.load(small_model), imported, training=training,
                operating_point=card.operating_point)  # fmt: skip
    report = evaluate_robustness(imported, scenes, "all", SUITE, max_images=2)
    for name in ("person_patch", "person_patch_random"):
        assert "recall" not in report["attacks"][name]
        assert "training data" in report["attacks"][name]["skipped"]
    assert "recall" in report["attacks"]["worst_case_linf_4"]
    gate = load_policy(REPO_POLICY).gate.model_copy(update={"attacks": SUITE})
    failed = {c.name: c for c in evaluate_gate(report, gate).failures}
    assert "missing from the report" in failed["robust_recall.person_patch"].note


def test_vanishing_hides_people_and_fabrication_raises_false_alarms(report):
    clean, attacks = report["clean"], report["attacks"]
    print({n: (round(a["recall"], 3), round(a["fppi"], 2)) for n, a in attacks.items()}, clean)
    assert attacks["vanishing_linf_4"]["recall"] < clean["recall"] / 2
    assert attacks["vanishing_linf_2"]["recall"] < clean["recall"]
    assert attacks["fabrication_linf_4"]["fppi"] > clean["fppi"]
    assert attacks["vanishing_linf_4"]["params"]["schedule"] == "apgd"
    assert attacks["vanishing_linf_4"]["params"]["restarts"] == SUITE.restarts


@pytest.mark.parametrize("level", [2, 4])
def test_the_worst_case_finds_no_more_people_than_any_of_its_attacks(report, level):
    worst = report["attacks"][f"worst_case_linf_{level}"]
    members = [f"{kind}_linf_{level}" for kind in ("fgsm", "pgd", "vanishing", "fabrication")]
    assert worst["params"]["members"] == members
    # Per image the fewest found: summed over images, no member can have found fewer.
    assert worst["recall"] <= min(report["attacks"][m]["recall"] for m in members)
    assert sum(worst["params"]["chosen"].values()) == EVAL_IMAGES
    assert worst["seconds"] >= sum(report["attacks"][m]["seconds"] for m in members)


def test_the_sanity_section_shows_attacks_that_work(report, small_model):
    sanity = report["sanity"]
    assert sanity["images"] == SUITE.sanity_images and sanity["people"] > 0
    assert [row["eps"] for row in sanity["sweep"]] == [2, 4, 8, 16, 64]
    print(sanity)
    for attack in ("vanishing", "worst_case"):
        assert sanity["sweep"][-1][attack] <= 0.05, attack
    assert sanity["effort"]["more_steps"]["steps"] == 4 * SUITE.pgd_steps
    assert sanity["effort"]["more_restarts"]["restarts"] == 4 * SUITE.restarts
    assert sanity["transfer"]["source"]["dir"] == str(small_model)
    checks = sanity_checks(sanity, SUITE, REPO_SANITY)
    assert all(check.passed for check in checks), [c.describe() for c in checks if not c.passed]


@pytest.fixture(scope="module")
def masked_model(small_model, tmp_path_factory) -> Path:
    """`small_model` with the same weights behind an input rounded to 4 bits: zero gradients
    almost everywhere, so white-box attacks stall while the model is no more robust."""
    card = models.read_card(small_model)
    model = models.load(small_model)
    masked = models.build(card.architecture, **{**card.config, "input_bits": 4})
    masked.load_state_dict(model.state_dict())
    out = tmp_path_factory.mktemp("masked") / "model"
    models.save(masked, out, training=card.training, operating_point=card.operating_point)
    return out


def test_a_model_that_masks_its_gradients_fails_the_sanity_checks(
    masked_model, small_model, scenes, one_thread
):
    masked = evaluate_robustness(
        masked_model, scenes, "all", SUITE, baseline_dir=small_model, max_images=EVAL_IMAGES
    )
    print(masked["sanity"], {n: a.get("recall") for n, a in masked["attacks"].items()})
    clean, attacks = masked["clean"]["recall"], masked["attacks"]
    # To the white-box gradient attacks it looks robust: they cannot move a rounded input.
    assert attacks["pgd_linf_4"]["recall"] >= clean - 0.05
    assert attacks["worst_case_linf_4"]["recall"] >= clean - 0.15
    gate = load_policy(REPO_POLICY).gate.model_copy(update={"attacks": SUITE})
    decision = evaluate_gate(masked, gate)
    failed = {check.name for check in decision.failures}
    # The unmasked twin's perturbations, replayed, hide more people than the white-box attack,
    # and a large eps does not bring recall down: the gate names both.
    assert {"sanity.transfer", "sanity.large_eps.vanishing"} <= failed
    assert "sanity: white-box recall above transferred recall at 4/255" in decision.message()
    assert "gradient masking" in decision.message()


def test_a_comparison_report_has_the_same_attacks_but_no_gate_accepts_it(small_model, scenes):
    """The undefended baseline's report, shown beside a candidate's, skips the cross-check and
    the sanity checks: a gate given it fails on exactly that missing evidence."""
    from secmlops.evaluation.gate_checks import evaluate_gate

    cheap = SUITE.model_copy(update={"pgd_steps": 2, "person_patch_steps": 5})
    shown = evaluate_robustness(
        small_model, scenes, "all", cheap, max_images=4, gate_evidence=False
    )
    assert shown["cross_check"] is None and shown["sanity"] is None
    assert set(shown["attacks"]) >= set(attack_names(cheap, score_attacks=True))
    assert all(0 <= shown["attacks"][f"worst_case_linf_{k}"]["recall"] <= 1 for k in (2, 4))
    gate = load_policy(REPO_POLICY).gate.model_copy(update={"attacks": cheap})
    failed = {c.name for c in evaluate_gate(shown, gate).checks if not c.passed}
    assert {"cross_check", "sanity"} <= failed


def test_our_pgd_agrees_with_art_within_tolerance(report):
    cross = report["cross_check"]
    assert cross["attack"] == "pgd_linf_4"
    assert cross["art_mAP50"] == report["attacks"]["pgd_linf_4"]["mAP50"]
    assert cross["tolerance"] == CROSS_CHECK_TOLERANCE == 0.03
    assert cross["difference"] == pytest.approx(cross["ours_mAP50"] - cross["art_mAP50"])
    assert abs(cross["difference"]) <= 0.03
    assert cross["passed"] is True


def test_our_pgd_and_art_craft_nearly_the_same_pixels(small_model, scenes):
    """Below the mAP level too: where both attacks have not yet floored the mAP (the cross-check
    at 4/255 compares two numbers near 0 on an undefended model), the pixels agree."""
    from secmlops.attacks.projected_gradient import AttackConfig, perturb
    from secmlops.data.dataset import load_dataset
    from secmlops.training.batches import prepare_split

    model = models.load(small_model)
    dataset = load_dataset(scenes)
    prepared = prepare_split(dataset, dataset.images[:8], model.input_size)
    images = prepared.images.float() / 255
    eps, steps = 2 / 255, 10
    estimator = art_attacks.art_detector(model, "compact_centernet", torch.device("cpu"))
    labels = art_attacks.art_labels(prepared.boxes, prepared.ignore)
    art = torch.from_numpy(art_attacks.pgd(estimator, images.numpy(), labels, eps, steps))
    targets = [
        {"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64), "ignore": i}
        for b, i in zip(prepared.boxes, prepared.ignore, strict=True)
    ]
    config = AttackConfig("pgd", eps, steps, "inf", art_attacks.pgd_step_size(eps, steps), False)
    ours = perturb(model, images, targets, config)
    assert (art - images).abs().max() <= eps + 1e-6 and (ours - images).abs().max() <= eps + 1e-6
    # Float noise flips the sign of a few near-zero gradients (~4% of pixels here), no more.
    assert ((art - ours).abs() < 1e-4).float().mean() > 0.9


def test_baseline_is_scored_on_the_same_images(report, small_model):
    baseline = report["baseline"]
    assert baseline["dir"] == str(small_model)
    assert baseline["weights_sha256"] == report["model"]["weights_sha256"]
    assert baseline["clean_mAP50"] == pytest.approx(report["clean"]["mAP50"])


def test_art_attacks_the_same_loss_as_ours_including_ignore_regions():
    torch.manual_seed(0)
    model = models.build("compact_centernet", input_size=(64, 96)).eval()
    images = torch.rand(2, 3, 64, 96)
    boxes = [torch.tensor([[10.0, 10.0, 30.0, 60.0]]), torch.tensor([[50.0, 5.0, 70.0, 50.0]])]
    ignore = [torch.tensor([[0.0, 0.0, 96.0, 64.0]]), torch.zeros(0, 4)]
    targets = [
        {"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64), "ignore": i}
        for b, i in zip(boxes, ignore, strict=True)
    ]
    with loss_mode(model):
        ours = attack_loss(model, images, targets).item()
        without_ignore = attack_loss(model, images, [{"boxes": b} for b in boxes]).item()
    estimator = art_attacks.art_detector(model, "compact_centernet", torch.device("cpu"))
    labels = art_attacks.art_labels(boxes, ignore)
    art = sum(v.item() for v in estimator.compute_losses(images.numpy(), labels).values())
    assert art == pytest.approx(ours, rel=1e-5)
    assert ours < without_ignore  # the ignore region removed negative loss: ART saw it too


# ------------------------------------------------------------------------------ corruptions
@pytest.fixture
def textured() -> torch.Tensor:
    """Two 48x64 images with edges and mid-range values (room to move both ways)."""
    generator = torch.Generator().manual_seed(3)
    base = torch.rand(2, 3, 12, 16, generator=generator) * 0.6 + 0.2
    return torch.nn.functional.interpolate(base, size=(48, 64), mode="nearest")


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruptions_are_deterministic_and_keep_shape_and_range(textured, name):
    first = corrupt(name, textured, 3, torch.Generator().manual_seed(0))
    second = corrupt(name, textured, 3, torch.Generator().manual_seed(0))
    assert torch.equal(first, second)
    assert first.shape == textured.shape and first.min() >= 0 and first.max() <= 1
    assert not torch.equal(first, textured)


def test_brightness_raises_the_mean_more_with_severity(textured):
    means = [corrupt("brightness", textured, s).mean().item() for s in (1, 3, 5)]
    assert textured.mean().item() < means[0] < means[1] < means[2]


def test_blur_removes_high_frequency_energy(textured):
    def high_frequency(x):
        horizontal = (x[..., 1:] - x[..., :-1]).abs().mean()
        return horizontal + (x[..., 1:, :] - x[..., :-1, :]).abs().mean()

    energies = [high_frequency(corrupt("gaussian_blur", textured, s)) for s in (1, 3, 5)]
    assert high_frequency(textured) > energies[0] > energies[1] > energies[2]


def test_jpeg_changes_pixels_a_little_and_more_at_higher_severity(textured):
    errors = [(corrupt("jpeg", textured, s) - textured).abs().mean().item() for s in (1, 5)]
    assert 0 < errors[0] < errors[1] < 0.2


def test_noise_std_follows_the_imagenet_c_severity():
    grey = torch.full((4, 3, 64, 64), 0.5)
    stds = [
        (corrupt("gaussian_noise", grey, s, torch.Generator().manual_seed(s)) - grey).std().item()
        for s in (1, 2, 3, 4, 5)
    ]
    # Severities 1..3 add std 0.08, 0.12, 0.18; 4 and 5 are clipped at 0 and 1 but still grow.
    assert stds[:3] == pytest.approx([0.08, 0.12, 0.18], rel=0.05)
    assert stds == sorted(stds)


def test_contrast_shrinks_the_spread(textured):
    assert corrupt("contrast", textured, 3).std() < textured.std() * 0.5


def test_unknown_corruption_or_severity_is_refused(textured):
    with pytest.raises(ValueError, match="severity"):
        corrupt("jpeg", textured, 6)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt("fog", textured, 1)


# ---------------------------------------------------------------------------- suite, errors
def test_the_suite_is_the_policys_gate_attacks_section():
    from pydantic import ValidationError

    from secmlops.policy import AttackSuitePolicy, load_policy

    suite = load_policy(REPO_POLICY).gate.attacks
    assert RobustnessSuite is AttackSuitePolicy and suite.linf_eps_levels
    custom = SUITE.model_copy(update={"linf_eps_levels": [8, 2]})
    names = attack_names(custom)
    kinds = ("fgsm", "pgd", "vanishing", "fabrication", "worst_case")
    assert names[:10] == [f"{kind}_linf_{k}" for kind in kinds for k in (8, 2)]
    assert names[10:13] == ["patch", "person_patch", "person_patch_random"]
    assert names[13:] == list(CORRUPTIONS)
    # A detector without an objectness map gets no score-level attacks and no person patch.
    plain = attack_names(custom, score_attacks=False)
    assert [n for n in names if n not in plain] == [
        "vanishing_linf_8", "vanishing_linf_2", "fabrication_linf_8", "fabrication_linf_2",
        "person_patch", "person_patch_random",
    ]  # fmt: skip
    # One set of bounds: the policy schema's.
    fields = SUITE.model_dump(exclude={"linf_eps_levels", "corruption_severity"})
    with pytest.raises(ValidationError, match="corruption_severity"):
        RobustnessSuite(linf_eps_levels=[2], corruption_severity=9, **fields)
    with pytest.raises(ValidationError, match="linf_eps_levels"):
        RobustnessSuite(linf_eps_levels=[], corruption_severity=3, **fields)


def test_bad_split_missing_model_and_empty_split_are_clear_errors(scenes, small_model, tmp_path):
    with pytest.raises(DataError, match="no split named 'nosuch'"):
        evaluate_robustness(small_model, scenes, "nosuch", SUITE)
    with pytest.raises(ModelError, match="model directory not found"):
        evaluate_robustness(tmp_path / "nowhere", scenes, "all", SUITE)
    with pytest.raises(DataError, match="max_images"):
        evaluate_robustness(small_model, scenes, "all", SUITE, max_images=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(scenes / "annotations.json", empty / "annotations.json")
    shutil.copytree(scenes / "images", empty / "images")  # a dataset holds its own images/
    splits = json.loads((scenes / "splits.json").read_text())
    (empty / "splits.json").write_text(json.dumps({**splits, "test": []}))
    with pytest.raises(DataError, match="empty"):
        evaluate_robustness(small_model, empty, "test", SUITE)


# ----------------------------------------------------------------------------------- the CLI
@pytest.fixture
def policy_file(tmp_path) -> Path:
    """The repository's policy (its gate.attacks is the suite the CLI runs)."""
    path = tmp_path / "policy.yaml"
    shutil.copy(REPO_POLICY, path)
    return path


def test_cli_evaluate_attacks_writes_the_report_next_to_the_model(small_model, scenes, policy_file):
    from secmlops.cli import app
    from secmlops.policy import load_policy

    default_out = small_model.parent / "robustness-all.json"
    result = CliRunner().invoke(
        app,
        [
            "evaluate", "--model", str(small_model), "--data", str(scenes), "--split", "all",
            "--attacks", "--policy", str(policy_file), "--max-images", "2", "--device", "cpu",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    written = json.loads(default_out.read_text())
    assert written["schema"] == REPORT_SCHEMA and written["data"]["images"] == 2
    expected_suite = load_policy(policy_file).gate.attacks
    assert written["suite"] == expected_suite.model_dump(mode="json")
    assert "pgd_linf_" in result.output and "cross-check" in result.output
    # Atomic write: no temporary file left beside the report.
    assert not [p for p in small_model.parent.iterdir() if p.name.endswith(".tmp")]


def test_cli_evaluate_attacks_with_a_bad_split_writes_nothing(
    small_model, scenes, policy_file, tmp_path
):
    from secmlops.cli import app

    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        app,
        [
            "evaluate", "--model", str(small_model), "--data", str(scenes), "--split", "nosuch",
            "--attacks", "--policy", str(policy_file), "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "no split named 'nosuch'" in result.output
    assert not out.exists()


def test_cli_attack_options_need_attacks(small_model, scenes):
    from secmlops.cli import app

    result = CliRunner().invoke(
        app,
        ["evaluate", "--model", str(small_model), "--data", str(scenes), "--max-images", "2"],
    )
    assert result.exit_code == 2
    assert "need --attacks" in result.output


def test_art_labels_put_ignore_regions_last_with_label_zero():
    labels = art_attacks.art_labels(
        [torch.tensor([[1.0, 2.0, 3.0, 4.0]])], [torch.tensor([[0.0, 0.0, 9.0, 9.0]])]
    )
    assert labels[0]["labels"].tolist() == [1, 0]
    assert labels[0]["boxes"].dtype == np.float32 and labels[0]["boxes"].shape == (2, 4)


def test_cli_gate_attacks_the_production_model_the_same_way(
    small_model, scenes, policy_file, tmp_path, pki
):
    import base64

    from secmlops.cli import app

    key = pki["gate"].private  # the gate's key, trusted in its role by the policy below
    pki.write_policy(policy_file)
    report = tmp_path / "candidate.json"
    args = ["--data", str(scenes), "--split", "test", "--attacks", "--policy", str(policy_file),
            "--max-images", "2", "--device", "cpu", "--out", str(report)]  # fmt: skip
    assert CliRunner().invoke(app, ["evaluate", "--model", str(small_model), *args]).exit_code == 0
    result = CliRunner().invoke(
        app,
        ["gate", "--report", str(report), "--policy", str(policy_file), "--key", str(key),
         "--production", str(small_model), "--audit-log", str(tmp_path / "audit.jsonl")],
        env={"SECMLOPS_TRUSTED_KEYS": pki.trusted_keys},
    )  # fmt: skip
    # The small model is far below the policy's thresholds, so the gate fails overall; the point
    # here is the production comparison: the same model attacked the same way does not regress.
    assert result.exit_code == 1, result.output
    production = json.loads((tmp_path / "candidate.production.json").read_text())
    assert production["data"] == json.loads(report.read_text())["data"]
    envelope = json.loads((tmp_path / "gate-record.json").read_text())
    predicate = json.loads(base64.b64decode(envelope["payload"]))["predicate"]
    regression = [c for c in predicate["checks"] if c["name"].startswith("regression")]
    assert regression and all(c["passed"] for c in regression), regression
